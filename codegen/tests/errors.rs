//! Error tests of the generator: each bad schema must be refused with an
//! error that starts with `workerbus-build:` and names the file, the service
//! or rpc at fault, and the problem.

use std::fs;
use std::path::Path;

/// Writes `files` (name, source) into a temporary include directory,
/// compiles the first one, and returns the error message; panics if the
/// compilation succeeds, or if the refusal is not `InvalidInput`, lacks the
/// `workerbus-build:` prefix, or left files behind.
fn compile_error(files: &[(&str, &str)]) -> String {
    let include = tempfile::tempdir().expect("a temporary directory");
    let out = tempfile::tempdir().expect("a temporary directory");
    for (name, source) in files {
        let path = include.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("creating a proto directory");
        }
        fs::write(&path, source).expect("writing a proto file");
    }
    let (root, _) = files.first().expect("at least one file");
    let result = workerbus_build::configure()
        .out_dir(out.path())
        .emit_rerun_if_changed(false)
        .compile_protos(&[include.path().join(root)], &[include.path()]);
    let error = match result {
        Ok(()) => panic!("{root} compiled, but should have been refused"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("workerbus-build:"),
        "the message does not start with `workerbus-build:`: {message}"
    );
    assert!(
        is_empty_dir(out.path()),
        "a refused schema still wrote files: {message}"
    );
    message
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir)
        .expect("reading the output directory")
        .next()
        .is_none()
}

/// Asserts that `message` contains every one of `parts`.
#[track_caller]
fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "missing {part:?} in the message: {message}"
        );
    }
}

/// A file `bad.proto` of package `bad` with `service` as its only service,
/// importing the options and `Empty`.
fn schema(service: &str) -> String {
    format!(
        r#"syntax = "proto3";

package bad;

import "google/protobuf/empty.proto";
import "workerbus/options.proto";

message Ping {{
  string text = 1;
}}

{service}
"#
    )
}

#[test]
fn retries_need_idempotent() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Search(Ping) returns (Ping) {
                 option (workerbus.method) = { retries: 2 };
               }
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Search",
            "retries = 2",
            "idempotent: true",
        ],
    );
}

#[test]
fn streaming_rpcs_refuse_retries() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Watch(Ping) returns (stream Ping) {
                 option (workerbus.method) = { retries: 1, idempotent: true };
               }
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Watch",
            "retries = 1",
            "streaming call is never retried",
        ],
    );
}

#[test]
fn one_way_methods_return_empty_and_never_stream_or_retry() {
    for (rpc, problem) in [
        (
            "rpc Send(Ping) returns (Ping) { option (workerbus.method) = { one_way: true }; }",
            "must return google.protobuf.Empty, not bad.Ping",
        ),
        (
            "rpc Send(Ping) returns (stream Ping) { option (workerbus.method) = { one_way: true }; }",
            "a one-way message cannot stream",
        ),
        (
            "rpc Send(Ping) returns (google.protobuf.Empty) { option (workerbus.method) = { one_way: true, retries: 1, idempotent: true }; }",
            "a one-way message is never retried",
        ),
    ] {
        let message =
            compile_error(&[("bad.proto", &schema(&format!("service Worker {{ {rpc} }}")))]);
        assert_mentions(
            &message,
            &["bad.proto", "service bad.Worker", "rpc Send", problem],
        );
    }
}

#[test]
fn events_are_one_message_in_and_nothing_out() {
    for (rpc, problem) in [
        (
            "rpc Changed(Ping) returns (Ping);",
            "an event returns google.protobuf.Empty, not bad.Ping",
        ),
        (
            "rpc Changed(stream Ping) returns (google.protobuf.Empty);",
            "an event cannot stream",
        ),
        (
            "rpc Changed(Ping) returns (google.protobuf.Empty) { option (workerbus.method) = { timeout_ms: 5 }; }",
            "an event takes no option but `name`",
        ),
    ] {
        let message = compile_error(&[(
            "bad.proto",
            &schema(&format!(
                "service Signals {{ option (workerbus.service) = {{ events: true }}; {rpc} }}"
            )),
        )]);
        assert_mentions(
            &message,
            &["bad.proto", "service bad.Signals", "rpc Changed", problem],
        );
    }
}

#[test]
fn message_names_must_be_unique_within_a_service() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Get(Ping) returns (Ping);
               rpc Fetch(Ping) returns (Ping) {
                 option (workerbus.method) = { name: \"worker.get\" };
               }
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Fetch",
            "\"worker.get\"",
            "already used",
        ],
    );
}

#[test]
fn an_rpc_cannot_take_the_clients_new() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc New(Ping) returns (Ping);
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &["bad.proto", "service bad.Worker", "rpc New", "`new`"],
    );
}

#[test]
fn an_rpc_cannot_take_the_schema_constant() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Schema(Ping) returns (Ping);
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &["bad.proto", "service bad.Worker", "rpc Schema", "`SCHEMA`"],
    );
}

#[test]
fn method_name_overrides_cannot_contain_spaces() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Get(Ping) returns (Ping) {
                 option (workerbus.method) = { name: \"worker get\" };
               }
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Get",
            "\"worker get\"",
            "whitespace",
        ],
    );
}

#[test]
fn service_name_overrides_cannot_contain_spaces() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               option (workerbus.service) = { name: \"my worker\" };
               rpc Get(Ping) returns (Ping);
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "(workerbus.service).name",
            "\"my worker\"",
            "whitespace",
        ],
    );
}

#[test]
fn timeouts_cannot_be_zero() {
    let message = compile_error(&[(
        "bad.proto",
        &schema(
            "service Worker {
               rpc Get(Ping) returns (Ping) {
                 option (workerbus.method) = { timeout_ms: 0 };
               }
             }",
        ),
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Get",
            "timeout_ms = 0",
            "at least 1 ms",
        ],
    );
}

#[test]
fn syntax_errors_name_the_file() {
    let message = compile_error(&[(
        "broken.proto",
        "syntax = \"proto3\";\n\npackage bad;\n\nmessage Ping {\n  string text = ;\n}\n",
    )]);
    assert_mentions(&message, &["broken.proto:6:17: ", "expected an integer"]);
}

#[test]
fn missing_imports_name_the_importing_file_and_the_import() {
    let message = compile_error(&[(
        "bad.proto",
        "syntax = \"proto3\";\n\npackage bad;\n\nimport \"nowhere/missing.proto\";\n",
    )]);
    assert_mentions(
        &message,
        &["bad.proto:5:1: ", "nowhere/missing.proto", "not found"],
    );
}

#[test]
fn errors_in_imported_files_name_the_imported_file() {
    let message = compile_error(&[
        (
            "main.proto",
            "syntax = \"proto3\";\n\npackage main;\n\nimport \"dep/worker.proto\";\n",
        ),
        (
            "dep/worker.proto",
            &schema(
                "service Worker {
                   rpc Now(google.protobuf.Empty) returns (google.protobuf.Empty) {
                     option (workerbus.method) = { timeout_ms: 0 };
                   }
                 }",
            ),
        ),
    ]);
    assert_mentions(
        &message,
        &[
            "dep/worker.proto",
            "service bad.Worker",
            "rpc Now",
            "timeout_ms = 0",
        ],
    );
}
