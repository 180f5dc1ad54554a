//! [`ServiceSchema`]: what a generated service declares about itself.
//!
//! The generator records each service's methods, their message types and a
//! fingerprint of each message's structure, so that a host and a worker can
//! tell, before the first call, whether they were built from the same schema
//! and, if not, say exactly which method differs.

/// The shape of a method's exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses (`returns (stream T)`).
    ServerStreaming,
    /// A stream of requests, one response (`(stream T)` argument).
    ClientStreaming,
    /// Streams both ways.
    BidiStreaming,
    /// One request, no response: sent without waiting (`one_way: true`),
    /// or an event a worker sends its host.
    OneWay,
}

impl MethodKind {
    /// Whether the caller sends a stream of requests.
    pub(crate) fn streams_requests(self) -> bool {
        matches!(
            self,
            MethodKind::ClientStreaming | MethodKind::BidiStreaming
        )
    }

    /// Whether the worker answers with a stream.
    pub(crate) fn streams_responses(self) -> bool {
        matches!(
            self,
            MethodKind::ServerStreaming | MethodKind::BidiStreaming
        )
    }

    /// Whether either direction streams.
    pub(crate) fn streams(self) -> bool {
        self.streams_requests() || self.streams_responses()
    }

    /// Whether nothing is answered.
    pub(crate) fn is_one_way(self) -> bool {
        self == MethodKind::OneWay
    }
}

impl MethodKind {
    /// The number a description carries for this kind.
    pub(crate) fn to_wire(self) -> u32 {
        match self {
            MethodKind::Unary => 0,
            MethodKind::ServerStreaming => 1,
            MethodKind::ClientStreaming => 2,
            MethodKind::BidiStreaming => 3,
            MethodKind::OneWay => 4,
        }
    }

    /// What a method of this kind does, for error messages.
    pub(crate) fn describe_wire(kind: u32) -> &'static str {
        match kind {
            0 => "is unary",
            1 => "streams its responses",
            2 => "streams its requests",
            3 => "streams both ways",
            4 => "is one-way",
            _ => "is of an unknown kind",
        }
    }
}

/// One method of a [`ServiceSchema`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodSchema {
    name: &'static str,
    request: &'static str,
    response: &'static str,
    request_fingerprint: u64,
    response_fingerprint: u64,
    kind: MethodKind,
    grpc_path: &'static str,
}

impl MethodSchema {
    pub(crate) const fn new(
        name: &'static str,
        (request, request_fingerprint): (&'static str, u64),
        (response, response_fingerprint): (&'static str, u64),
        kind: MethodKind,
        grpc_path: &'static str,
    ) -> MethodSchema {
        MethodSchema {
            name,
            request,
            response,
            request_fingerprint,
            response_fingerprint,
            kind,
            grpc_path,
        }
    }

    /// The message name, e.g. `embedder.embed`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The full protobuf name of the request type, e.g. `embedder.EmbedRequest`.
    pub fn request(&self) -> &'static str {
        self.request
    }

    /// The full protobuf name of the response type.
    pub fn response(&self) -> &'static str {
        self.response
    }

    /// A hash of the request type's structure: field numbers, names, types and
    /// labels, through every message and enum it reaches.
    pub fn request_fingerprint(&self) -> u64 {
        self.request_fingerprint
    }

    /// A hash of the response type's structure.
    pub fn response_fingerprint(&self) -> u64 {
        self.response_fingerprint
    }

    /// The shape of the exchange.
    pub fn kind(&self) -> MethodKind {
        self.kind
    }

    /// The method's gRPC path, `/<package>.<Service>/<Rpc>`, from the names
    /// the `.proto` declares (a `name` option changes the message name, not
    /// this), e.g. `/embedder.Embedder/Embed`.
    ///
    /// ```
    /// # use workerbus::{MethodKind, MethodSchema};
    /// fn route(method: &MethodSchema) -> String {
    ///     format!("{} answers at {}", method.name(), method.grpc_path())
    /// }
    /// ```
    pub fn grpc_path(&self) -> &'static str {
        self.grpc_path
    }
}

/// A service as declared in its `.proto`: its full name and methods.
///
/// Every generated client and server carries its service's schema
/// (`EmbedderClient::SCHEMA`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceSchema {
    name: &'static str,
    methods: &'static [MethodSchema],
    fingerprint: u64,
}

impl ServiceSchema {
    pub(crate) const fn new(
        name: &'static str,
        methods: &'static [MethodSchema],
        fingerprint: u64,
    ) -> ServiceSchema {
        ServiceSchema {
            name,
            methods,
            fingerprint,
        }
    }

    /// The service's full protobuf name, e.g. `embedder.Embedder`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The methods, in declaration order.
    pub fn methods(&self) -> &'static [MethodSchema] {
        self.methods
    }

    /// The method with this message name.
    pub fn method(&self, name: &str) -> Option<&'static MethodSchema> {
        self.methods.iter().find(|method| method.name == name)
    }

    /// The method at this gRPC path (`/embedder.Embedder/Embed`).
    pub fn method_at(&self, grpc_path: &str) -> Option<&'static MethodSchema> {
        self.methods
            .iter()
            .find(|method| method.grpc_path == grpc_path)
    }

    /// A hash of the whole service: every method's name, kind and message
    /// fingerprints. Equal fingerprints mean compatible builds.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}
