//! One-way messages: queued for the worker, never answered.

use std::time::Duration;

use crate::error::Error;
use crate::frame::Frame;
use crate::log::{self, Direction};
use crate::metadata::Metadata;
use crate::middleware::{CallInfo, Next};
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::trace::TraceContext;

use super::call::check_request_size;
use super::channel::{Channel, Inner, check_method_name};
use super::deadline::{due, until};
use super::options::Resolved;
use super::pending::{Shared, lock};
use crate::sync::wait_for;

/// Queues a one-way message on one connection, once there is room for it.
pub(super) async fn post(
    shared: &Shared,
    method: &MethodName,
    payload: Payload,
    timeout: Option<Duration>,
    trace: Option<TraceContext>,
    metadata: &Metadata,
    attempt: u32,
) -> Result<(), Error> {
    let metadata = shared.metadata_of(method, metadata);
    check_request_size(shared, method, &payload, timeout, trace, &metadata)?;
    let len = payload.len();
    // Moved into its frame once there is room: a small message's payload
    // is copied when cloned.
    let mut payload = Some(payload);
    let queued = wait_for(&shared.changed, || {
        let mut state = lock(shared);
        if let Some(reason) = &state.closed {
            return Some(Err(reason.clone().into_error(method)));
        }
        // A one-way message holds no slot in the pending table; it only
        // waits for room in the outbox.
        let full = state.queued_bytes > 0 && state.queued_bytes + len > shared.max_queued_bytes;
        if state.closing || full {
            state.waiting = true;
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.queued_bytes += len;
        let payload = payload.take().expect("a one-way message is queued once");
        let request = Frame::request(id, method.clone(), timeout, attempt, payload)
            .with_trace(trace)
            .with_kind(MethodKind::OneWay)
            .with_metadata(metadata.clone());
        log::frame(Direction::HostOut, &request, None);
        state.outbox.push_back(request);
        Some(Ok(state.link.take()))
    })
    .await?;
    if let Some(link) = queued {
        link.wake();
    }
    Ok(())
}

impl Channel {
    /// Sends `method` as a one-way message: returns once it is queued for
    /// the worker, which answers nothing. Host middleware sees it as a call
    /// answered with an empty response.
    pub(crate) async fn post(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
    ) -> Result<(), Error> {
        check_method_name(method)?;
        let result = match &self.middleware {
            None => self.post_once(method, payload, options, None).await,
            Some(chain) => {
                let info =
                    options.call_info(method, options.first_attempt, self.driver(), payload.len());
                let queued = self.post_once(method, payload, options, Some(&info));
                Next::new(chain, &info, Box::pin(queued)).run().await
            }
        };
        result.map(drop)
    }

    /// Queues a one-way message, bounded by its timeout.
    pub(super) async fn post_once(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
        info: Option<&CallInfo>,
    ) -> Result<Payload, Error> {
        // Read when this runs: after the middleware set them.
        let trace = options.trace_sent(info);
        let metadata = options.metadata_sent(info);
        let queued = async {
            let channel = match &self.inner {
                Inner::Direct(_) => self.clone(),
                Inner::Source(source) => source.current(method, None).await?,
            };
            match channel.direct() {
                Some(shared) => {
                    let attempt = options.first_attempt;
                    post(
                        shared,
                        method,
                        payload,
                        options.timeout,
                        trace,
                        &metadata,
                        attempt,
                    )
                    .await
                }
                None => Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                }),
            }
        };
        until(method, options.timeout, due(options.timeout), queued)
            .await
            .map(|()| Payload::new())
    }
}
