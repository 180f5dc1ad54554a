//! Options of calls and channels: [`CallOptions`] and their fallback order
//! (call, client, schema, library), and [`ChannelOptions`].

use std::time::Duration;

use crate::backoff::Backoff;
use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, MIN_FRAME_LENGTH};
use crate::metadata::{Metadata, ResponseMetadata};
use crate::middleware::CallInfo;
use crate::name::MethodName;
use crate::trace::TraceContext;
use crate::window::Window;

/// The timeout of a call when neither the caller nor the schema sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for one call, a client, or every call through a client.
///
/// Unset fields fall back, in order, to the client's options, the method's
/// defaults from the schema (`timeout_ms`, `retries`, `idempotent` in
/// `workerbus/options.proto`), and the library defaults: a
/// [30 s timeout](DEFAULT_TIMEOUT), no retries, [`Backoff::default`].
///
/// Retries apply only to idempotent methods, and only to errors for which
/// [`Error::is_retryable`](crate::Error::is_retryable) holds. The timeout applies to each attempt.
///
/// ```
/// use std::time::Duration;
/// use workerbus::CallOptions;
///
/// let options = CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .retries(3);
/// assert_eq!(options.get_timeout(), Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallOptions {
    pub(super) timeout: Option<Duration>,
    pub(super) retries: Option<u32>,
    pub(super) backoff: Option<Backoff>,
    pub(super) idempotent: Option<bool>,
    pub(super) metadata: Metadata,
    pub(super) response_metadata: Option<ResponseMetadata>,
    pub(super) trace: Option<TraceContext>,
    pub(super) attempt: Option<u32>,
}

impl CallOptions {
    /// Options that set nothing: every field falls back.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// How long to wait for each attempt's answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Wait for the answer however long it takes. The call still ends if the
    /// worker exits or the connection is lost.
    #[must_use]
    pub fn no_timeout(mut self) -> CallOptions {
        self.timeout = Some(Duration::MAX);
        self
    }

