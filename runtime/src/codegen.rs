//! The one door through which generated code reaches the runtime.
//!
//! Everything here exists for `workerbus-build`'s output and is **outside the
//! semver guarantees** of this crate: it changes whenever the generator does.
//! Write programs against the public items at the crate root instead.

use std::borrow::Cow;
use std::time::Duration;

pub use bytes::Bytes;

pub use crate::payload::Payload;
pub use prost::Message;

pub use futures_core::Stream;

pub use crate::client::{CallOptions, Channel, Streaming};
pub use crate::context::Context;
pub use crate::error::{Error, Status};
pub use crate::event::EventSink;
pub use crate::event::Subscription;
pub use crate::name::MethodName;
pub use crate::schema::{MethodKind, MethodSchema, ServiceSchema};
pub use crate::server::{Call, CallStreams, Dispatch, Incoming, StreamSender};

use crate::client::{ByteStream, MethodDefaults, Resolved};
use crate::message;

/// A method as the generated client calls it: name, types and defaults.
#[derive(Debug)]
pub struct MethodDesc {
    name: MethodName,
    response_type: &'static str,
    defaults: MethodDefaults,
    /// The settings of a call whose options and client set nothing:
    /// `defaults` resolved once, at compile time.
    resolved: Resolved,
}

impl MethodDesc {
    /// A method with no schema defaults.
    pub const fn new(name: &'static str, response_type: &'static str) -> MethodDesc {
        let defaults = MethodDefaults {
            timeout: None,
            retries: None,
            idempotent: false,
        };
        MethodDesc {
            name: MethodName::from_static(name),
            response_type,
            defaults,
            resolved: Resolved::of(&defaults),
        }
    }

    /// The schema's `timeout_ms`.
    pub const fn timeout_ms(self, ms: u64) -> MethodDesc {
        let mut defaults = self.defaults;
        defaults.timeout = Some(Duration::from_millis(ms));
        self.with(defaults)
    }

    /// The schema's `retries`.
    pub const fn retries(self, retries: u32) -> MethodDesc {
        let mut defaults = self.defaults;
        defaults.retries = Some(retries);
        self.with(defaults)
    }

    /// The schema's `idempotent: true`.
    pub const fn idempotent(self) -> MethodDesc {
        let mut defaults = self.defaults;
        defaults.idempotent = true;
        self.with(defaults)
    }

    /// This method with other defaults, resolved again.
    const fn with(mut self, defaults: MethodDefaults) -> MethodDesc {
        self.defaults = defaults;
        let before = std::mem::replace(&mut self.resolved, Resolved::of(&defaults));
        // Made by `Resolved::of`, it holds nothing to drop (and a constant
        // function cannot drop it).
        std::mem::forget(before);
        self
    }
}

