//! Control exchanges: `$workerbus.*` calls the runtime answers itself, a
//! health report for any driver, the rest by the connection's [`Control`].

use std::future::Future;
use std::task::Poll;

use bytes::Bytes;
use prost::Message;

use crate::control::{self, Health};
use crate::error::{FrameError, Status};
use crate::frame::Frame;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::transport::Transport;

use super::dispatch::{Call, Dispatch};
use super::serve::{Ending, Server};
use super::state::lock;

/// How long past its deadline a running call must be to count as stalled:
/// its task has not yielded since, so the deadline could not drop it.
pub(super) const STALL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl<S, T, F, D> Server<'_, S, T, F, D>
where
    S: Dispatch,
    T: Transport,
    F: Future<Output = Result<Payload, Status>> + Send + 'static,
    D: Fn(&S, Call) -> F + Copy,
{
    /// What a health check reports: see [`HealthReport`](crate::HealthReport).
    pub(super) fn health(&self) -> Health {
        let now = tokio::time::Instant::now();
        let state = lock(&self.shared);
        let stalled = state
            .running
            .values()
            .filter(|entry| {
                entry
                    .deadline
                    .is_some_and(|deadline| now > deadline + STALL_GRACE)
            })
            .count()
            + state
                .aborted
                .values()
                .filter(|&&since| now > since + STALL_GRACE)
                .count();
        Health {
            memory_bytes: control::resident_memory().unwrap_or(0),
            processed: self
                .shared
                .processed
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            running: u32::try_from(state.running.len()).unwrap_or(u32::MAX),
            stalled: u32::try_from(stalled).unwrap_or(u32::MAX),
        }
    }

    /// Writes the refusal of a peer that failed the handshake, then ends the
    /// connection: nothing else from that peer is read.
    pub(super) fn poll_refusal(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Ending, FrameError>> {
        match self.poll_write(cx)? {
            Poll::Ready(()) => Poll::Ready(Err(FrameError::Refused {
                reason: self.refused.take().unwrap_or_default(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Answers a control exchange at once, from the runtime.
    pub(super) fn control_exchange(
        &mut self,
        id: u64,
        method: &MethodName,
        payload: Bytes,
    ) -> Frame {
        if method == control::HEALTH {
            // Every worker, thread or process, answers a health check.
            return Frame::Response {
                id,
                payload: Bytes::from(self.health().encode_to_vec()).into(),
            };
        }
        let Some(control) = self.control else {
            return Frame::Status {
                id,
                status: Status::unimplemented(format!(
                    "{method}: this worker has no control exchanges"
                )),
            };
        };
        if control.greeting() == Some(method.as_str()) {
            return match control.greet(payload) {
                Ok(payload) => {
                    self.greeted = true;
                    Frame::Response {
                        id,
                        payload: payload.into(),
                    }
                }
                Err(status) => {
                    self.refused = Some(status.to_string());
                    Frame::Status { id, status }
                }
            };
        }
        match control.exchange(method.as_str(), payload) {
            Ok(payload) => Frame::Response {
                id,
                payload: payload.into(),
            },
            Err(status) => Frame::Status { id, status },
        }
    }
}