    /// How many times to retry after the first attempt (idempotent methods only).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> CallOptions {
        self.retries = Some(retries);
        self
    }

    /// The delays between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> CallOptions {
        self.backoff = Some(backoff);
        self
    }

    /// Declares that calling the method more than once is safe, overriding the
    /// schema's `idempotent` option, so that retries apply.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> CallOptions {
        self.idempotent = Some(idempotent);
        self
    }

    /// Metadata sent with the call, read by the handler in
    /// [`Context::metadata`](crate::Context::metadata) and by middleware on
    /// both sides in [`CallInfo::metadata`](crate::CallInfo::metadata). It
    /// follows the entries of the channel's
    /// ([`ChannelOptions::metadata`]) and of the client's options, and is
    /// sent again with each retry. A call whose metadata (all of it, with
    /// what middleware adds) is over [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN)
    /// bytes fails with [`Error::TooLarge`](crate::Error::TooLarge) naming
    /// the key that passes the limit, before anything is sent.
    ///
    /// ```
    /// use workerbus::{CallOptions, Metadata};
    ///
    /// let options = CallOptions::new().metadata(Metadata::new().with("tenant", "acme")?);
    /// assert_eq!(options.get_metadata().get_str("tenant"), Some("acme"));
    /// # Ok::<(), workerbus::Error>(())
    /// ```
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> CallOptions {
        self.metadata = metadata;
        self
    }

    /// Where to put the metadata the handler answers with
    /// ([`Context::set_response_metadata`](crate::Context::set_response_metadata)),
    /// to read once the call has ended, with a response or an error.
    #[must_use]
    pub fn response_metadata(mut self, into: &ResponseMetadata) -> CallOptions {
        self.response_metadata = Some(into.clone());
        self
    }

    /// Which attempt of its caller's this call is: its first attempt
    /// carries `attempt` (at least 1; by default 1) as its attempt number,
    /// and retries count on from there. For a program that forwards calls it
    /// receives from elsewhere, e.g. a gRPC server reading
    /// `grpc-previous-rpc-attempts`, so the handler's
    /// [`Context::attempt`](crate::Context::attempt) is the caller's. The
    /// number of retries is unchanged by it.
    ///
    /// ```
    /// use workerbus::CallOptions;
    ///
    /// let options = CallOptions::new().attempt(3);
    /// assert_eq!(options.get_attempt(), Some(3));
    /// ```
    #[must_use]
    pub fn attempt(mut self, attempt: u32) -> CallOptions {
        self.attempt = Some(attempt.max(1));
        self
    }

    /// The attempt number set with [`attempt`](CallOptions::attempt).
    pub fn get_attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// The trace this call continues: its `REQUEST` carries `trace` as the
    /// calling span (so the handler's `Context::trace` is `trace`), and a
    /// [`Logging`](crate::Logging) middleware on the channel makes its span
    /// a child of it. For a program that receives a trace context from
    /// elsewhere (a gateway reading a W3C `traceparent`); inside a handler,
    /// `Logging` continues the handler's trace without it.
    ///
    /// ```
    /// use workerbus::{CallOptions, TraceContext};
    ///
    /// let remote = TraceContext::from_parts(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7)
    ///     .expect("a span id is never zero");
    /// let options = CallOptions::new().trace(remote);
    /// assert_eq!(options.get_trace(), Some(remote));
    /// ```
    #[must_use]
    pub fn trace(mut self, trace: TraceContext) -> CallOptions {
        self.trace = Some(trace);
        self
    }

    /// The trace set here, if any.
    pub fn get_trace(&self) -> Option<TraceContext> {
        self.trace
    }

    /// The metadata set here.
    pub fn get_metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The timeout set here, if any (`Duration::MAX` means none).
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry count set here, if any.
    pub fn get_retries(&self) -> Option<u32> {
        self.retries
    }

    /// The backoff set here, if any.
    pub fn get_backoff(&self) -> Option<Backoff> {
        self.backoff
    }

    /// The idempotency override set here, if any.
    pub fn get_idempotent(&self) -> Option<bool> {
        self.idempotent
    }

    /// Whether these options set nothing, so that every setting falls back.
    pub(crate) fn is_unset(&self) -> bool {
        self.timeout.is_none()
            && self.retries.is_none()
            && self.backoff.is_none()
            && self.idempotent.is_none()
            && self.metadata.is_empty()
            && self.response_metadata.is_none()
            && self.trace.is_none()
            && self.attempt.is_none()
    }

    /// The per-call settings after falling back through `layers` (most
    /// specific first) to the method's schema defaults and the library's.
    pub(crate) fn resolve(layers: [Option<&CallOptions>; 2], method: &MethodDefaults) -> Resolved {
        // Most calls set nothing: their settings are the method's.
        let layers = layers.map(|layer| layer.filter(|options| !options.is_unset()));
        if matches!(layers, [None, None]) {
            return Resolved::of(method);
        }
        let pick =
            |f: fn(&CallOptions) -> Option<Duration>| layers.iter().flatten().find_map(|o| f(o));
        let timeout = pick(|o| o.timeout)
            .or(method.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let idempotent = layers
            .iter()
            .flatten()
            .find_map(|o| o.idempotent)
            .unwrap_or(method.idempotent);
        let retries = layers
            .iter()
            .flatten()
            .find_map(|o| o.retries)
            .or(method.retries)
            .unwrap_or(0);
        let backoff = layers
            .iter()
            .flatten()
            .find_map(|o| o.backoff)
            .unwrap_or_default();
        // The least specific first: the client's entries, then the call's.
        let metadata = match layers {
            [Some(call), Some(client)] if client.metadata.is_empty() => call.metadata.clone(),
            [Some(call), Some(client)] => client.metadata.joined(&call.metadata),
            [Some(only), None] | [None, Some(only)] => only.metadata.clone(),
            [None, None] => Metadata::new(),
        };
        let response_metadata = layers
            .iter()
            .flatten()
            .find_map(|o| o.response_metadata.as_ref())
            .cloned();
        let trace = layers.iter().flatten().find_map(|o| o.trace);
        let first_attempt = layers.iter().flatten().find_map(|o| o.attempt).unwrap_or(1);
        Resolved {
            timeout: (timeout != Duration::MAX).then_some(timeout),
            retries: if idempotent { retries } else { 0 },
            backoff,
            idempotent,
            metadata,
            response_metadata,
            trace,
            first_attempt,
        }
    }
}

