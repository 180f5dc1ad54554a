//! workerbus: schema-first IPC between a host and its workers.
//!
//! Declare the messages that cross a thread or process boundary in `.proto`
//! files; `workerbus-build` generates, for each `service`, a typed client
//! (`<Service>Client`), a handler trait (`<Service>Handler`) and a server
//! (`<Service>Server`). This crate carries the calls between them: frames over
//! a [`Transport`], a pending-request table with timeouts, retries and
//! cancellation in [`Channel`], concurrent dispatch in the worker, and drivers
//! that start workers ([`ThreadDriver`]). Every generated item, with its
//! signature, is listed in the "Generated code" reference,
//! [`docs/GENERATED.md`](https://github.com/workerbus/workerbus/blob/main/docs/GENERATED.md).
//!
//! ```ignore
//! // The README's example; `examples/` compiles it against generated code.
//! mod embedder {
//!     workerbus::include_proto!("embedder");
//! }
//! use embedder::{EmbedRequest, EmbedResponse, EmbedderClient, EmbedderHandler, EmbedderServer};
//! # use embedder::{HealthRequest, HealthResponse};
//! use workerbus::{Context, Status, ThreadDriver};
//!
//! struct Embedder;
//!
//! impl EmbedderHandler for Embedder {
//!     async fn embed(&self, request: EmbedRequest, _cx: &Context) -> Result<EmbedResponse, Status> {
//!         # let _ = request; todo!()
//!     }
//!     # async fn health(&self, _: HealthRequest, _: &Context) -> Result<HealthResponse, Status> { todo!() }
//! }
//!
//! # async fn run() -> Result<(), workerbus::Error> {
//! let worker = ThreadDriver::new().spawn(EmbedderServer::new(Embedder)).await?;
//! let embedder = EmbedderClient::new(worker.channel());
//! let out = embedder
//!     .embed(EmbedRequest { texts: vec!["hello".into()], is_query: false })
//!     .await?;
//! # let _ = out;
//! # Ok(()) }
//! ```
//!
//! Every call ends exactly once: with the response, the handler's
//! [`Status`] (inside [`Error::Remote`]), a timeout, a cancellation, or
//! [`Error::WorkerExited`] when its worker dies. Dropping a call's future
//! cancels the handler in the worker.
//!
//! An rpc with a `stream` in its request or response reads as a
//! [`Streaming`] on the host and is written with a [`StreamSender`] or read
//! from an [`Incoming`] in the worker; each direction has a [`Window`] of
//! [`STREAM_WINDOW`] messages and [`STREAM_WINDOW_BYTES`] bytes, so a slow
//! reader holds its sender back instead of filling memory.

mod backoff;
mod buffers;
mod cancellation;
mod client;
mod context;
mod control;
mod description;
mod driver;
mod error;
mod event;
mod frame;
/// Entry points for `cargo fuzz`: compiled only under `cfg(fuzzing)`, not API.
#[cfg(fuzzing)]
pub mod fuzzing;
mod idmap;
mod log;
mod message;
mod metadata;
mod middleware;
mod name;
mod panic;
mod payload;
mod schema;
mod server;
#[cfg(feature = "process")]
mod startup;
mod stderr;
mod supervisor;
mod sync;
mod trace;
mod transport;
mod window;

#[doc(hidden)]
#[path = "codegen.rs"]
pub mod __codegen;

