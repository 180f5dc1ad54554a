//! One call: the small future most calls are ([`CallFuture`]), and one
//! attempt on one connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::Error;
use crate::frame::{HEADER_LEN, metadata_field_len};
use crate::metadata::Metadata;
use crate::middleware::CallInfo;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::trace::TraceContext;

use super::channel::{Channel, Inner, check_method_name};
use super::deadline::{due, until};
use super::options::Resolved;
use super::pending::{
    Attempt, CloseReason, Failure, Kind, PendingCall, Shared, Start, abandon, poll_answer, start,
};
use crate::sync::wait_for;

/// Why an attempt on one connection failed.
pub(super) enum SendError {
    /// The connection closed before the request left: the worker never
    /// received it. Here is the payload back.
    Undelivered {
        reason: CloseReason,
        payload: Payload,
    },
    /// Anything else.
    Failed(Error),
}

impl From<Error> for SendError {
    fn from(error: Error) -> SendError {
        SendError::Failed(error)
    }
}

/// One attempt on one connection: waits for room (until its `due`), sends,
/// and awaits the answer, which the link times out when `due`.
pub(super) async fn send(
    shared: &Shared,
    attempt: Attempt<'_>,
    payload: Payload,
) -> Result<Payload, SendError> {
    let (method, timeout) = (attempt.method, attempt.timeout);
    let Kind::Unary { due } = attempt.kind else {
        unreachable!("streams open with open_stream_once")
    };
    let metadata = shared.metadata_of(method, attempt.metadata);
    check_request_size(shared, method, &payload, timeout, attempt.trace, &metadata)?;
    let sent = Attempt {
        metadata: &metadata,
        ..attempt
    };
    let mut payload = payload;
    let mut try_start = || match start(shared, &sent, &mut payload, None) {
        Start::Sent(call) => Some(Ok(call)),
        Start::Closed(reason) => Some(Err(reason)),
        Start::Wait => None,
    };
    // Usually there is room at once; only a caller that must wait listens
    // for room freeing up.
    let started = match try_start() {
        Some(started) => started,
        None => {
            let room = async { Ok(wait_for(&shared.changed, &mut try_start).await) };
            until(method, timeout, due, room).await?
        }
    };
    let call = match started {
        Ok(call) => call,
        Err(reason) => return Err(SendError::Undelivered { reason, payload }),
    };
    call.await.map_err(|failure| match failure {
        Failure::Undelivered { reason, payload } => SendError::Undelivered { reason, payload },
        failure => SendError::Failed(failure.into_error(method)),
    })
}

/// Sends a one-attempt unary call if there is room, its slot woken through
/// `waker`; the payload is taken only then (as by [`start`]), so a caller
/// that must wait still has it.
pub(super) fn send_once<'s>(
    shared: &'s Shared,
    method: &MethodName,
    payload: &mut Payload,
    options: &Resolved,
    waker: &Waker,
) -> Result<Start<'s>, Error> {
    check_method_name(method)?;
    let metadata = shared.metadata_of(method, &options.metadata);
    check_request_size(
        shared,
        method,
        payload,
        options.timeout,
        options.trace,
        &metadata,
    )?;
    let kind = Kind::Unary {
        due: due(options.timeout),
    };
    let attempt = Attempt {
        method,
        timeout: options.timeout,
        number: options.first_attempt,
        trace: options.trace,
        kind,
        metadata: &metadata,
        response_metadata: options.response_metadata.as_ref(),
    };
    Ok(start(shared, &attempt, payload, Some(waker)))
}

