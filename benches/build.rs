//! Generates the tonic service code of the `peers` feature (nothing without
//! it).
//!
//! tonic's service code is made by tonic-build's `manual` builder, which takes
//! the service described in Rust rather than a `.proto` file: no protoc, no
//! proto parser, and no file besides this one. The message it names,
//! `peers::tonic::EchoMessage`, is written by hand in the form prost-build
//! would give it (a `bytes` field as `Bytes`), so what runs is what a tonic
//! user runs: the generated client and server over `tonic_prost::ProstCodec`.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "peers")]
    generate_tonic_echo();
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
    let service = tonic_build::manual::Service::builder()
        .name("Echo")
        .package("workerbus.bench")
        .method(echo)
        .build();
    // The client is built on a `Channel` made in `peers::tonic`, so the
    // generated `connect` constructor (and its transport path) is not needed.
    tonic_build::manual::Builder::new()
        .build_transport(false)
        .compile(&[service]);
}
