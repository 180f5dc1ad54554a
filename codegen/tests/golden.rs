//! Golden-file tests of the generator: the code generated for
//! `tests/proto/golden/` must match `tests/golden/` byte for byte, and
//! generating it, or the schema corpus of `tests/corpus/`, twice must give
//! the same bytes.
//!
//! When the output changes, the test rewrites the golden files and fails;
//! review the diff (`git diff codegen/tests/golden`) and rerun.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The root `.proto` of the golden schema, relative to [`proto_dir`].
const GOLDEN_PROTO: &str = "golden/greeter.proto";

/// The files the golden schema must generate: one per protobuf package, and
/// the include file that holds them all.
const EXPECTED_FILES: &[&str] = &["golden.rs", "golden.shared.rs", "workerbus-protos.rs"];

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proto")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Generates the golden schema into `out` and returns the files written, by
/// name.
fn generate(out: &Path) -> BTreeMap<String, Vec<u8>> {
    workerbus_build::configure()
        .out_dir(out)
        .emit_rerun_if_changed(false)
        .compile_protos(&[proto_dir().join(GOLDEN_PROTO)], &[proto_dir()])
        .unwrap_or_else(|error| panic!("the golden schema does not compile: {error}"));
    read_rs_files(out)
}

/// The `.rs` files directly in `dir`, by name.
fn read_rs_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in
        fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&path)
                .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            files.insert(name, bytes);
        }
    }
    files
}

/// Git may check text files out with `\r\n` line endings; compare without them.
fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// Makes `file` hold `contents`: returns `true` if it already did, and
/// otherwise rewrites it and returns `false`. (rust-analyzer's
/// `ensure_file_contents`, reporting instead of panicking so that every
/// outdated file is rewritten in one run.)
fn ensure_file_contents(file: &Path, contents: &str) -> bool {
    if let Ok(old) = fs::read_to_string(file)
        && normalize_newlines(&old) == normalize_newlines(contents)
    {
        return true;
    }
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|error| panic!("creating {}: {error}", parent.display()));
    }
    fs::write(file, contents).unwrap_or_else(|error| panic!("writing {}: {error}", file.display()));
    false
}

#[test]
fn generated_code_matches_the_golden_files() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let generated = generate(out.path());
    assert_eq!(
        generated.keys().map(String::as_str).collect::<Vec<_>>(),
        EXPECTED_FILES,
        "the golden schema should generate one file per package and the include file"
    );

    let golden = golden_dir();
    let mut updated = Vec::new();
    for (name, bytes) in &generated {
        let contents =
            String::from_utf8(bytes.clone()).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
        let file = golden.join(name);
        if !ensure_file_contents(&file, &contents) {
            updated.push(file);
        }
    }
    // A golden file that is no longer generated would otherwise linger unseen.
    for name in read_rs_files(&golden).keys() {
        if !generated.contains_key(name) {
            let file = golden.join(name);
            fs::remove_file(&file)
                .unwrap_or_else(|error| panic!("removing {}: {error}", file.display()));
            updated.push(file);
        }
    }

    if !updated.is_empty() {
        let list = updated
            .iter()
            .map(|file| format!("    {}\n", file.display()))
            .collect::<String>();
        panic!(
            "the generated code differs from the golden files, which were updated (rewritten, or removed if no longer generated):\n{list}\
             review the diff (`git diff codegen/tests/golden`), and if the change is intended, \
             rerun the tests and commit the updated files"
        );
    }
}

#[test]
fn generation_is_deterministic() {
    let first = tempfile::tempdir().expect("a temporary directory");
    let second = tempfile::tempdir().expect("a temporary directory");
    let first = generate(first.path());
    let second = generate(second.path());
    assert!(!first.is_empty(), "nothing was generated");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>(),
        "two generations wrote different files"
    );
    for (name, bytes) in &first {
        assert!(
            *bytes == second[name],
            "{name} differs between two generations of the same schema"
        );
    }
}

/// Every `.proto` file under `dir`, sorted.
fn protos_under(dir: &Path) -> Vec<PathBuf> {
    let mut protos = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in
            fs::read_dir(&dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                protos.push(path);
            }
        }
    }
    protos.sort();
    protos
}

/// The schema corpus, which the fixture crates `tests/fixtures/corpus/`
/// compile and test: generated twice, with their build script's options, it
/// gives the same bytes (hash maps met on the way must not leak their
/// order).
#[test]
fn the_corpus_generates_deterministically() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let protos = protos_under(&corpus);
    assert!(
        protos.len() >= 20,
        "the corpus has {} schemas",
        protos.len()
    );
    let generate = |out: &Path| {
        workerbus_build::configure()
            .out_dir(out)
            .emit_rerun_if_changed(false)
            .rust_name("collisions.generated.Greeter.Create", "create_card")
            .rust_name("collisions.generated.Directory", "Lookup")
            .compile_protos(&protos, &[&corpus])
            .unwrap_or_else(|error| panic!("the corpus does not compile: {error}"));
        read_rs_files(out)
    };
    let first = tempfile::tempdir().expect("a temporary directory");
    let second = tempfile::tempdir().expect("a temporary directory");
    let first = generate(first.path());
    let second = generate(second.path());
    assert!(first.contains_key("workerbus-protos.rs") && first.contains_key("_.rs"));
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &first {
        assert!(
            *bytes == second[name],
            "{name} differs between two generations of the corpus"
        );
    }
}

#[test]
fn the_descriptor_set_holds_every_file_compiled_and_imported() {
    let first = tempfile::tempdir().expect("a temporary directory");
    let second = tempfile::tempdir().expect("a temporary directory");
    generate(first.path());
    generate(second.path());
    let read = |dir: &Path| {
        let path = dir.join(workerbus_build::DEFAULT_DESCRIPTOR_SET_FILE);
        fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
    };
    let bytes = read(first.path());
    assert!(
        bytes == read(second.path()),
        "the descriptor set differs between two generations of the same schema"
    );
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
        .expect("the descriptor set decodes");
    let mut files: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "golden/greeter.proto",
            "golden/shared/types.proto",
            "google/protobuf/descriptor.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/timestamp.proto",
            "workerbus/options.proto",
        ]
    );
    let greeter = set
        .file
        .iter()
        .find(|file| file.name() == "golden/greeter.proto")
        .expect("the root file");
    let service = greeter
        .service
        .iter()
        .find(|service| service.name() == "Greeter")
        .expect("the Greeter service");
    assert!(service.method.iter().any(|rpc| rpc.name() == "SayHello"));
    assert!(
        greeter.source_code_info.is_some(),
        "comments are kept for reflection"
    );
}
