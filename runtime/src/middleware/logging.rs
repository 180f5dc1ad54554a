//! [`Logging`]: a `tracing` span per call on each side, joined across the
//! boundary by the trace context carried in the request.

use std::time::Instant;

use tracing::Instrument;

use super::{CallInfo, Middleware, Next, ServerMiddleware, ServerNext};
use crate::error::{Error, Status};
use crate::payload::Payload;
use crate::trace::TraceContext;

/// Logs every call through `tracing`: a `workerbus.call` span per call on
/// each side (fields `side`, `method`, `attempt`, `request_id` on the worker,
/// `trace_id`, `span_id`, `parent_id`, and, when it ends, `outcome` and
/// `duration_us`), and an event when it ends (`debug` on success, `warn` on
/// failure).
///
/// Install it on both sides: the host's span sends its trace context with
/// the request, the worker's span takes the host's as its parent, and a call
/// the handler makes to a sub-worker continues the same trace. Spans from
/// separate processes join on `trace_id`, `span_id` and `parent_id`.
///
/// ```no_run
/// # use workerbus::{Channel, Logging, ServeOptions};
/// # fn setup(channel: Channel) {
/// let channel = channel.with_middleware(Logging::new()); // host
/// let options = ServeOptions::new().middleware(Logging::new()); // worker
/// # let _ = (channel, options);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Logging {
    _private: (),
}

impl Logging {
    /// The logging middleware.
    pub fn new() -> Logging {
        Logging::default()
    }
}

fn hex(trace: &TraceContext) -> String {
    format!("{:032x}", trace.trace_id())
}

impl Middleware for Logging {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
        // A call continues the trace its options name, or inside a handler
        // that handler's.
        let parent = call.trace().or_else(TraceContext::current);
        let context = parent.map_or_else(TraceContext::new_root, |parent| parent.child());
        call.set_trace(context);
        let span = tracing::info_span!(
            "workerbus.call",
            side = "host",
            method = call.method(),
            attempt = call.attempt(),
            driver = call.driver(),
            trace_id = %hex(&context),
            span_id = context.span_id(),
            parent_id = parent.map(|parent| parent.span_id()),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = next.run().instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(error) => outcome_of(error),
        };
        span.record("outcome", outcome.as_str());
        span.record("duration_us", elapsed.as_micros() as u64);
        span.in_scope(|| match &result {
            Ok(response) => tracing::debug!(response_len = response.len(), "call ended"),
            Err(error) => tracing::warn!(%error, "call failed"),
        });
        result
    }
}

impl ServerMiddleware for Logging {
    async fn handle(&self, call: &CallInfo, next: ServerNext<'_>) -> Result<Payload, Status> {
        let caller = call.trace();
        let context = caller.map_or_else(TraceContext::new_root, |caller| caller.child());
        let span = tracing::info_span!(
            "workerbus.call",
            side = "worker",
            method = call.method(),
            attempt = call.attempt(),
            request_id = call.request_id(),
            trace_id = %hex(&context),
            span_id = context.span_id(),
            parent_id = caller.map(|caller| caller.span_id()),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = context.scope(next.run()).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(status) => status.code().to_string(),
        };
        span.record("outcome", outcome.as_str());
        span.record("duration_us", started.elapsed().as_micros() as u64);
        span.in_scope(|| match &result {
            Ok(response) => tracing::debug!(response_len = response.len(), "call handled"),
            Err(status) => tracing::warn!(%status, "call failed"),
        });
        result
    }
}

/// A short name for how a call failed, for logs and metrics.
pub(crate) fn outcome_of(error: &Error) -> String {
    match error {
        Error::Timeout { .. } => "timeout".into(),
        Error::Remote { status, .. } => status.code().to_string(),
        Error::WorkerExited { .. } => "worker exited".into(),
        Error::Disconnected { .. } => "disconnected".into(),
        Error::Unavailable { .. } => "unavailable".into(),
        Error::Cancelled { .. } => "cancelled".into(),
        Error::TooLarge { .. } => "too large".into(),
        Error::Decode { .. } => "decode".into(),
        _ => "error".into(),
    }
}