/// Refuses metadata over its limit, and a `REQUEST` longer than the
/// connection's maximum frame length.
pub(super) fn check_request_size(
    shared: &Shared,
    method: &MethodName,
    payload: &Payload,
    timeout: Option<Duration>,
    trace: Option<TraceContext>,
    metadata: &Metadata,
) -> Result<(), Error> {
    metadata.check_len(method)?;
    let deadline_field = if timeout.is_some() { 8 } else { 0 };
    let trace_field = if trace.is_some() { 24 } else { 0 };
    let size = HEADER_LEN
        + deadline_field
        + 4
        + trace_field
        + metadata_field_len(metadata)
        + 2
        + method.len()
        + payload.len();
    if size > shared.max_frame_length {
        return Err(Error::TooLarge {
            method: method.clone(),
            what: "request",
            size,
            max: shared.max_frame_length,
            key: None,
        });
    }
    Ok(())
}

/// A call made with [`Channel::call`]. It starts when first polled, like
/// the `async fn` it stands for; it is not one because most calls need only
/// a small part of what a call can do, and a future as large as everything
/// a call can do costs a copy of itself at each step of the caller's.
pub(crate) struct CallFuture<'a> {
    pub(super) state: CallState<'a>,
}

pub(super) enum CallState<'a> {
    Unstarted {
        channel: &'a Channel,
        method: &'a MethodName,
        payload: Payload,
        options: &'a Resolved,
    },
    /// One attempt, sent: waiting for its answer.
    Sent {
        call: PendingCall<'a>,
        method: &'a MethodName,
    },
    /// One attempt, sent on a supervised channel's current connection,
    /// which this holds while it waits.
    SentOn {
        connection: Channel,
        id: u64,
        method: &'a MethodName,
        /// For a request the connection never delivered: sent again in full.
        channel: &'a Channel,
        options: &'a Resolved,
    },
    /// Everything else: retries, middleware, supervision, waiting for room.
    Full(Pin<Box<dyn Future<Output = Result<Payload, Error>> + Send + 'a>>),
    Done,
}

impl Future for CallFuture<'_> {
    type Output = Result<Payload, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let CallState::Unstarted { .. } = this.state {
            let CallState::Unstarted {
                channel,
                method,
                payload,
                options,
            } = std::mem::replace(&mut this.state, CallState::Done)
            else {
                unreachable!()
            };
            match channel.begin(method, payload, options, cx.waker()) {
                // Sent with this task's waker in its slot: nothing to poll
                // until the answer wakes it.
                Ok(state @ (CallState::Sent { .. } | CallState::SentOn { .. })) => {
                    this.state = state;
                    return Poll::Pending;
                }
                Ok(state) => this.state = state,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        let outcome = loop {
            match &mut this.state {
                CallState::Sent { call, method } => {
                    let outcome = std::task::ready!(Pin::new(call).poll(cx));
                    break outcome.map_err(|failure| failure.into_error(method));
                }
                CallState::SentOn {
                    connection,
                    id,
                    method,
                    channel,
                    options,
                } => {
                    let shared = connection
                        .direct()
                        .expect("a supervised connection is direct");
                    match std::task::ready!(poll_answer(shared, *id, cx)) {
                        // The worker ended before the request left: it goes
                        // to the next worker, as a call that waited for it.
                        Err(Failure::Undelivered { payload, .. }) => {
                            let (channel, method, options) = (*channel, *method, *options);
                            this.state = CallState::Full(Box::pin(
                                channel.call_full(method, payload, options),
                            ));
                        }
                        outcome => break outcome.map_err(|failure| failure.into_error(method)),
                    }
                }
                CallState::Full(call) => break std::task::ready!(call.as_mut().poll(cx)),
                CallState::Unstarted { .. } | CallState::Done => {
                    panic!("a call polled after it completed")
                }
            }
        };
        this.state = CallState::Done;
        Poll::Ready(outcome)
    }
}

impl Drop for CallFuture<'_> {
    fn drop(&mut self) {
        if let CallState::SentOn { connection, id, .. } = &self.state
            && let Some(shared) = connection.direct()
        {
            abandon(shared, *id);
        }
    }
}

