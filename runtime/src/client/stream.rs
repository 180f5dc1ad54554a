//! Streaming calls on the host: opening one, the halves that read the
//! worker's items and send the request stream, and [`Streaming`].

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::frame::{Frame, HEADER_LEN};
use crate::log::{self, Direction};
use crate::message::decode;
use crate::middleware::{CallInfo, Next};
use crate::name::MethodName;
use crate::schema::MethodKind;

use super::call::check_request_size;
use super::channel::{Channel, Inner, check_method_name};
use super::deadline::{due, timed_out, until};
use super::options::Resolved;
use super::pending::{
    Attempt, Failure, Kind, Shared, Start, abandon, lock, release, start, worker_runs,
};
use crate::payload::Payload;
use crate::sync::wait_for;

/// A streaming call, once its opening went through the host's middleware.
pub(super) enum Opened {
    /// The call is open: its two halves.
    Stream(StreamCall, StreamSendHalf),
    /// A middleware answered without opening it: for a request stream, this
    /// is the response; a response stream is empty.
    Answered(Payload),
}

/// The receiving half of a streaming call on the host: the worker's items,
/// then its answer. Dropping it before the end cancels the call.
pub(crate) struct StreamCall {
    /// Keeps the connection open while the stream is read.
    pub(super) channel: Channel,
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) method: MethodName,
    pub(super) deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) timeout: Option<Duration>,
    pub(super) done: bool,
    /// Whether the worker still runs the call, judged from the outcome this
    /// stream took: a request item too large to send fails the call here
    /// while the worker runs it, and ending the call must then cancel it.
    pub(super) worker_runs: bool,
}