pub use self::backoff::Backoff;
pub use self::cancellation::{Cancellation, Cancelled};
pub use self::client::{
    ByteStream, CallOptions, Channel, ChannelOptions, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_TIMEOUT, Streaming,
};
pub use self::context::Context;
pub use self::control::{HealthReport, PROTOCOL_VERSION, resident_memory};
pub use self::description::{check_description, describe_services};
#[cfg(feature = "process")]
pub use self::driver::process::Secret;
#[cfg(feature = "process")]
pub use self::driver::process::{
    DEFAULT_STARTUP_TIMEOUT, DetachedWorker, ProcessDriver, ProcessWorker, Stdio, serve,
    serve_with_options,
};
#[cfg(feature = "thread")]
pub use self::driver::thread::{ThreadDriver, ThreadSpawner, ThreadWorker};
pub use self::driver::{DEFAULT_SHUTDOWN_GRACE, Spawn, Worker};
pub use self::error::{Code, Error, ExitReason, FrameError, Status};
pub use self::event::{EventSink, Subscription};
pub use self::frame::{
    DEFAULT_MAX_FRAME_LENGTH, Frame, FrameCodec, HEADER_LEN, MAX_METHOD_LEN, MIN_FRAME_LENGTH,
    MIN_SHARED_MEMORY_FROM, STREAM_WINDOW,
};
pub use self::log::LOG_ENV;
pub use self::metadata::{MAX_METADATA_LEN, Metadata, ResponseMetadata};
pub use self::middleware::{
    CallInfo, ConcurrencyLimit, Histogram, Logging, MethodMetrics, Metrics, MetricsSnapshot,
    Middleware, Next, RateLimit, ServerMiddleware, ServerNext, Side,
};
pub use self::name::MethodName;
pub use self::payload::Payload;
pub use self::schema::{MethodKind, MethodSchema, ServiceSchema};
pub use self::server::{
    Call, CallStreams, DEFAULT_GREETING_TIMEOUT, DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_GREETING_FRAME_LENGTH, DEFAULT_MAX_QUEUED_CALLS, DEFAULT_MAX_UNGREETED_CONNECTIONS,
    Dispatch, Incoming, ServeOptions, Services, StreamSender, serve_transport,
};
#[cfg(feature = "process")]
pub use self::startup::{SOCKET_DIR_ENV, STARTUP_ENV, StartupData, startup_data};
pub use self::supervisor::{
    DEFAULT_CONNECTION_LOST_GRACE, DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_MAX_WAITING_CALLS,
    HealthCheck, Restart, RestartPolicy, Strategy, SupervisedWorker, Supervisor, SupervisorEvent,
    WhileRestarting,
};
pub use self::trace::TraceContext;
pub use self::transport::{DEFAULT_MEMORY_CAPACITY, MemoryTransport, Transport};
pub use self::window::{STREAM_WINDOW_BYTES, Window};

/// Includes the code generated by `workerbus-build` for a protobuf package:
/// its messages (prost), and for each service the client, handler trait,
/// server and message-name constants.
///
/// ```ignore
/// pub mod embedder {
///     workerbus::include_proto!("embedder");
/// }
/// ```
///
/// The argument is the package name as written in the `.proto` file
/// (`package embedder;`), each part in snake case and a keyword raw
/// (`corp.r#type.v1` for `package corp.type.v1;`); `_` for the files
/// without a package. The generated file is read from `OUT_DIR`, where
/// `workerbus_build::compile_protos` wrote it.
///
/// A package whose messages use another package's (`super::common::Page`)
/// needs that package's module where prost-build expects it;
/// [`include_protos!`] lays every package out that way.
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

/// Includes everything `workerbus-build` generated in a build: every
/// protobuf package, as a tree of modules by package (`corp.x.a` in
/// `corp::x::a`), so that types of one package used in another resolve.
///
/// ```ignore
/// // Needs a build script's OUT_DIR, so it is compiled by the fixture
/// // crates of `tests/fixtures/corpus`, not here.
/// // `corp/x/a.proto` (package corp.x.a) uses `corp.x.b.Thing`:
/// pub mod protos {
///     workerbus::include_protos!();
/// }
/// use protos::corp::x::a::{LookupClient, LookupRequest};
/// use protos::corp::x::b::Thing;
/// ```
///
/// The files of schemas without a package are included at the top. Without
/// an argument it reads `workerbus-protos.rs` from `OUT_DIR`, the include
/// file `workerbus_build::compile_protos` writes; with one, the include file
/// named by `workerbus_build::Builder::include_file`
/// (`include_protos!("admin-protos.rs")`).
#[macro_export]
macro_rules! include_protos {
    () => {
        include!(concat!(env!("OUT_DIR"), "/workerbus-protos.rs"));
    };
    ($include_file:tt) => {
        include!(concat!(env!("OUT_DIR"), "/", $include_file));
    };
}

/// The descriptors of every file a build compiled, imports included, as the
/// bytes of an encoded `google.protobuf.FileDescriptorSet` (a
/// `&'static [u8; N]`): what a gRPC server's reflection service serves, so
/// that tools such as `grpcurl` can list and describe its services.
///
/// ```ignore
/// // Needs a build script's OUT_DIR (see `include_protos!`).
/// const DESCRIPTORS: &[u8] = workerbus::include_descriptor_set!();
/// ```
///
/// Without an argument it reads `workerbus-descriptors.bin` from `OUT_DIR`,
/// which `workerbus_build::compile_protos` writes; with one, the file named
/// by `workerbus_build::Builder::descriptor_set_file`.
#[macro_export]
macro_rules! include_descriptor_set {
    () => {
        include_bytes!(concat!(env!("OUT_DIR"), "/workerbus-descriptors.bin"))
    };
    ($file:tt) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $file))
    };
}