impl Channel {
    /// Calls `method` with an encoded request, retrying per `options`, and
    /// returns the encoded response.
    pub(crate) fn call<'a>(
        &'a self,
        method: &'a MethodName,
        payload: Payload,
        options: &'a Resolved,
    ) -> CallFuture<'a> {
        CallFuture {
            state: CallState::Unstarted {
                channel: self,
                method,
                payload,
                options,
            },
        }
    }

    /// The first step of a call: most calls are one attempt without
    /// middleware that finds room at once (on a direct channel, or on a
    /// supervised channel's current connection when a crash would not run
    /// the call again), and then wait as nothing more than their slot in the
    /// pending table, woken through `waker`. Every other call (retries,
    /// middleware, a restart to wait for, no room) runs in full.
    pub(super) fn begin<'a>(
        &'a self,
        method: &'a MethodName,
        payload: Payload,
        options: &'a Resolved,
        waker: &Waker,
    ) -> Result<CallState<'a>, Error> {
        let full = |payload| {
            Ok(CallState::Full(Box::pin(
                self.call_full(method, payload, options),
            )))
        };
        if self.middleware.is_some() || options.retries > 0 {
            return full(payload);
        }
        let mut payload = payload;
        match &self.inner {
            Inner::Direct(handle) => {
                match send_once(&handle.shared, method, &mut payload, options, waker)? {
                    Start::Sent(call) => Ok(CallState::Sent { call, method }),
                    Start::Wait => full(payload),
                    Start::Closed(reason) => Err(reason.into_error(method)),
                }
            }
            // A call that a worker's death would run again runs in full, and
            // so does one that must wait for a connection.
            Inner::Source(_) if options.idempotent => full(payload),
            Inner::Source(source) => {
                let Some(connection) = source
                    .ready()
                    .filter(|up| up.direct().is_some() && !up.is_closed())
                else {
                    return full(payload);
                };
                let shared = connection.direct().expect("checked above");
                let id = match send_once(shared, method, &mut payload, options, waker)? {
                    Start::Sent(call) => call.into_id(),
                    // A connection that closed before its source noticed:
                    // the full path waits for the next.
                    Start::Wait | Start::Closed(_) => return full(payload),
                };
                Ok(CallState::SentOn {
                    connection,
                    id,
                    method,
                    channel: self,
                    options,
                })
            }
        }
    }

    /// One attempt, bounded by its timeout; `dead` learns which connection
    /// it ran on.
    pub(super) async fn attempt(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
        attempt: u32,
        info: Option<&CallInfo>,
        dead: &mut Option<Channel>,
    ) -> Result<Payload, Error> {
        // Read when the attempt runs: after the middleware set them.
        let trace = options.trace_sent(info);
        let metadata = options.metadata_sent(info);
        let due = due(options.timeout);
        let sent = Attempt {
            method,
            timeout: options.timeout,
            number: attempt,
            trace,
            kind: Kind::Unary { due },
            metadata: &metadata,
            response_metadata: options.response_metadata.as_ref(),
        };
        let source = match &self.inner {
            Inner::Direct(handle) => {
                let sent = send(&handle.shared, sent, payload);
                return sent.await.map_err(|error| match error {
                    SendError::Undelivered { reason, .. } => reason.into_error(method),
                    SendError::Failed(error) => error,
                });
            }
            Inner::Source(source) => source,
        };
        // A request that never reached a worker goes to the next one, within
        // the attempt's deadline, however idempotent its method.
        let mut payload = payload;
        loop {
            let channel = until(
                method,
                options.timeout,
                due,
                source.current(method, dead.as_ref()),
            )
            .await?;
            // The connection this attempt runs on, held while it runs.
            let Some(shared) = channel.direct().map(Arc::clone) else {
                // A supervisor only ever holds direct channels.
                return Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                });
            };
            *dead = Some(channel);
            match send(&shared, sent, payload).await {
                Ok(answer) => return Ok(answer),
                Err(SendError::Failed(error)) => return Err(error),
                Err(SendError::Undelivered { payload: back, .. }) => {
                    tracing::debug!(%method, "the worker ended before the request left; sending it to the next");
                    payload = back;
                }
            }
        }
    }
}