impl StreamCall {
    /// Ends the call by its deadline.
    pub(super) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let Some(deadline) = &mut self.deadline else {
            return Poll::Pending;
        };
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(timed_out(&self.method, self.timeout.unwrap_or_default()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    pub(super) fn finish(&mut self) {
        self.done = true;
        abandon(&self.shared, self.id);
    }

    /// Ends a call whose outcome this stream took: answered, it ends
    /// without a word; failed here while the worker runs it, it is
    /// cancelled.
    pub(super) fn ended(&mut self) {
        self.done = true;
        release(&self.shared, self.id, Some(self.worker_runs));
    }

    /// The next item of the worker's stream; `Ok(None)` once it ended with
    /// a `RESPONSE`, an error if it ended otherwise.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let (polled, waker) = {
            let mut state = lock(&self.shared);
            let id = self.id;
            let Some(slot) = state.calls.get_mut(&id) else {
                drop(state);
                self.done = true;
                return Poll::Ready(Some(Err(Error::Disconnected {
                    method: self.method.clone(),
                    cause: None,
                })));
            };
            let item = slot.stream.as_mut().and_then(|stream| {
                let item = stream.items.pop_front()?;
                let credit = stream.receive.take(item.len());
                Some((item, credit))
            });
            match item {
                Some((item, credit)) => {
                    let waker = credit.and_then(|(count, bytes)| {
                        let frame = Frame::Credit { id, count, bytes };
                        log::frame(Direction::HostOut, &frame, Some(&self.method));
                        state.outbox.push_back(frame);
                        state.link.take()
                    });
                    (Poll::Ready(Some(Ok(item))), waker)
                }
                None => {
                    let outcome = slot.take_outcome();
                    self.worker_runs = worker_runs(outcome.as_ref().map(Result::as_ref));
                    match outcome {
                        Some(Ok(_)) => (Poll::Ready(None), None),
                        Some(Err(failure)) => (
                            Poll::Ready(Some(Err(failure.into_error(&self.method)))),
                            None,
                        ),
                        None => {
                            slot.waker = Some(cx.waker().clone());
                            (Poll::Pending, None)
                        }
                    }
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        match polled {
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(error) => {
                    self.finish();
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            // The worker's answer (or a failure here) ended the stream.
            end => {
                self.ended();
                end
            }
        }
    }

    /// The worker's answer to a call whose request streamed.
    pub(crate) async fn response(mut self) -> Result<Payload, Error> {
        poll_fn(|cx| {
            let outcome = {
                let mut state = lock(&self.shared);
                match state.calls.get_mut(&self.id) {
                    None => Some(Err(Error::Disconnected {
                        method: self.method.clone(),
                        cause: None,
                    })),
                    Some(slot) => match slot.take_outcome() {
                        Some(outcome) => {
                            self.worker_runs = worker_runs(Some(outcome.as_ref()));
                            Some(outcome.map_err(|failure| failure.into_error(&self.method)))
                        }
                        None => {
                            slot.waker = Some(cx.waker().clone());
                            None
                        }
                    },
                }
            };
            match outcome {
                Some(outcome) => {
                    self.ended();
                    Poll::Ready(outcome)
                }
                None => match self.poll_deadline(cx) {
                    Poll::Ready(error) => {
                        self.finish();
                        Poll::Ready(Err(error))
                    }
                    Poll::Pending => Poll::Pending,
                },
            }
        })
        .await
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        if !self.done {
            abandon(&self.shared, self.id);
        }
        let _ = &self.channel;
    }
}

/// The sending half of a streaming call on the host.
pub(crate) struct StreamSendHalf {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) method: MethodName,
}

impl StreamSendHalf {
    /// Sends one item of the request stream, once the worker has room.
    /// Fails once the call has ended (the worker answered or the caller
    /// stopped listening); an item over the maximum frame length ends the
    /// call with [`Error::TooLarge`].
    pub(crate) async fn send(&self, payload: Bytes) -> Result<(), ()> {
        let size = HEADER_LEN + payload.len();
        let mut payload = Some(payload);
        let waker = poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if state.closed.is_some() {
                return Poll::Ready(Err(()));
            }
            let max = self.shared.max_frame_length;
            let Some(slot) = state.calls.get_mut(&self.id) else {
                return Poll::Ready(Err(()));
            };
            if slot.outcome.is_some() {
                return Poll::Ready(Err(()));
            }
            if size > max {
                // Fail the call; its reader cancels it in the worker.
                slot.settle(Err(Failure::ItemTooLarge { size, max }))
                    .into_iter()
                    .flatten()
                    .for_each(Waker::wake);
                return Poll::Ready(Err(()));
            }
            let Some(stream) = slot.stream.as_mut() else {
                return Poll::Ready(Err(()));
            };
            if !stream.send.ready() {
                stream.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let payload = payload.take().unwrap_or_default();
            stream.send.spend(payload.len());
            let item = Frame::Item {
                id: self.id,
                payload,
            };
            log::frame(Direction::HostOut, &item, Some(&self.method));
            state.outbox.push_back(item);
            Poll::Ready(Ok(state.link.take()))
        })
        .await?;
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Sends each of `requests` as the worker has room for it; stops early,
    /// with `Err`, once the call has ended (the worker answered, or the
    /// caller stopped listening).
    async fn send_all<T, S>(&self, requests: S, encode: fn(T) -> Bytes) -> Result<(), ()>
    where
        S: futures_core::Stream<Item = T>,
    {
        let mut requests = std::pin::pin!(requests);
        loop {
            // A stream with nothing to send yet must not hold the call open
            // after it ended (the worker exited, answered, or was lost).
            let next = poll_fn(|cx| match self.watch_end(cx) {
                true => requests.as_mut().poll_next(cx).map(Ok),
                false => Poll::Ready(Err(())),
            })
            .await?;
            let Some(request) = next else {
                return Ok(());
            };
            self.send(encode(request)).await?;
        }
    }

    /// Whether the call is still open; if it is, `cx` is woken when it ends.
    fn watch_end(&self, cx: &mut std::task::Context<'_>) -> bool {
        let mut state = lock(&self.shared);
        if state.closed.is_some() {
            return false;
        }
        let Some(slot) = state.calls.get_mut(&self.id) else {
            return false;
        };
        if slot.outcome.is_some() {
            return false;
        }
        if let Some(stream) = slot.stream.as_mut()
            && !stream
                .sender
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            stream.sender = Some(cx.waker().clone());
        }
        true
    }

    /// Ends the request stream.
    pub(crate) fn end(&self) {
        let waker = {
            let mut state = lock(&self.shared);
            if state.closed.is_some() || !state.calls.contains_key(&self.id) {
                return;
            }
            let end = Frame::End { id: self.id };
            log::frame(Direction::HostOut, &end, Some(&self.method));
            state.outbox.push_back(end);
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A stream of messages from a worker: the response of a method declared
/// `returns (stream T)`.
///
/// It yields each message as it arrives, and ends after the last one
/// (`None`), or with an error if the call failed (the worker's status, its
/// exit, the call's timeout). Reading it grants the worker room for more, so
/// a slow reader slows the worker down instead of filling memory; dropping
/// it cancels the call.
pub struct Streaming<T> {
    pub(super) items: ByteStream,
    pub(super) message_type: &'static str,
    pub(super) _message: std::marker::PhantomData<fn() -> T>,
}

impl<T> Streaming<T> {
    pub(crate) fn new(items: ByteStream, message_type: &'static str) -> Streaming<T> {
        Streaming {
            items,
            message_type,
            _message: std::marker::PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Streaming<T> {
    /// The next message, `None` once the stream has ended.
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx))
            .await
            .transpose()
    }
}

impl<T: prost::Message + Default> futures_core::Stream for Streaming<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(Pin::new(&mut this.items).poll_next(cx));
        Poll::Ready(item.map(|item| {
            item.and_then(|bytes| {
                decode(
                    &this.items.method,
                    bytes,
                    "response stream item",
                    this.message_type,
                )
            })
        }))
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("method", &self.items.method)
            .field("ended", &self.items.ended())
            .finish_non_exhaustive()
    }
}

/// A worker's stream of responses as the bytes of each message, undecoded:
/// what [`Channel::server_stream_bytes`] and [`Channel::bidi_stream_bytes`]
/// return, for programs that carry messages without knowing their types
/// (a gateway, a proxy). It behaves as [`Streaming`] does: reading grants
/// the worker room for more, dropping it cancels the call.
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
pub struct ByteStream {
    /// The call, until it ends (`None` from the start if a middleware
    /// answered without opening it).
    pub(super) call: Option<StreamCall>,
    pub(super) method: MethodName,
}

impl ByteStream {
    pub(crate) fn new(method: &MethodName, call: Option<StreamCall>) -> ByteStream {
        ByteStream {
            call,
            method: method.clone(),
        }
    }

    /// The next message's bytes, `None` once the stream has ended.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx))
            .await
            .transpose()
    }

    /// The method called.
    pub fn method(&self) -> &MethodName {
        &self.method
    }

    fn ended(&self) -> bool {
        self.call.as_ref().is_none_or(|call| call.done)
    }
}

impl futures_core::Stream for ByteStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(call) = &mut this.call else {
            return Poll::Ready(None);
        };
        let item = std::task::ready!(call.poll_item(cx));
        if item.is_none() {
            this.call = None;
        }
        Poll::Ready(item)
    }
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("method", &self.method)
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A call whose response is a stream: `None` if a middleware answered
    /// without opening it (the stream is then empty).
    pub(crate) async fn server_stream(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
    ) -> Result<Option<StreamCall>, Error> {
        let opened = self
            .open_stream(method, payload, options, MethodKind::ServerStreaming)
            .await?;
        Ok(match opened {
            Opened::Stream(call, _) => Some(call),
            Opened::Answered(_) => None,
        })
    }

