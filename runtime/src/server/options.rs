//! [`ServeOptions`]: the serve loop's limits, and the defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, MIN_FRAME_LENGTH};
use crate::middleware::{ServerMiddleware, WorkerChain, append};
use crate::window::Window;

/// The default cap on calls a worker runs at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// The default cap on calls waiting for a free slot.
pub const DEFAULT_MAX_QUEUED_CALLS: usize = 1024;

/// The default limit on the frames a process worker reads from a peer that
/// has not completed the handshake: 4 KiB, room for any greeting (a host's
/// is about 100 bytes).
pub const DEFAULT_MAX_GREETING_FRAME_LENGTH: usize = 4 * 1024;

/// The default time a peer of a process worker's named socket has to
/// complete the handshake before the worker closes its connection.
pub const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of connections to a process worker's named socket
/// that may wait, at once, to complete the handshake.
pub const DEFAULT_MAX_UNGREETED_CONNECTIONS: usize = 64;

/// Options of a worker's serve loop.
///
/// Besides the serve loop's own limits, a process worker applies three to
/// peers that have not yet completed the handshake (proved that they know
/// the worker's secret): the largest frame it reads from them, and, on its
/// named socket, how long and how many of them may wait.
///
/// ```no_run
/// use std::time::Duration;
/// use workerbus::{Dispatch, ServeOptions};
///
/// async fn worker_main(server: impl Dispatch) -> Result<(), workerbus::Error> {
///     let options = ServeOptions::new()
///         .max_concurrent_calls(64)
///         .max_greeting_frame_length(1024)
///         .greeting_timeout(Duration::from_secs(2))
///         .max_ungreeted_connections(16);
///     workerbus::serve_with_options(server, options).await
/// }
/// ```
#[derive(Clone)]
pub struct ServeOptions {
    pub(super) max_concurrent_calls: usize,
    pub(super) max_queued_calls: usize,
    pub(super) max_frame_length: usize,
    pub(super) window: Window,
    pub(super) max_greeting_frame_length: usize,
    pub(super) greeting_timeout: Duration,
    pub(super) max_ungreeted_connections: usize,
    pub(super) shared_memory_from: Option<usize>,
    pub(super) middleware: WorkerChain,
    /// The driver serving, as middleware sees it.
    pub(super) driver: &'static str,
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("max_queued_calls", &self.max_queued_calls)
            .field("max_frame_length", &self.max_frame_length)
            .field("window", &self.window)
            .field("max_greeting_frame_length", &self.max_greeting_frame_length)
            .field("greeting_timeout", &self.greeting_timeout)
            .field("max_ungreeted_connections", &self.max_ungreeted_connections)
            .field("shared_memory_from", &self.shared_memory_from)
            .field(
                "middleware",
                &self.middleware.as_ref().map_or(0, |chain| chain.len()),
            )
            .finish()
    }
}

impl ServeOptions {
    /// The defaults: [1024](DEFAULT_MAX_CONCURRENT_CALLS) concurrent calls,
    /// [1024](DEFAULT_MAX_QUEUED_CALLS) waiting, a
    /// [16 MiB](DEFAULT_MAX_FRAME_LENGTH) maximum frame length; before the
    /// handshake, frames of at most [4 KiB](DEFAULT_MAX_GREETING_FRAME_LENGTH),
    /// [10 s](DEFAULT_GREETING_TIMEOUT) to greet and
    /// [64](DEFAULT_MAX_UNGREETED_CONNECTIONS) connections waiting to.
    pub fn new() -> ServeOptions {
        ServeOptions::default()
    }

    /// How many calls run at once (at least 1). Further requests wait for a
    /// free slot in arrival order; see
    /// [`max_queued_calls`](ServeOptions::max_queued_calls).
    #[must_use]
    pub fn max_concurrent_calls(mut self, max: usize) -> ServeOptions {
        self.max_concurrent_calls = max.max(1);
        self
    }

    /// How many calls may wait for a free slot. A request beyond that is
    /// answered at once with `Unavailable` ("the worker is busy"), which an
    /// idempotent call retries after its backoff; so a flood is shed instead
    /// of filling the worker's memory, and cancellations are still read.
    #[must_use]
    pub fn max_queued_calls(mut self, max: usize) -> ServeOptions {
        self.max_queued_calls = max;
        self
    }

    /// The largest frame the worker sends (at least
    /// [`MIN_FRAME_LENGTH`](crate::MIN_FRAME_LENGTH)); a larger response or
    /// status is replaced by a `ResourceExhausted` status that says so.
    #[must_use]
    pub fn max_frame_length(mut self, max: usize) -> ServeOptions {
        self.max_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }

