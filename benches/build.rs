//! Generates workerbus's code for the Vectors service of the fresh-message
//! scenario (`proto/vectors.proto`), and the tonic service code of the
//! `peers` feature.
//!
//! tonic's service code is made by tonic-build's `manual` builder, which takes
//! the service described in Rust rather than a `.proto` file: no protoc, no
//! proto parser, and no file besides this one. The message it names,
//! `peers::tonic::EchoMessage`, is written by hand in the form prost-build
//! would give it (a `bytes` field as `Bytes`), so what runs is what a tonic
//! user runs: the generated client and server over `tonic_prost::ProstCodec`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    workerbus_build::compile_protos(&["proto/vectors.proto"], &["proto"])?;
    #[cfg(feature = "peers")]
    generate_tonic_echo();
    Ok(())
}

/// Writes `$OUT_DIR/workerbus.bench.Echo.rs`: the client (`echo_client`) and
/// server (`echo_server`) of the unary method `/workerbus.bench.Echo/Echo`.
#[cfg(feature = "peers")]
fn generate_tonic_echo() {
    let echo = tonic_build::manual::Method::builder()
        .name("echo")
        .route_name("Echo")
        .input_type("crate::peers::tonic::EchoMessage")
        .output_type("crate::peers::tonic::EchoMessage")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    // The fresh-message scenario's call, beside it.
    let make = tonic_build::manual::Method::builder()
        .name("make")
        .route_name("Make")
        .input_type("crate::peers::tonic::MakeRequest")
        .output_type("crate::peers::tonic::MakeReply")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Echo")
        .package("workerbus.bench")
        .method(echo)
        .method(make)
        .build();
    // The client is built on a `Channel` made in `peers::tonic`, so the
    // generated `connect` constructor (and its transport path) is not needed.
    tonic_build::manual::Builder::new()
        .build_transport(false)
        .compile(&[service]);
}