/// A method's call defaults, as declared in its schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodDefaults {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<u32>,
    pub(crate) idempotent: bool,
}

/// Call settings with every fallback applied.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    /// Whether running the call twice is safe: then a call interrupted by a
    /// supervised worker's crash runs again on its replacement.
    pub(crate) idempotent: bool,
    /// The client's and the call's metadata.
    pub(crate) metadata: Metadata,
    pub(crate) response_metadata: Option<ResponseMetadata>,
    /// The trace the call continues, if its options name one.
    pub(crate) trace: Option<TraceContext>,
    /// The number of the call's first attempt.
    pub(crate) first_attempt: u32,
}

impl Resolved {
    /// The settings of a call whose options set nothing: the method's
    /// schema defaults, else the library's.
    /// (A constant function, so that a method's can be worked out once, at
    /// compile time.)
    pub(crate) const fn of(method: &MethodDefaults) -> Resolved {
        let timeout = match method.timeout {
            Some(timeout)
                if timeout.as_secs() == u64::MAX && timeout.subsec_nanos() == 999_999_999 =>
            {
                None
            }
            Some(timeout) => Some(timeout),
            None => Some(DEFAULT_TIMEOUT),
        };
        Resolved {
            timeout,
            retries: match method.retries {
                Some(retries) if method.idempotent => retries,
                _ => 0,
            },
            backoff: Backoff::DEFAULT,
            idempotent: method.idempotent,
            metadata: Metadata::new(),
            response_metadata: None,
            trace: None,
            first_attempt: 1,
        }
    }

    /// A control exchange's settings: one attempt within `timeout`, nothing
    /// else.
    pub(crate) fn control(timeout: Duration) -> Resolved {
        Resolved {
            timeout: Some(timeout),
            retries: 0,
            backoff: Backoff::default(),
            idempotent: false,
            metadata: Metadata::new(),
            response_metadata: None,
            trace: None,
            first_attempt: 1,
        }
    }

    /// What a host middleware knows of attempt `attempt` of a call of
    /// `method` with these settings.
    pub(crate) fn call_info(
        &self,
        method: &MethodName,
        attempt: u32,
        driver: &'static str,
        request_len: usize,
    ) -> CallInfo {
        CallInfo::host(
            method,
            attempt,
            self.timeout,
            driver,
            request_len,
            self.metadata.clone(),
            self.trace,
        )
    }

    /// The metadata an attempt sends: as its middleware left it, if it ran
    /// under middleware, else as the options set it.
    pub(crate) fn metadata_sent(&self, info: Option<&CallInfo>) -> Metadata {
        match info {
            Some(info) => info.metadata(),
            None => self.metadata.clone(),
        }
    }

    /// The trace an attempt sends: as its middleware left it, if it ran
    /// under middleware, else as the options set it.
    pub(crate) fn trace_sent(&self, info: Option<&CallInfo>) -> Option<TraceContext> {
        match info {
            Some(info) => info.trace(),
            None => self.trace,
        }
    }
}

/// Options of a [`Channel`](crate::Channel).
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    pub(super) max_frame_length: usize,
    pub(super) max_in_flight: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) window: Window,
    pub(super) metadata: Metadata,
    pub(super) shared_memory_from: Option<usize>,
}

/// The default cap on calls in flight on one channel.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// The default cap on request bytes queued for a worker that is not reading.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