    /// Over a process worker's socket, payloads of at least `from` bytes
    /// (at least [4 KiB](crate::MIN_SHARED_MEMORY_FROM)) cross in a sealed
    /// memory file, handed over with the frame, rather than through the
    /// socket, and the host may send its requests so: on Linux, where the
    /// host turns it on too
    /// ([`ChannelOptions::shared_memory_from`](crate::ChannelOptions::shared_memory_from),
    /// which says why it is off by default); otherwise every payload goes
    /// through the socket. `None`, the default, sends none that way and
    /// takes none from the host. Other transports ignore it.
    ///
    /// ```
    /// use workerbus::ServeOptions;
    ///
    /// // Answers of 1 MiB or more in shared memory, if the host takes them.
    /// let options = ServeOptions::new().shared_memory_from(Some(1 << 20));
    /// ```
    #[must_use]
    pub fn shared_memory_from(mut self, from: Option<usize>) -> ServeOptions {
        self.shared_memory_from = from.map(|from| from.max(crate::frame::MIN_SHARED_MEMORY_FROM));
        self
    }

    /// The window the worker grants each request stream (default
    /// [`Window::DEFAULT`]: 32 messages and 4 MiB): what it holds at most,
    /// unread by the handler, plus one message.
    #[must_use]
    pub fn window(mut self, window: Window) -> ServeOptions {
        self.window = window;
        self
    }

    /// The largest frame a process worker reads from a peer that has not
    /// completed the handshake (at least
    /// [`MIN_FRAME_LENGTH`](crate::MIN_FRAME_LENGTH), at most the
    /// [maximum frame length](ServeOptions::max_frame_length)). Such a peer
    /// may send nothing but its greeting, and until it has been accepted the
    /// worker reserves no memory ahead of the bytes that arrive: a peer that
    /// has not proved it knows the secret cannot make the worker allocate
    /// what it announces. A longer frame closes the connection with
    /// [`FrameError::GreetingTooLong`](crate::FrameError::GreetingTooLong).
    #[must_use]
    pub fn max_greeting_frame_length(mut self, max: usize) -> ServeOptions {
        self.max_greeting_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }

    /// How long a peer of a process worker's named socket has, from the
    /// moment the worker accepts its connection, to complete the handshake;
    /// the worker then closes a connection that has not. (The host that
    /// started the worker, on the socket it was born with, has no such
    /// limit.)
    #[must_use]
    pub fn greeting_timeout(mut self, timeout: Duration) -> ServeOptions {
        self.greeting_timeout = timeout;
        self
    }

    /// How many connections to a process worker's named socket may wait to
    /// complete the handshake at once (at least 1). A connection beyond that
    /// closes the oldest that waits, so that peers holding connections open
    /// without greeting cannot keep a host out: a host greets as soon as it
    /// connects.
    #[must_use]
    pub fn max_ungreeted_connections(mut self, max: usize) -> ServeOptions {
        self.max_ungreeted_connections = max.max(1);
        self
    }
}

#[cfg(feature = "process")]
impl ServeOptions {
    pub(crate) fn max_frame_length_value(&self) -> usize {
        self.max_frame_length
    }

    /// The largest frame read from a peer before its greeting is accepted.
    pub(crate) fn greeting_frame_length_value(&self) -> usize {
        self.max_greeting_frame_length.min(self.max_frame_length)
    }

    #[cfg(feature = "process")]
    pub(crate) fn shared_memory_from_value(&self) -> Option<usize> {
        self.shared_memory_from
    }

    pub(crate) fn greeting_timeout_value(&self) -> Duration {
        self.greeting_timeout
    }

    pub(crate) fn max_ungreeted_connections_value(&self) -> usize {
        self.max_ungreeted_connections
    }
}

impl ServeOptions {
    /// Adds a middleware around every handler; the first added is the
    /// outermost.
    #[must_use]
    pub fn middleware(mut self, middleware: impl ServerMiddleware) -> ServeOptions {
        self.middleware = append(&self.middleware, Arc::new(middleware));
        self
    }

    #[cfg(any(feature = "thread", feature = "process"))]
    pub(crate) fn driver(mut self, driver: &'static str) -> ServeOptions {
        self.driver = driver;
        self
    }
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            max_queued_calls: DEFAULT_MAX_QUEUED_CALLS,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            window: Window::DEFAULT,
            max_greeting_frame_length: DEFAULT_MAX_GREETING_FRAME_LENGTH,
            greeting_timeout: DEFAULT_GREETING_TIMEOUT,
            max_ungreeted_connections: DEFAULT_MAX_UNGREETED_CONNECTIONS,
            shared_memory_from: None,
            middleware: None,
            driver: "transport",
        }
    }
}
