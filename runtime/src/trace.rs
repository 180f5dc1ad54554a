//! [`TraceContext`]: the identity of a call tree, carried in `REQUEST`
//! frames so that a worker's spans (and its own calls to sub-workers) can be
//! joined to the host's, across threads and processes.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU64;

tokio::task_local! {
    /// The context of the call a worker's handler is serving.
    static CURRENT: TraceContext;
}

/// Where a call sits in a call tree: the tree's trace id and the id of the
/// span that made the call.
///
/// The [`Logging`](crate::Logging) middleware starts a trace on the host (or
/// continues the one its task already belongs to), sends it with each
/// request, and continues it in the worker, so a call made by a handler
/// carries the same trace id one level down.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id's high and low halves: two `u64`s rather than a `u128`,
    /// whose 16-byte alignment would grow every frame and call that carries
    /// a context.
    trace_id: [u64; 2],
    /// Never 0 (an invalid span id in W3C trace context), which also lets
    /// an `Option<TraceContext>` take no more room than a context.
    span_id: NonZeroU64,
}

impl TraceContext {
    /// A context with these ids, or `None` if the span id is 0, which W3C
    /// trace context holds invalid.
    ///
    /// ```
    /// use workerbus::TraceContext;
    ///
    /// let context = TraceContext::from_parts(7, 3).unwrap();
    /// assert_eq!((context.trace_id(), context.span_id()), (7, 3));
    /// assert_eq!(TraceContext::from_parts(7, 0), None);
    /// ```
    pub const fn from_parts(trace_id: u128, span_id: u64) -> Option<TraceContext> {
        match NonZeroU64::new(span_id) {
            Some(span_id) => Some(TraceContext {
                trace_id: [(trace_id >> 64) as u64, trace_id as u64],
                span_id,
            }),
            None => None,
        }
    }

    /// The first span of a new trace.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: [random(), random()],
            span_id: random_span(),
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_span(),
        }
    }

    /// The trace's id, shared by every span of the call tree.
    pub fn trace_id(&self) -> u128 {
        (u128::from(self.trace_id[0]) << 64) | u128::from(self.trace_id[1])
    }

    /// This span's id.
    pub fn span_id(&self) -> u64 {
        self.span_id.get()
    }

    /// The context of the call the current task is serving, if it is a
    /// worker's handler run under [`Logging`](crate::Logging).
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(|current| *current).ok()
    }

    /// Runs `future` with this context as the current one.
    pub(crate) async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TraceContext({:032x}/{:016x})",
            self.trace_id(),
            self.span_id
        )
    }
}

/// A random u64: every `RandomState` is freshly keyed.
/// A random span id, never 0.
fn random_span() -> NonZeroU64 {
    NonZeroU64::new(random()).unwrap_or(NonZeroU64::MIN)
}

fn random() -> u64 {
    RandomState::new().hash_one(0u8)
}