impl ChannelOptions {
    /// The defaults: a [16 MiB](DEFAULT_MAX_FRAME_LENGTH) maximum frame
    /// length, [10,000](DEFAULT_MAX_IN_FLIGHT) calls in flight and
    /// [64 MiB](DEFAULT_MAX_QUEUED_BYTES) of requests queued.
    pub fn new() -> ChannelOptions {
        ChannelOptions::default()
    }

    /// The largest frame the channel sends (at least
    /// [`MIN_FRAME_LENGTH`]); a larger request fails with
    /// [`Error::TooLarge`](crate::Error::TooLarge) before anything is sent. Match the worker's limit.
    #[must_use]
    pub fn max_frame_length(mut self, max: usize) -> ChannelOptions {
        self.max_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }
}

impl ChannelOptions {
    /// How many calls may be in flight at once (at least 1). A call beyond
    /// that waits, within its timeout, for one to end.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> ChannelOptions {
        self.max_in_flight = max.max(1);
        self
    }

    /// How many bytes of requests may wait for a worker that is slow to read
    /// them. A call beyond that waits, within its timeout, for the worker to
    /// catch up: the host never buffers without bound. A single request
    /// larger than this is still sent, alone.
    #[must_use]
    pub fn max_queued_bytes(mut self, max: usize) -> ChannelOptions {
        self.max_queued_bytes = max;
        self
    }

    /// The window the host grants each response stream, and the worker's
    /// events on this connection (default [`Window::DEFAULT`]: 32 messages
    /// and 4 MiB): what the host holds at most, unread, of each, plus one
    /// message.
    #[must_use]
    pub fn window(mut self, window: Window) -> ChannelOptions {
        self.window = window;
        self
    }

    /// Metadata sent with every call on the channel, before the entries
    /// of the client's and the call's [`CallOptions::metadata`].
    ///
    /// ```
    /// use workerbus::{ChannelOptions, Metadata};
    ///
    /// let options = ChannelOptions::new().metadata(Metadata::new().with("host", "indexer-1")?);
    /// # Ok::<(), workerbus::Error>(())
    /// ```
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> ChannelOptions {
        self.metadata = metadata;
        self
    }

    /// Over a process worker's socket, payloads of at least `from` bytes
    /// (at least [4 KiB](crate::MIN_SHARED_MEMORY_FROM)) cross in a sealed
    /// memory file, handed over with the frame, rather than through the
    /// socket, and the worker may answer so: on Linux, where the worker
    /// turns it on too ([`ServeOptions::shared_memory_from`](crate::ServeOptions::shared_memory_from));
    /// otherwise every payload goes through the socket. `None`, the
    /// default, sends none that way and takes none from the worker. The
    /// thread driver ignores it: its messages cross as values.
    ///
    /// It is off by default because it is slower where we measured it: a
    /// fresh memory file per payload makes the kernel allocate, account
    /// and free every page of it, which costs more than copying the bytes
    /// through the socket (`docs/BENCHMARKS.md`). It pays where the
    /// receiver reads little of a large payload, or where holding it once,
    /// shared, matters more than the time.
    ///
    /// ```
    /// use workerbus::{ChannelOptions, ProcessDriver};
    ///
    /// // Every payload of 1 MiB or more in shared memory.
    /// let driver = ProcessDriver::new("target/debug/embedder")
    ///     .channel_options(ChannelOptions::new().shared_memory_from(Some(1 << 20)));
    /// ```
    #[must_use]
    pub fn shared_memory_from(mut self, from: Option<usize>) -> ChannelOptions {
        self.shared_memory_from = from.map(|from| from.max(crate::frame::MIN_SHARED_MEMORY_FROM));
        self
    }

    #[cfg(feature = "process")]
    pub(crate) fn max_frame_length_value(&self) -> usize {
        self.max_frame_length
    }

    #[cfg(feature = "process")]
    pub(crate) fn shared_memory_from_value(&self) -> Option<usize> {
        self.shared_memory_from
    }
}

impl Default for ChannelOptions {
    fn default() -> ChannelOptions {
        ChannelOptions {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            window: Window::DEFAULT,
            metadata: Metadata::new(),
            shared_memory_from: None,
        }
    }
}
