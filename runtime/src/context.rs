//! [`Context`]: what a handler knows about the call it serves.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::cancellation::{self, Cancellation};
use crate::event::{EventSink, Outlet};
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::sync::lock;
use crate::trace::TraceContext;

/// What a call's context reaches of the connection the call came on: the
/// events its handler sends, the metadata it answers with, and its
/// cancellation. The serve loop's connection implements it.
pub(crate) trait Connection: Outlet {
    /// The token the connection fires when it gives call `call` up, made at
    /// the first ask; `None` if the call is no longer in hand (it ended), and
    /// a token already fired once the connection has ended.
    fn cancellation(&self, call: u64) -> Option<tokio_util::sync::CancellationToken>;

    /// Sets the response metadata of `call`, if it is still in flight.
    fn set_response_metadata(&self, call: u64, metadata: Metadata);

    /// The response metadata set for `call` so far.
    fn response_metadata(&self, call: u64) -> Metadata;
}

/// What a handler knows about the call it is serving.
///
/// ```
/// use workerbus::Context;
///
/// let cx = Context::new("embedder.embed");
/// assert_eq!(cx.method(), "embedder.embed");
/// assert_eq!(cx.attempt(), 1);
/// assert!(cx.deadline().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) id: u64,
    pub(crate) method: MethodName,
    pub(crate) deadline: Option<tokio::time::Instant>,
    pub(crate) attempt: u32,
    pub(crate) trace: Option<TraceContext>,
    pub(crate) metadata: Metadata,
    /// The connection the call came on, for the events its handler sends
    /// and its response metadata.
    pub(crate) connection: Option<Weak<dyn Connection>>,
    /// A context made with [`Context::new`] keeps its response metadata
    /// here, for a handler's unit test to read.
    pub(crate) local: Option<Arc<Mutex<Metadata>>>,
}

impl Context {
    /// A context for calling a handler directly, e.g. in its unit tests:
    /// request id 0, first attempt, no deadline.
    pub fn new(method: impl Into<MethodName>) -> Context {
        Context {
            id: 0,
            method: method.into(),
            deadline: None,
            attempt: 1,
            trace: None,
            metadata: Metadata::new(),
            connection: None,
            local: Some(Arc::default()),
        }
    }

    /// Sets the request metadata.
    ///
    /// ```
    /// use workerbus::{Context, Metadata};
    ///
    /// let cx = Context::new("embedder.embed").with_metadata(Metadata::new().with("tenant", "acme")?);
    /// assert_eq!(cx.metadata().get_str("tenant"), Some("acme"));
    /// # Ok::<(), workerbus::Error>(())
    /// ```
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Context {
        self.metadata = metadata;
        self
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Context {
        self.deadline = Some(deadline.into());
        self
    }

    /// The message name of the call, e.g. `embedder.embed`.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The message name as a [`MethodName`].
    pub fn method_name(&self) -> &MethodName {
        &self.method
    }

    /// The request id, unique among the calls in flight on this connection.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// When the caller stops waiting. The handler is dropped at this instant;
    /// work that runs outside it (e.g. in `spawn_blocking`) can check it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.map(tokio::time::Instant::into_std)
    }

    pub(crate) fn tokio_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Which attempt this is: 1 for the first, 2 for the first retry...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The trace the call belongs to, and the caller's span in it, if the
    /// caller sent one (its channel has the [`Logging`](crate::Logging)
    /// middleware).
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    /// The metadata the caller sent with the call
    /// ([`CallOptions::metadata`](crate::CallOptions::metadata), after the
    /// channel's entries and with what its middleware added).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Sets the metadata the call answers with, replacing any set before;
    /// the caller reads it through
    /// [`CallOptions::response_metadata`](crate::CallOptions::response_metadata),
    /// whether the call answers with a response or an error. It is sent with
    /// the answer, so it may be set until the handler returns; set after the
    /// call was answered or cancelled, it goes nowhere. Metadata the
    /// connection cannot carry (over [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN),
    /// or over the host's maximum frame length) turns the answer into a
    /// `ResourceExhausted` status naming its size.
    ///
    /// ```
    /// use workerbus::{Context, Metadata};
    ///
    /// let cx = Context::new("search.query");
    /// cx.set_response_metadata(Metadata::new().with("index-version", "42")?);
    /// assert_eq!(cx.response_metadata().get_str("index-version"), Some("42"));
    /// # Ok::<(), workerbus::Error>(())
    /// ```
    pub fn set_response_metadata(&self, metadata: Metadata) {
        if let Some(local) = &self.local {
            *lock(local) = metadata;
        } else if let Some(connection) = self.connection.as_ref().and_then(Weak::upgrade) {
            connection.set_response_metadata(self.id, metadata);
        }
    }

    /// The response metadata set so far.
    pub fn response_metadata(&self) -> Metadata {
        if let Some(local) = &self.local {
            return lock(local).clone();
        }
        match self.connection.as_ref().and_then(Weak::upgrade) {
            Some(connection) => connection.response_metadata(self.id),
            None => Metadata::new(),
        }
    }

    /// Where the handler sends events to its host: the connection this call
    /// came on. Generated emitters (`<Service>Emitter::from_context`) wrap
    /// it; it may be kept and used after the call, for as long as the host
    /// stays connected.
    pub fn events(&self) -> EventSink {
        EventSink {
            connection: self
                .connection
                .clone()
                .map(|connection| connection as Weak<dyn Outlet>),
            call: self.id,
        }
    }

    /// The call's [`Cancellation`]: a token, cheap to clone, that fires when
    /// the call's deadline passes or the worker gives the call up (a
    /// `CANCEL`, the connection ending with the call running), for the work
    /// the handler hands off: to `tokio::spawn`, `spawn_blocking` or a
    /// thread. The handler itself needs none of it: its future is dropped
    /// when its call is cancelled, but what it spawned runs on until it
    /// looks here. Awaiting it waits for it to fire. It does not fire
    /// because the handler answered; see [`Cancellation`] for every case.
    ///
    /// Ask for it in the handler, before it answers, and move the token
    /// (not the context) into the work: a token asked for once the call has
    /// ended fires only at the deadline (at once if the connection has ended
    /// too). A call whose handler never asks
    /// costs nothing more; the first ask makes the token, and every ask of
    /// the same call gives a clone of it. Made with [`Context::new`], the
    /// token fires only at the deadline, if one was set.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use workerbus::{Context, Status};
    ///
    /// // The body of a handler: the work runs on a blocking thread, and
    /// // stops between two chunks once the caller gives up.
    /// async fn index(cx: &Context, chunks: Vec<String>) -> Result<u64, Status> {
    ///     let cancellation = cx.cancelled();
    ///     let work = tokio::task::spawn_blocking(move || {
    ///         let mut indexed = 0;
    ///         for chunk in chunks {
    ///             if cancellation.is_cancelled() {
    ///                 return None; // nobody waits for the rest
    ///             }
    ///             indexed += chunk.len() as u64; // the real work
    ///         }
    ///         Some(indexed)
    ///     });
    ///     match work.await {
    ///         Ok(Some(indexed)) => Ok(indexed),
    ///         Ok(None) => Err(Status::cancelled("given up")),
    ///         Err(error) => Err(Status::internal(error.to_string())),
    ///     }
    /// }
    /// ```
    pub fn cancelled(&self) -> Cancellation {
        let token = match &self.connection {
            None => None,
            Some(connection) => match connection.upgrade() {
                Some(outlet) => outlet.cancellation(self.id),
                // The connection is gone, and the call with it.
                None => Some(cancellation::fired()),
            },
        };
        Cancellation::new(token, self.deadline)
    }
}
