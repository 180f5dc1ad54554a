//! Calls in bytes: the four call shapes and one-way messages with requests
//! and responses as their encoded bytes, for programs that carry messages
//! without knowing their types (a gateway such as `workerbus-grpc`, a
//! proxy). Generated clients are the typed face of the same calls.

use bytes::Bytes;
use futures_core::Stream;

use crate::error::Error;
use crate::event::Subscription;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::ServiceSchema;

use super::channel::Channel;
use super::options::{CallOptions, MethodDefaults, Resolved};
use super::stream::ByteStream;

/// The options of a call in bytes: `options`, then the library's defaults
/// (a method's schema defaults are the generated client's to apply).
fn resolve(options: &CallOptions) -> Resolved {
    CallOptions::resolve([Some(options), None], &MethodDefaults::default())
}

fn identity(payload: Bytes) -> Bytes {
    payload
}

impl Channel {
    /// Subscribes to the events of `schema`'s service (an events service)
    /// that the worker sends from now on, each as its message name and
    /// encoded message: what generated event streams decode, for programs
    /// that pass events on without knowing their types. Reading it returns
    /// the worker's event credit, as a generated stream does.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel, events: &'static workerbus::ServiceSchema) {
    /// use futures_util::StreamExt;
    ///
    /// let mut subscription = channel.subscribe_bytes(events);
    /// while let Some((name, payload)) = subscription.next().await {
    ///     println!("{name}: {} bytes", payload.len());
    /// }
    /// # }
    /// ```
    pub fn subscribe_bytes(&self, schema: &'static ServiceSchema) -> Subscription {
        self.subscribe(schema)
    }

    /// Calls `method` with an encoded request and returns the encoded
    /// response: a unary call as a generated client makes it, with
    /// `options` (timeout, retries, idempotency, metadata) and the channel's
    /// middleware, but no schema defaults.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use std::time::Duration;
    /// use workerbus::{CallOptions, MethodName};
    ///
    /// let method = MethodName::from_static("embedder.embed");
    /// let request = bytes::Bytes::from_static(b"\x0a\x05hello");
    /// let options = CallOptions::new().timeout(Duration::from_secs(2));
    /// let response = channel.call_bytes(&method, request, &options).await?;
    /// println!("{} bytes back", response.len());
    /// # Ok(()) }
    /// ```
    pub async fn call_bytes(
        &self,
        method: &MethodName,
        request: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, Error> {
        let options = resolve(options);
        let response = self.call(method, request.into(), &options).await?;
        Ok(response.into_bytes())
    }

    /// [`call_bytes`](Channel::call_bytes) with the request and response as
    /// [`Payload`]s: a response from a thread worker stays the message
    /// value it was answered with, for a bridge that encodes it straight
    /// into its own buffer ([`Payload::encode_to`]) instead of into bytes
    /// of its own first.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use workerbus::{CallOptions, MethodName, Payload};
    ///
    /// let method = MethodName::from_static("embedder.embed");
    /// let request = Payload::from(bytes::Bytes::from_static(b"\x0a\x05hello"));
    /// let response = channel.call_payload(&method, request, &CallOptions::new()).await?;
    /// // A gRPC message: uncompressed, its length, then the message.
    /// let mut frame = Vec::with_capacity(5 + response.len());
    /// frame.push(0);
    /// frame.extend_from_slice(&(response.len() as u32).to_be_bytes());
    /// response.encode_to(&mut frame);
    /// # Ok(()) }
    /// ```
    pub async fn call_payload(
        &self,
        method: &MethodName,
        request: Payload,
        options: &CallOptions,
    ) -> Result<Payload, Error> {
        let options = resolve(options);
        self.call(method, request, &options).await
    }

    /// Sends `method` as a one-way message with an encoded request: returns
    /// once it is queued for the worker, which answers nothing.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use workerbus::{CallOptions, MethodName};
    ///
    /// let method = MethodName::from_static("metrics.record");
    /// channel
    ///     .post_bytes(&method, bytes::Bytes::from_static(b"\x08\x01"), &CallOptions::new())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn post_bytes(
        &self,
        method: &MethodName,
        request: Bytes,
        options: &CallOptions,
    ) -> Result<(), Error> {
        let options = resolve(options);
        self.post(method, request.into(), &options).await
    }

    /// Calls a method whose response is a stream, with an encoded request;
    /// the stream yields each response's bytes.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use workerbus::{CallOptions, MethodName};
    ///
    /// let method = MethodName::from_static("search.watch");
    /// let mut items = channel
    ///     .server_stream_bytes(&method, bytes::Bytes::new(), &CallOptions::new())
    ///     .await?;
    /// while let Some(item) = items.message().await? {
    ///     println!("{} bytes", item.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn server_stream_bytes(
        &self,
        method: &MethodName,
        request: Bytes,
        options: &CallOptions,
    ) -> Result<ByteStream, Error> {
        let options = resolve(options);
        let call = self.server_stream(method, request.into(), &options).await?;
        Ok(ByteStream::new(method, call))
    }

    /// Calls a method whose request is a stream: sends each of `requests`
    /// (encoded messages) as the worker has room for it, then returns the
    /// encoded response. The timeout covers the whole call.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use bytes::Bytes;
    /// use workerbus::{CallOptions, MethodName};
    ///
    /// let method = MethodName::from_static("indexer.load");
    /// let requests = futures_util::stream::iter([Bytes::from_static(b"\x0a\x01a")]);
    /// let response = channel
    ///     .client_stream_bytes(&method, requests, &CallOptions::new())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn client_stream_bytes<S>(
        &self,
        method: &MethodName,
        requests: S,
        options: &CallOptions,
    ) -> Result<Bytes, Error>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let options = resolve(options);
        self.client_stream(method, requests, identity, &options)
            .await
            .map(Payload::into_bytes)
    }

    /// Calls a method streaming both ways: `requests` (encoded messages) is
    /// sent from a task of its own as the worker has room, while the caller
    /// reads the responses' bytes.
    ///
    /// ```no_run
    /// # async fn run(channel: workerbus::Channel) -> Result<(), workerbus::Error> {
    /// use bytes::Bytes;
    /// use workerbus::{CallOptions, MethodName};
    ///
    /// let method = MethodName::from_static("chat.talk");
    /// let requests = futures_util::stream::iter([Bytes::from_static(b"\x0a\x02hi")]);
    /// let mut replies = channel
    ///     .bidi_stream_bytes(&method, requests, &CallOptions::new())
    ///     .await?;
    /// while let Some(reply) = replies.message().await? {
    ///     println!("{} bytes", reply.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn bidi_stream_bytes<S>(
        &self,
        method: &MethodName,
        requests: S,
        options: &CallOptions,
    ) -> Result<ByteStream, Error>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let options = resolve(options);
        let call = self
            .bidi_stream(method, requests, identity, &options)
            .await?;
        Ok(ByteStream::new(method, call))
    }
}