    /// A call whose request is a stream: sends each of `requests` as the
    /// worker has room for it, then waits for the response. The timeout
    /// covers the whole call.
    pub(crate) async fn client_stream<T, S>(
        &self,
        method: &MethodName,
        requests: S,
        encode: fn(T) -> Bytes,
        options: &Resolved,
    ) -> Result<Payload, Error>
    where
        S: futures_core::Stream<Item = T> + Send + 'static,
    {
        let call = async {
            let opened = self
                .open_stream(method, Payload::new(), options, MethodKind::ClientStreaming)
                .await?;
            let (call, send) = match opened {
                Opened::Stream(call, send) => (call, send),
                Opened::Answered(response) => return Ok(response),
            };
            // Stopped early, the call has ended: its response says how.
            let _ = send.send_all(requests, encode).await;
            send.end();
            call.response().await
        };
        until(method, options.timeout, due(options.timeout), call).await
    }

    /// A call streaming both ways: `requests` is sent from a task of its own
    /// (as the worker has room) while the caller reads the responses; `None`
    /// if a middleware answered without opening it.
    pub(crate) async fn bidi_stream<T, S>(
        &self,
        method: &MethodName,
        requests: S,
        encode: fn(T) -> Bytes,
        options: &Resolved,
    ) -> Result<Option<StreamCall>, Error>
    where
        T: Send + 'static,
        S: futures_core::Stream<Item = T> + Send + 'static,
    {
        let opened = self
            .open_stream(method, Payload::new(), options, MethodKind::BidiStreaming)
            .await?;
        let (call, send) = match opened {
            Opened::Stream(call, send) => (call, send),
            Opened::Answered(_) => return Ok(None),
        };
        tokio::spawn(async move {
            if send.send_all(requests, encode).await.is_ok() {
                send.end();
            }
        });
        Ok(Some(call))
    }