/// A method's entry in its service schema.
pub const fn method_schema(
    name: &'static str,
    request: (&'static str, u64),
    response: (&'static str, u64),
    kind: MethodKind,
    grpc_path: &'static str,
) -> MethodSchema {
    MethodSchema::new(name, request, response, kind, grpc_path)
}

/// A service schema.
pub const fn service_schema(
    name: &'static str,
    methods: &'static [MethodSchema],
    fingerprint: u64,
) -> ServiceSchema {
    ServiceSchema::new(name, methods, fingerprint)
}

/// What a generated `<Service>Client` wraps: a channel and client-wide options.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    options: CallOptions,
    /// Whether `options` sets nothing: then a call that sets nothing
    /// either takes its method's resolved defaults as they are.
    unset: bool,
}

impl Client {
    /// A client on `channel` with no client-wide options.
    pub fn new(channel: Channel) -> Client {
        Client {
            channel,
            options: CallOptions::new(),
            unset: true,
        }
    }

    /// Replaces the client-wide options.
    pub fn with_options(mut self, options: CallOptions) -> Client {
        self.unset = options.is_unset();
        self.options = options;
        self
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The client-wide options.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// One unary call: encode, send (with retries per the resolved options),
    /// decode.
    pub async fn unary<Req, Resp>(
        &self,
        method: &'static MethodDesc,
        request: Req,
        options: Option<&CallOptions>,
    ) -> Result<Resp, Error>
    where
        Req: Message + Clone + 'static,
        Resp: Message + Default + Clone + 'static,
    {
        let options = self.resolve(method, options);
        let response = (self.channel)
            .call(&method.name, Payload::message(request), &options)
            .await?;
        method.decode(response)
    }

    /// A one-way message: encode and queue it; the worker answers nothing.
    pub async fn one_way<Req: Message + Clone + 'static>(
        &self,
        method: &'static MethodDesc,
        request: Req,
        options: Option<&CallOptions>,
    ) -> Result<(), Error> {
        let options = self.resolve(method, options);
        (self.channel)
            .post(&method.name, Payload::message(request), &options)
            .await
    }

    /// A call whose response is a stream.
    pub async fn server_stream<Req, Resp>(
        &self,
        method: &'static MethodDesc,
        request: Req,
        options: Option<&CallOptions>,
    ) -> Result<Streaming<Resp>, Error>
    where
        Req: Message + Clone + 'static,
        Resp: Message + Default,
    {
        let options = self.resolve(method, options);
        let call = (self.channel)
            .server_stream(&method.name, Payload::message(request), &options)
            .await?;
        let items = ByteStream::new(&method.name, call);
        Ok(Streaming::new(items, method.response_type))
    }

    /// A call whose request is a stream.
    pub async fn client_stream<Req, Resp, S>(
        &self,
        method: &'static MethodDesc,
        requests: S,
        options: Option<&CallOptions>,
    ) -> Result<Resp, Error>
    where
        Req: Message,
        Resp: Message + Default + Clone + 'static,
        S: Stream<Item = Req> + Send + 'static,
    {
        let options = self.resolve(method, options);
        let response = (self.channel)
            .client_stream(&method.name, requests, |m: Req| encode(&m), &options)
            .await?;
        method.decode(response)
    }

    /// A call streaming both ways.
    pub async fn bidi_stream<Req, Resp, S>(
        &self,
        method: &'static MethodDesc,
        requests: S,
        options: Option<&CallOptions>,
    ) -> Result<Streaming<Resp>, Error>
    where
        Req: Message + 'static,
        Resp: Message + Default,
        S: Stream<Item = Req> + Send + 'static,
    {
        let options = self.resolve(method, options);
        let call = (self.channel)
            .bidi_stream(&method.name, requests, |m: Req| encode(&m), &options)
            .await?;
        let items = ByteStream::new(&method.name, call);
        Ok(Streaming::new(items, method.response_type))
    }

    /// The options of one call: the call's, the client's, the schema's
    /// (as they are, when neither of the others sets anything).
    fn resolve(
        &self,
        method: &'static MethodDesc,
        options: Option<&CallOptions>,
    ) -> Cow<'static, Resolved> {
        if self.unset && options.is_none_or(CallOptions::is_unset) {
            return Cow::Borrowed(&method.resolved);
        }
        Cow::Owned(CallOptions::resolve(
            [options, Some(&self.options)],
            &method.defaults,
        ))
    }
}

impl MethodDesc {
    fn decode<M: Message + Default + Clone + 'static>(
        &self,
        response: Payload,
    ) -> Result<M, Error> {
        message::decode_payload(&self.name, response, "response", self.response_type)
    }
}

/// Encodes a message (an event) into a buffer of exactly its size.
pub fn encode<M: Message>(message: &M) -> Bytes {
    message::encode(message)
}

/// A handler's response, as the value it is: encoded only if it leaves
/// the process.
pub fn respond<M: Message + Clone + 'static>(response: M) -> Payload {
    Payload::message(response)
}

/// Takes a request back as its type (moved between threads, decoded from
/// bytes), or says which message failed to decode and why.
pub fn decode<M: Message + Default + Clone + 'static>(
    cx: &Context,
    payload: Payload,
    request_type: &'static str,
) -> Result<M, Status> {
    payload.decode().map_err(|error| {
        Status::invalid_argument(format!(
            "the request to {} did not decode as {request_type}: {error}",
            cx.method()
        ))
    })
}

/// Subscribes to the events of an events service.
pub fn subscribe(channel: &Channel, service: &'static ServiceSchema) -> Subscription {
    channel.subscribe(service)
}

/// Decodes an event, or says which event failed to decode and why.
pub fn decode_event<M: Message + Default>(
    method: MethodName,
    payload: Bytes,
    event_type: &'static str,
) -> Result<M, Error> {
    message::decode(&method, payload, "event", event_type)
}

/// An event of a service the subscription did not ask for (never happens:
/// subscriptions filter by the service's message names).
pub fn unexpected_event(method: MethodName, service: &ServiceSchema) -> Error {
    let status = Status::unimplemented(format!("{method} is not an event of {}", service.name()));
    Error::Remote { method, status }
}

/// The answer to a message name the service does not have.
pub fn unimplemented(cx: &Context, service: &ServiceSchema) -> Status {
    Status::unimplemented(format!(
        "{} is not a method of {} (it has: {})",
        cx.method(),
        service.name(),
        service
            .methods()
            .iter()
            .map(MethodSchema::name)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
