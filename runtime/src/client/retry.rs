//! Retries: a call's attempts, again after a retryable error (idempotent
//! methods, with backoff) or after the worker died under it (on a channel
//! that can give the next connection).

use crate::error::Error;
use crate::middleware::Next;
use crate::name::MethodName;
use crate::payload::Payload;

use super::channel::{Channel, Inner, check_method_name};
use super::options::Resolved;

/// How many times an idempotent call is run again on a restarted worker.
pub(super) const MAX_CRASH_RETRIES: u32 = 5;

impl Channel {
    /// [`call`](Channel::call), every step of it.
    pub(super) async fn call_full(
        &self,
        method: &MethodName,
        payload: Payload,
        options: &Resolved,
    ) -> Result<Payload, Error> {
        check_method_name(method)?;
        // A call that runs once gives its payload to that attempt instead of
        // keeping a copy for the next one; one that may run again keeps its
        // message shared by its attempts rather than copied for each.
        let once =
            options.retries == 0 && !(options.idempotent && matches!(self.inner, Inner::Source(_)));
        let mut payload = if once { payload } else { payload.into_shared() };
        let mut attempt = options.first_attempt;
        // Attempts made so far by this channel: what the retry budget counts.
        let mut tries = 1;
        // The connection that died under the previous attempt: a supervised
        // retry waits for its replacement.
        let mut dead: Option<Channel> = None;
        let mut crash_retries = 0;
        loop {
            let this = if once {
                std::mem::take(&mut payload)
            } else {
                payload.clone()
            };
            let result = match &self.middleware {
                None => {
                    self.attempt(method, this, options, attempt, None, &mut dead)
                        .await
                }
                Some(chain) => {
                    let info = options.call_info(method, attempt, self.driver(), this.len());
                    let endpoint =
                        self.attempt(method, this, options, attempt, Some(&info), &mut dead);
                    Next::new(chain, &info, Box::pin(endpoint)).run().await
                }
            };
            match result {
                // A supervised worker died under an idempotent call: run it on
                // the replacement (bounded; the supervisor's intensity limits
                // restarts anyway).
                Err(Error::WorkerExited { .. } | Error::Disconnected { .. })
                    if matches!(self.inner, Inner::Source(_))
                        && options.idempotent
                        && crash_retries < MAX_CRASH_RETRIES
                        && !self.is_closed() =>
                {
                    crash_retries += 1;
                    attempt += 1;
                    tries += 1;
                    tracing::debug!(%method, attempt, "retrying on the restarted worker");
                }
                Err(error)
                    if tries <= options.retries && error.is_retryable() && !self.is_closed() =>
                {
                    tracing::debug!(%method, attempt, %error, "retrying");
                    tokio::time::sleep(options.backoff.delay(tries)).await;
                    attempt += 1;
                    tries += 1;
                    dead = None;
                }
                other => return other,
            }
        }
    }
}
