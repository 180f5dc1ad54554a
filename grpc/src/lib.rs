//! workerbus over gRPC: the same `.proto`, handlers and generated clients
//! across machines, on [tonic](https://docs.rs/tonic), interoperable with
//! any gRPC peer.
//!
//! - [`GrpcServer`] serves workerbus services over gRPC: handlers in this
//!   process, or an existing worker's [`Channel`](workerbus::Channel) (a
//!   supervised process worker keeps its supervision on its node).
//! - [`GrpcDriver`] connects to workers served over gRPC (by `GrpcServer`
//!   or any gRPC server of the same `.proto`) and gives a `Channel` the
//!   generated clients use unchanged.
//! - [`BytesCodec`] carries messages as their bytes, never decoded at the
//!   bridge.
//!
//! How each of workerbus's call semantics maps onto gRPC's (deadlines,
//! status codes, metadata, trace context, cancellation, streams) is
//! written in `docs/PROTOCOL.md`, chapter "gRPC".

mod client;
mod codec;
mod driver;
mod executor;
mod latch;
mod map;
mod pool;
mod server;
mod tls;
mod trailers;
mod worker;

pub use self::codec::{BytesCodec, BytesDecoder, BytesEncoder};
pub use self::driver::{
    Compression, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS_PER_ENDPOINT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_RECONNECT_BACKOFF,
    DEFAULT_RECONNECT_BACKOFF, GrpcDriver, GrpcWorker,
};
pub use self::server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_ERROR_RESETS, DEFAULT_MAX_HEADER_LIST_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_RESETS, GrpcServer,
};
pub use self::tls::{ClientTls, ServerTls, TlsError};

/// Locks `mutex`, taking over a lock that a panicking thread left poisoned:
/// every state under a lock here stays valid between statements.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
