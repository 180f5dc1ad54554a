//! Generates the test services, the schema of `docs/GENERATED.md`, and a
//! second version of the Echo schema (one field widened) for the
//! schema-mismatch test.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    workerbus_build::compile_protos(&["proto/echo.proto"], &["proto"])?;
    // The schema of docs/GENERATED.md, which `tests/calls/generated.rs` uses
    // as the document says; an include file of its own keeps the one above.
    workerbus_build::configure()
        .include_file("reference-protos.rs")
        .descriptor_set_file("reference-descriptors.bin")
        .compile_protos(
            &["../codegen/tests/reference/reference.proto"],
            &["../codegen/tests/reference"],
        )?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let v2 = out.join("proto_v2");
    std::fs::create_dir_all(v2.join("common"))?;
    let echo = std::fs::read_to_string("proto/echo.proto")?;
    let widened = echo.replace("uint32 delay_ms = 3;", "uint64 delay_ms = 3;");
    assert_ne!(
        echo, widened,
        "proto/echo.proto no longer has the field v2 changes"
    );
    std::fs::write(v2.join("echo.proto"), widened)?;
    std::fs::copy("proto/common/paging.proto", v2.join("common/paging.proto"))?;
    std::fs::create_dir_all(out.join("v2"))?;
    workerbus_build::configure()
        .out_dir(out.join("v2"))
        .build_client(false)
        .emit_rerun_if_changed(false)
        .compile_protos(&[v2.join("echo.proto")], &[v2])?;
    Ok(())
}
