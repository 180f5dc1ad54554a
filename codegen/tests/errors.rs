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
    compile_error_with(workerbus_build::configure(), files)
}

/// [`compile_error`] with the options of `builder`.
fn compile_error_with(builder: workerbus_build::Builder, files: &[(&str, &str)]) -> String {
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
    let result = builder
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
fn a_rust_name_that_is_taken_is_refused_by_name() {
    let builder = workerbus_build::configure().rust_name("bad.Worker.Get", "channel");
    let message = compile_error_with(
        builder,
        &[(
            "bad.proto",
            &schema(
                "service Worker {
                   rpc Get(Ping) returns (Ping);
                 }",
            ),
        )],
    );
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rpc Get",
            "rust_name(\"bad.Worker.Get\", \"channel\")",
            "`channel` is a method of clients",
        ],
    );
}

#[test]
fn a_rust_name_must_be_a_name_of_its_kind() {
    let builder = workerbus_build::configure().rust_name("bad.Worker", "worker_api");
    let message = compile_error_with(
        builder,
        &[(
            "bad.proto",
            &schema("service Worker { rpc Get(Ping) returns (Ping); }"),
        )],
    );
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "service bad.Worker",
            "rust_name(\"bad.Worker\", \"worker_api\")",
            "upper camel case",
        ],
    );
}

#[test]
fn a_rust_name_for_nothing_is_refused() {
    let builder = workerbus_build::configure().rust_name(".bad.Worker.Gte", "fetch");
    let message = compile_error_with(
        builder,
        &[(
            "bad.proto",
            &schema("service Worker { rpc Get(Ping) returns (Ping); }"),
        )],
    );
    assert_mentions(
        &message,
        &[
            "rust_name(\"bad.Worker.Gte\", \"fetch\")",
            "no service or rpc of the compiled files is named bad.Worker.Gte",
        ],
    );
}

#[test]
fn types_prost_build_would_name_alike_are_refused() {
    let message = compile_error(&[(
        "bad.proto",
        "syntax = \"proto3\";\n\npackage bad;\n\nmessage user_id {}\nmessage UserId {}\n",
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto",
            "message bad.UserId and message bad.user_id",
            "`UserId`",
        ],
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

#[test]
fn options_in_a_form_workerbus_does_not_define_get_the_right_form() {
    const METHOD_FORM: &str =
        "`option (workerbus.method) = { timeout_ms: 5000, retries: 2, idempotent: true };`";
    const SERVICE_FORM: &str = "`option (workerbus.service) = { name: \"search\" };`";
    for (service, location, problem, form) in [
        (
            "service Worker {\n  rpc Get(Ping) returns (Ping) {\n    option (workerbus.timeout_ms) = 5000;\n  }\n}",
            "bad.proto:14:5: service bad.Worker: rpc Get: ",
            "'workerbus.timeout_ms' resolves to 'workerbus.timeout_ms', which is not defined",
            METHOD_FORM,
        ),
        (
            "service Worker {\n  rpc Get(Ping) returns (Ping) {\n    option (workerbus.method) = { timeout: 5000 };\n  }\n}",
            "bad.proto:14:5: service bad.Worker: rpc Get: ",
            "invalid value of type 'workerbus.MethodOptions'",
            "(its fields: name, timeout_ms, retries, idempotent, one_way)",
        ),
        (
            "service Worker {\n  rpc Get(Ping) returns (Ping) {\n    option (workerbus.method).timeout = 5000;\n  }\n}",
            "bad.proto:14:5: service bad.Worker: rpc Get: ",
            "option field '(workerbus.method).timeout' is not defined",
            METHOD_FORM,
        ),
        (
            "service Worker {\n  option (workerbus.method) = { name: \"w\" };\n  rpc Get(Ping) returns (Ping);\n}",
            "bad.proto:13:3: service bad.Worker: ",
            "but 'workerbus.method' extends 'google.protobuf.MethodOptions'",
            SERVICE_FORM,
        ),
        (
            "service Worker {\n  option (workerbus.service) = { timeout_ms: 5 };\n  rpc Get(Ping) returns (Ping);\n}",
            "bad.proto:13:3: service bad.Worker: ",
            "invalid value of type 'workerbus.ServiceOptions'",
            "(its fields: name, events)",
        ),
    ] {
        let message = compile_error(&[("bad.proto", &schema(service))]);
        assert_mentions(&message, &[location, problem, form]);
    }
}

#[test]
fn the_options_need_their_import() {
    let message = compile_error(&[(
        "bad.proto",
        "syntax = \"proto3\";\npackage bad;\nmessage Ping {}\nservice Worker {\n  rpc Get(Ping) returns (Ping) {\n    option (workerbus.method) = { timeout_ms: 5 };\n  }\n}\n",
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto:6:5: service bad.Worker: rpc Get: ",
            "name 'workerbus.method' is not defined",
            "`import \"workerbus/options.proto\";`",
        ],
    );
}

#[test]
fn editions_are_refused_with_the_reason() {
    let message = compile_error(&[(
        "bad.proto",
        "edition = \"2023\";\n\npackage bad;\n\nmessage Ping {}\n",
    )]);
    assert_mentions(
        &message,
        &[
            "bad.proto:1:1: ",
            "protobuf editions (`edition = \"2023\"`) are not supported",
            "`syntax = \"proto3\";`",
        ],
    );
}
