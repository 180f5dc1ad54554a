//! A call's path on both sides: the host's side (`client`), the serve loop
//! seen through raw frames (`server`), the whole path over a byte stream,
//! middleware, the door generated code goes through, the code generated for
//! the schema of `docs/GENERATED.md`, resource bounds at their edges,
//! messages' properties on the way through, and what the public types print.

mod byte_stream;
mod bytes;
mod client;
mod codegen_door;
mod debug_output;
mod generated;
mod limits;
mod middleware;
mod properties;
mod server;

/// The test worker program, `tests/src/bin/echo-worker.rs`.
const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");
