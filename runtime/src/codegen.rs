//! The one door through which generated code reaches the runtime.
//!
//! Everything here exists for `workerbus-build`'s output and is **outside the
//! semver guarantees** of this crate: it changes whenever the generator does.
//! Write programs against the public items at the crate root instead.

use std::time::Duration;

pub use bytes::Bytes;
pub use prost::Message;

pub use futures_core::Stream;

pub use crate::client::{CallOptions, Channel, Streaming};
pub use crate::error::{Error, Status};
pub use crate::event::Subscription;
pub use crate::name::MethodName;
pub use crate::schema::{MethodKind, MethodSchema, ServiceSchema};
pub use crate::server::{Call, CallStreams, Context, Dispatch, EventSink, Incoming, StreamSender};

use crate::client::{MethodDefaults, Opened};

/// A method as the generated client calls it: name, types and defaults.
#[derive(Debug)]
pub struct MethodDesc {
    name: MethodName,
    response_type: &'static str,
    defaults: MethodDefaults,
}

impl MethodDesc {
    /// A method with no schema defaults.
    pub const fn new(name: &'static str, response_type: &'static str) -> MethodDesc {
        MethodDesc {
            name: MethodName::from_static(name),
            response_type,
            defaults: MethodDefaults {
                timeout: None,
                retries: None,
                idempotent: false,
            },
        }
    }

    /// The schema's `timeout_ms`.
    pub const fn timeout_ms(mut self, ms: u64) -> MethodDesc {
        self.defaults.timeout = Some(Duration::from_millis(ms));
        self
    }

    /// The schema's `retries`.
    pub const fn retries(mut self, retries: u32) -> MethodDesc {
        self.defaults.retries = Some(retries);
        self
    }

    /// The schema's `idempotent: true`.
    pub const fn idempotent(mut self) -> MethodDesc {
        self.defaults.idempotent = true;
        self
    }
}

/// A method's entry in its service schema.
pub const fn method_schema(
    name: &'static str,
    request: (&'static str, u64),
    response: (&'static str, u64),
    kind: MethodKind,
) -> MethodSchema {
    MethodSchema::new(name, request, response, kind)
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
}

impl Client {
    /// A client on `channel` with no client-wide options.
    pub fn new(channel: Channel) -> Client {
        Client {
            channel,
            options: CallOptions::new(),
        }
    }

    /// Replaces the client-wide options.
    pub fn with_options(mut self, options: CallOptions) -> Client {
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
        Req: Message,
        Resp: Message + Default,
    {
        let resolved = CallOptions::resolve([options, Some(&self.options)], &method.defaults);
        let payload = encode(&request);
        drop(request);
        let response = self.channel.call(&method.name, payload, &resolved).await?;
        Resp::decode(response).map_err(|source| Error::Decode {
            method: method.name.clone(),
            what: "response",
            message: method.response_type,
            source,
        })
    }
}

impl Client {
    /// A one-way message: encode and queue it; the worker answers nothing.
    pub async fn one_way<Req: Message>(
        &self,
        method: &'static MethodDesc,
        request: Req,
        options: Option<&CallOptions>,
    ) -> Result<(), Error> {
        let resolved = CallOptions::resolve([options, Some(&self.options)], &method.defaults);
        let payload = encode(&request);
        drop(request);
        self.channel.post(&method.name, payload, &resolved).await
    }

    /// A call whose response is a stream.
    pub async fn server_stream<Req, Resp>(
        &self,
        method: &'static MethodDesc,
        request: Req,
        options: Option<&CallOptions>,
    ) -> Result<Streaming<Resp>, Error>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let resolved = CallOptions::resolve([options, Some(&self.options)], &method.defaults);
        let payload = encode(&request);
        let call = match self
            .channel
            .open_stream(
                &method.name,
                payload,
                &resolved,
                MethodKind::ServerStreaming,
            )
            .await?
        {
            Opened::Stream(call, _) => Some(call),
            Opened::Answered(_) => None,
        };
        Ok(Streaming::new(&method.name, call, method.response_type))
    }

    /// A call whose request is a stream: sends each message of `requests`
    /// as the worker has room for it, then waits for the response.
    pub async fn client_stream<Req, Resp, S>(
        &self,
        method: &'static MethodDesc,
        requests: S,
        options: Option<&CallOptions>,
    ) -> Result<Resp, Error>
    where
        Req: Message,
        Resp: Message + Default,
        S: Stream<Item = Req> + Send + 'static,
    {
        let resolved = CallOptions::resolve([options, Some(&self.options)], &method.defaults);
        let call = async {
            let (call, send) = match self
                .channel
                .open_stream(
                    &method.name,
                    Bytes::new(),
                    &resolved,
                    MethodKind::ClientStreaming,
                )
                .await?
            {
                Opened::Stream(call, send) => (call, send),
                Opened::Answered(response) => return Ok(response),
            };
            let mut requests = std::pin::pin!(requests);
            while let Some(request) =
                std::future::poll_fn(|cx| requests.as_mut().poll_next(cx)).await
            {
                // The call ended early (the worker answered): stop sending.
                if send.send(encode(&request)).await.is_err() {
                    break;
                }
            }
            send.end();
            call.response().await
        };
        let response = match resolved.timeout {
            Some(after) => {
                tokio::time::timeout(after, call)
                    .await
                    .map_err(|_| Error::Timeout {
                        method: method.name.clone(),
                        after,
                    })??
            }
            None => call.await?,
        };
        Resp::decode(response).map_err(|source| Error::Decode {
            method: method.name.clone(),
            what: "response",
            message: method.response_type,
            source,
        })
    }

    /// A call streaming both ways: `requests` is sent from a task of its own
    /// (as the worker has room), while the caller reads the responses.
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
        let resolved = CallOptions::resolve([options, Some(&self.options)], &method.defaults);
        let (call, send) = match self
            .channel
            .open_stream(
                &method.name,
                Bytes::new(),
                &resolved,
                MethodKind::BidiStreaming,
            )
            .await?
        {
            Opened::Stream(call, send) => (call, send),
            Opened::Answered(_) => {
                return Ok(Streaming::new(&method.name, None, method.response_type));
            }
        };
        tokio::spawn(async move {
            let mut requests = std::pin::pin!(requests);
            while let Some(request) =
                std::future::poll_fn(|cx| requests.as_mut().poll_next(cx)).await
            {
                if send.send(encode(&request)).await.is_err() {
                    return;
                }
            }
            send.end();
        });
        Ok(Streaming::new(
            &method.name,
            Some(call),
            method.response_type,
        ))
    }
}

/// Encodes a message into a buffer of exactly its size.
pub fn encode<M: Message>(message: &M) -> Bytes {
    let mut buf = bytes::BytesMut::with_capacity(message.encoded_len());
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// Decodes a request, or says which message failed to decode and why.
pub fn decode<M: Message + Default>(
    cx: &Context,
    payload: Bytes,
    request_type: &'static str,
) -> Result<M, Status> {
    M::decode(payload).map_err(|error| {
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
    M::decode(payload).map_err(|source| Error::Decode {
        method,
        what: "event",
        message: event_type,
        source,
    })
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