    /// Starts a streaming call: sends its `REQUEST` (with `payload`, or
    /// empty for a request stream) and returns both halves. Host middleware
    /// wraps the opening, up to the request being queued.
    async fn open_stream(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
        kind: MethodKind,
    ) -> Result<Opened, Error> {
        check_method_name(method)?;
        // The timeout covers the whole call, from here.
        let deadline = options
            .timeout
            .and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
        let Some(chain) = &self.middleware else {
            return self
                .open_stream_once(method, payload, options, kind, deadline, None)
                .await
                .map(|(call, send)| Opened::Stream(call, send));
        };
        let info = options.call_info(method, options.first_attempt, self.driver(), payload.len());
        let mut opened = None;
        let endpoint = async {
            let halves = self
                .open_stream_once(method, payload, options, kind, deadline, Some(&info))
                .await?;
            opened = Some(halves);
            Ok(Payload::new())
        };
        let answer = Next::new(chain, &info, Box::pin(endpoint)).run().await?;
        Ok(match opened {
            Some((call, send)) => Opened::Stream(call, send),
            None => Opened::Answered(answer),
        })
    }

    pub(super) async fn open_stream_once(
        &self,
        method: &MethodName,
        mut payload: Payload,
        options: &Resolved,
        kind: MethodKind,
        deadline: Option<tokio::time::Instant>,
        info: Option<&CallInfo>,
    ) -> Result<(StreamCall, StreamSendHalf), Error> {
        // Read when this runs: after the middleware set them.
        let trace = options.trace_sent(info);
        let metadata = options.metadata_sent(info);
        let open = async {
            let channel = match &self.inner {
                Inner::Direct(_) => self.clone(),
                Inner::Source(source) => source.current(method, None).await?,
            };
            let Some(shared) = channel.direct().map(Arc::clone) else {
                return Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                });
            };
            let metadata = shared.metadata_of(method, &metadata);
            check_request_size(&shared, method, &payload, options.timeout, trace, &metadata)?;
            let attempt = Attempt {
                method,
                timeout: options.timeout,
                number: options.first_attempt,
                trace,
                kind: Kind::Stream(kind),
                metadata: &metadata,
                response_metadata: options.response_metadata.as_ref(),
            };
            let id = wait_for(&shared.changed, || {
                match start(&shared, &attempt, &mut payload, None) {
                    Start::Sent(mut call) => {
                        // The stream halves take over the slot from here.
                        call.done = true;
                        Some(Ok(call.id))
                    }
                    Start::Closed(reason) => Some(Err(reason.into_error(method))),
                    Start::Wait => None,
                }
            })
            .await?;
            Ok((channel, shared, id))
        };
        let (channel, shared, id) =
            until(method, options.timeout, due(options.timeout), open).await?;
        let deadline = deadline.map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        let send = StreamSendHalf {
            shared: Arc::clone(&shared),
            id,
            method: method.clone(),
        };
        let call = StreamCall {
            channel,
            shared,
            id,
            method: method.clone(),
            deadline,
            timeout: options.timeout,
            done: false,
            worker_runs: false,
        };
        Ok((call, send))
    }
}
