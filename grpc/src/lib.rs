//! workerbus over gRPC: the same `.proto`, handlers and generated clients
//! across machines, on [tonic](https://docs.rs/tonic), interoperable with
//! any gRPC peer.
//!
//! - [`GrpcServer`] serves workerbus services over gRPC: handlers in this
//!   process, or an existing worker's [`Channel`](workerbus::Channel) (a
//!   supervised process worker keeps its supervision on its node).
//! - [`BytesCodec`] carries messages as their bytes, never decoded at the
//!   bridge.
//!
//! How each of workerbus's call semantics maps onto gRPC's (deadlines,
//! status codes, metadata, trace context, cancellation, streams) is
//! written in `docs/PROTOCOL.md`, chapter "gRPC".

mod codec;
mod map;
mod server;

pub use self::codec::{BytesCodec, BytesDecoder, BytesEncoder};
pub use self::server::{DEFAULT_MAX_MESSAGE_SIZE, GrpcServer};
