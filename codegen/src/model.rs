//! The plain-data description of a service that the emitter turns into code.
//!
//! Everything the emitter needs is here, already validated and named; the
//! emitter makes no decisions about the schema, so it can be tested from
//! descriptions built by hand.

/// A `service` of a `.proto` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceDef {
    /// The service name as declared, e.g. `Embedder`.
    pub(crate) proto_name: String,
    /// The full protobuf name, e.g. `embedder.Embedder`.
    pub(crate) full_name: String,
    /// The base of the generated type names: `Embedder` gives
    /// `EmbedderClient`, `EmbedderHandler`, `EmbedderServer`; for an events
    /// service, `Indexer` gives `IndexerEmitter`, `IndexerEvent`,
    /// `IndexerEvents`.
    pub(crate) base: String,
    /// The module of message names and schema, e.g. `embedder_service`.
    pub(crate) module: String,
    /// Doc comment lines from the `.proto`, sanitized for rustdoc.
    pub(crate) docs: Vec<String>,
    /// The hash of every method's name, kind and message fingerprints.
    pub(crate) fingerprint: u64,
    /// An events service: the worker sends its rpcs to the host.
    pub(crate) events: bool,
    pub(crate) methods: Vec<MethodDef>,
}

/// An `rpc` of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MethodDef {
    /// The method name as declared, e.g. `Embed`.
    pub(crate) proto_name: String,
    /// The Rust method name, e.g. `embed` (raw if a keyword).
    pub(crate) rust_name: String,
    /// The client's method with options, e.g. `embed_with`.
    pub(crate) rust_name_with: String,
    /// The message name the method travels under, e.g. `embedder.embed`.
    pub(crate) message_name: String,
    /// The name of the message-name constant, e.g. `EMBED`.
    pub(crate) const_name: String,
    /// The variant of an events service's event enum, e.g. `Embed`.
    pub(crate) variant: String,
    pub(crate) docs: Vec<String>,
    pub(crate) request: MessageRef,
    pub(crate) response: MessageRef,
    pub(crate) options: MethodOptions,
    pub(crate) kind: RpcKind,
}

/// Which way a method streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RpcKind {
    #[default]
    Unary,
    /// `returns (stream T)`
    ServerStreaming,
    /// `(stream T)` argument
    ClientStreaming,
    /// Both.
    BidiStreaming,
    /// `one_way: true`, or an event: one message, never answered.
    OneWay,
}

impl RpcKind {
    pub(crate) fn new(client_streaming: bool, server_streaming: bool) -> RpcKind {
        match (client_streaming, server_streaming) {
            (false, false) => RpcKind::Unary,
            (false, true) => RpcKind::ServerStreaming,
            (true, false) => RpcKind::ClientStreaming,
            (true, true) => RpcKind::BidiStreaming,
        }
    }

    /// The name of the runtime's `MethodKind` variant.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            RpcKind::Unary => "Unary",
            RpcKind::ServerStreaming => "ServerStreaming",
            RpcKind::ClientStreaming => "ClientStreaming",
            RpcKind::BidiStreaming => "BidiStreaming",
            RpcKind::OneWay => "OneWay",
        }
    }

    pub(crate) fn streams_requests(self) -> bool {
        matches!(self, RpcKind::ClientStreaming | RpcKind::BidiStreaming)
    }

    pub(crate) fn streams_responses(self) -> bool {
        matches!(self, RpcKind::ServerStreaming | RpcKind::BidiStreaming)
    }
}

/// A request or response type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MessageRef {
    /// The Rust type, as a path relative to the generated module
    /// (`EmbedRequest`, `super::common::Page`, `()`).
    pub(crate) rust_type: String,
    /// The full protobuf name, e.g. `embedder.EmbedRequest`.
    pub(crate) proto_name: String,
    /// The hash of the message's structure.
    pub(crate) fingerprint: u64,
}

/// A method's `(workerbus.method)` options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodOptions {
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) retries: Option<u32>,
    pub(crate) idempotent: bool,
    pub(crate) one_way: bool,
}
