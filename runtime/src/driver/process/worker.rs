//! The worker's side of the process driver: [`serve`], the `main` of a
//! worker process.
//!
//! The worker finds its connected socket at descriptor 3 and serves it. The
//! first peer to greet it on that inherited socket sets the secret (only the
//! host that spawned it holds the other end); after a `$workerbus.detach` it
//! also listens on a named socket in a private directory, where a peer must
//! run under the same user and present the same secret. Until a peer has
//! greeted, its frames are held to the greeting's small limit, and on the
//! named socket it must greet in time and in a bounded line (`admission`).
//! Accepting pauses, with a growing delay, while the process is out of
//! descriptors or memory.
//!
//! A worker stops when its host asks it to (`SHUTDOWN`), when it receives
//! SIGTERM (which each connection takes for a `SHUTDOWN`: see
//! `terminate.rs`) or, unless detached, when its host goes away: the serve
//! loop sees the end of the connection, and a watchdog thread ends a worker
//! whose handlers are too busy to notice.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::passing::{Descriptors, Passing};
use super::socket::SocketTransport;
use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use super::admission::{Admission, Greeting, Ungreeted, accept_pause};
use super::handshake::{DETACH, Detached, HELLO, Hello, Secret, Welcome, check_hello};
use super::sys;
use super::terminate::{Stop, Stoppable};
use crate::control::{Control, PROTOCOL_VERSION};
use crate::description::ServiceInfo;
use crate::error::{Error, FrameError, Status};
use crate::frame::FrameCodec;
use crate::server::{Dispatch, Ending, ServeOptions, serve_connection};
use crate::startup::{SOCKET_DIR_ENV, StartupData};
use crate::sync::lock;

/// How long a worker whose host went away lets its serve loop stop by itself
/// before the watchdog ends the process.
const HANGUP_GRACE: Duration = Duration::from_secs(1);

/// Serves `service` as the worker process its host started; returns when the
/// host asks it to shut down or goes away.
///
/// Call it from the worker's `main`. It fails at once, with a message that
/// says so, if the program was not started by a workerbus host (see
/// [`startup_data`](crate::startup_data)).
///
/// While it serves, SIGTERM stops the worker as a host's shutdown does: its
/// named socket, if it has one, is removed, new calls are refused, and
/// `serve` returns `Ok` once the calls in flight have finished. (Tokio keeps
/// its SIGTERM handler for the life of the process: a program that goes on
/// after `serve` has returned handles SIGTERM itself.)
///
/// A worker's `main` is typically
/// `workerbus::serve(EmbedderServer::new(MyEmbedder)).await`, on a
/// single-threaded runtime (`#[tokio::main(flavor = "current_thread")]`),
/// which gives the lowest latency:
///
/// ```no_run
/// async fn worker_main(server: impl workerbus::Dispatch) -> Result<(), workerbus::Error> {
///     workerbus::serve(server).await
/// }
/// ```
pub async fn serve<S: Dispatch>(service: S) -> Result<(), Error> {
    serve_with_options(service, ServeOptions::default()).await
}

/// [`serve`] with options for the serve loop (concurrency, frame size).
pub async fn serve_with_options<S: Dispatch>(
    service: S,
    options: ServeOptions,
) -> Result<(), Error> {
    let options = options.driver("process");
    let startup = StartupData::from_env()
        .map_err(|reason| worker_error(reason, None))?
        .ok_or_else(|| {
            worker_error(
                "this program was not started by a workerbus host (WORKERBUS_WORKER is not set for it)".into(),
                None,
            )
        })?;
    let socket = sys::adopt_socket(startup.fd()).map_err(|error| {
        worker_error("cannot take the socket from the host".into(), Some(error))
    })?;
    let watched = socket
        .try_clone()
        .map_err(|error| worker_error("cannot watch the host's socket".into(), Some(error)))?;
    socket
        .set_nonblocking(true)
        .map_err(|error| worker_error("cannot use the host's socket".into(), Some(error)))?;
    let socket = UnixStream::from_std(socket)
        .map_err(|error| worker_error("cannot use the host's socket".into(), Some(error)))?;

    let service = Arc::new(service);
    let shared = Arc::new(WorkerShared {
        name: startup.name().to_owned(),
        services: service
            .schemas()
            .into_iter()
            .map(ServiceInfo::from)
            .collect(),
        options: options.clone(),
        secret: Mutex::new(None),
        detached: AtomicBool::new(false),
        serving: AtomicBool::new(true),
        address: Mutex::new(None),
        shutdown: Notify::new(),
        accept: Mutex::new(None),
        stop: Arc::default(),
        connections: AtomicUsize::new(1),
    });
    *lock(&shared.accept) = Some(accept_loop(Arc::clone(&service), Arc::clone(&shared)));
    spawn_watchdog(watched, Arc::clone(&shared));
    // Handled from now on, not from the task's first turn.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| {
            tracing::warn!(%error, "cannot handle SIGTERM: it will end the worker without its shutdown");
        })
        .ok()
        .map(|signal| tokio::spawn(stop_on_sigterm(signal, Arc::clone(&shared))));

    let greeting = Greeting::inherited();
    let socket = transport(
        SocketTransport::unix(socket, codec(&options)),
        &options,
        Arc::clone(&greeting),
    );
    let control = ConnectionControl {
        shared: Arc::clone(&shared),
        inherited: true,
        greeting,
        passing: socket.passing(),
    };
    let first = async {
        let transport = Stoppable::new(socket, Arc::clone(&shared.stop));
        let ending = serve_connection(transport, service, &options, Some(&control)).await;
        shared.connection_ended();
        ending
    };
    let result = tokio::select! {
        ending = first => match ending {
            Ok(Ending::Shutdown) => Ok(()),
            ending if shared.detached.load(Ordering::SeqCst) => {
                if let Err(error) = ending {
                    tracing::warn!(%error, "the connection to the host that detached this worker broke");
                }
                // Serve on the named socket until some host asks for a shutdown.
                shared.shutdown.notified().await;
                Ok(())
            }
            Ok(Ending::Closed) => Ok(()),
            Err(error) => Err(Error::Worker {
                reason: format!("the connection to the host broke: {error}"),
                source: None,
            }),
        },
        // A host on the named socket asked for a shutdown.
        () = shared.shutdown.notified() => Ok(()),
    };
    if let Some(terminate) = terminate {
        terminate.abort();
    }
    shared.serving.store(false, Ordering::SeqCst);
    if let Some(address) = lock(&shared.address).take() {
        remove_socket(&address);
    }
    // Lines still queued for a slow stderr (the frame log's) get a moment
    // before the program, likely, exits.
    crate::stderr::flush(FLUSH_GRACE);
    result
}

/// How long a worker that stops waits for its lines to reach stderr.
const FLUSH_GRACE: Duration = Duration::from_millis(100);

fn worker_error(reason: String, source: Option<io::Error>) -> Error {
    Error::Worker { reason, source }
}

/// The codec of a connection to the worker once its peer has greeted.
fn codec(options: &ServeOptions) -> FrameCodec {
    FrameCodec::new().max_frame_length(options.max_frame_length_value())
}

/// A connection's transport in the worker: read with the greeting's limit,
/// and no room reserved ahead of what arrives, until `greeting` is done;
/// sending large payloads in memory files if the greeting says the host
/// takes them.
fn transport<T>(
    transport: SocketTransport<T>,
    options: &ServeOptions,
    greeting: Arc<Greeting>,
) -> SocketTransport<T> {
    transport
        .until_greeted(options.greeting_frame_length_value(), greeting)
        .sharing_from(options.shared_memory_from_value())
}

type AcceptLoop = Box<dyn Fn(UnixListener) + Send + Sync>;

struct WorkerShared {
    name: String,
    services: Vec<ServiceInfo>,
    options: ServeOptions,
    /// Set by the first greeting on the inherited socket.
    secret: Mutex<Option<Secret>>,
    detached: AtomicBool,
    /// Cleared once `serve` is returning: the watchdog stands down.
    serving: AtomicBool,
    /// The named socket, once detached.
    address: Mutex<Option<PathBuf>>,
    /// Notified when a connection ends with a completed `SHUTDOWN`.
    shutdown: Notify,
    /// Starts serving the named socket; knows the service's type.
    accept: Mutex<Option<AcceptLoop>>,
    /// Set by SIGTERM: every connection then takes a `SHUTDOWN`.
    stop: Arc<Stop>,
    /// Connections being served, the inherited one included.
    connections: AtomicUsize,
}

impl WorkerShared {
    /// Counts a connection out; the last to end after a SIGTERM ends the
    /// worker (with none left, the SIGTERM does).
    fn connection_ended(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
        if self.stop.is_requested() {
            self.shutdown.notify_one();
        }
    }
}

/// Waits for SIGTERM, then stops the worker as a host's `SHUTDOWN` does:
/// its named socket goes first, so that no new peer reaches it, then every
/// connection takes a `SHUTDOWN` of its own and ends once its calls have.
async fn stop_on_sigterm(mut terminate: tokio::signal::unix::Signal, shared: Arc<WorkerShared>) {
    if terminate.recv().await.is_none() {
        return;
    }
    tracing::info!(worker = %shared.name, "SIGTERM: shutting down");
    if let Some(address) = lock(&shared.address).take() {
        remove_socket(&address);
    }
    shared.stop.request();
    if shared.connections.load(Ordering::SeqCst) == 0 {
        shared.shutdown.notify_one();
    }
}

/// The control exchanges of one connection.
struct ConnectionControl {
    shared: Arc<WorkerShared>,
    /// The socket the host gave at birth, as opposed to the named socket.
    inherited: bool,
    /// Where the connection stands with its greeting.
    greeting: Arc<Greeting>,
    /// Whether payloads cross in memory files, as the greeting settles.
    passing: Arc<Passing>,
}

impl Control for ConnectionControl {
    fn greeting(&self) -> Option<&'static str> {
        Some(HELLO)
    }

    fn greet(&self, payload: Bytes) -> Result<Bytes, Status> {
        // A greeting that does not decode is refused like a wrong one: the
        // peer is answered, then disconnected (PROTOCOL.md 9.2).
        let hello = Hello::decode(payload)
            .map_err(|error| Status::invalid_argument(format!("{HELLO}: {error}")))?;
        let welcome = self.hello(hello)?;
        Ok(Bytes::from(welcome.encode_to_vec()))
    }

    fn exchange(&self, method: &str, _payload: Bytes) -> Result<Bytes, Status> {
        match method {
            DETACH => Ok(Bytes::from(self.detach()?.encode_to_vec())),
            _ => Err(Status::unimplemented(format!(
                "{method} is not a control exchange this worker knows"
            ))),
        }
    }

    fn shutting_down(&self) {
        // No new peer can reach a worker that is shutting down: its socket
        // goes before the connection that asked is closed.
        if let Some(address) = lock(&self.shared.address).take() {
            remove_socket(&address);
        }
    }
}

impl ConnectionControl {
    /// The handshake: checks the host's greeting, then says what this
    /// worker serves.
    fn hello(&self, hello: Hello) -> Result<Welcome, Status> {
        check_hello(&hello, &mut lock(&self.shared.secret), self.inherited)?;
        // Before the welcome is written: the host sends a memory file only
        // once it has read it.
        let takes = self
            .passing
            .offer(self.shared.options.shared_memory_from_value());
        self.passing.peer_takes(hello.shared_memory);
        self.greeting.done();
        Ok(Welcome {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            services: self.shared.services.clone(),
            shared_memory: takes,
        })
    }

    /// Moves the worker to a named socket (once), and says where.
    fn detach(&self) -> Result<Detached, Status> {
        let mut address = lock(&self.shared.address);
        if address.is_none() {
            // Without an accept loop (a peer served for the fuzz targets),
            // no socket is made.
            let accept = lock(&self.shared.accept);
            let Some(start) = accept.as_ref() else {
                return Err(Status::unavailable(
                    "this worker cannot serve a named socket".to_owned(),
                ));
            };
            let (path, listener) = listen(&self.shared.name).map_err(|error| {
                Status::unavailable(format!("cannot listen on a named socket: {error}"))
            })?;
            let listener = UnixListener::from_std(listener).map_err(|error| {
                Status::unavailable(format!("cannot listen on a named socket: {error}"))
            })?;
            start(listener);
            *address = Some(path);
        }
        self.shared.detached.store(true, Ordering::SeqCst);
        Ok(Detached {
            address: address
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
        })
    }
}

/// Serves each peer of the named socket that runs as our user; the peer
/// must still pass the handshake with the secret, in time and before newer
/// connections push it out (`admission`). While accepting fails (out of
/// descriptors or memory), it pauses (`admission::ACCEPT_BACKOFF`) rather
/// than spin.
fn accept_loop<S: Dispatch>(service: Arc<S>, shared: Arc<WorkerShared>) -> AcceptLoop {
    Box::new(move |listener: UnixListener| {
        let service = Arc::clone(&service);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let uid = sys::user_id();
            let admission = Admission::new(
                shared.options.max_ungreeted_connections_value(),
                shared.options.greeting_timeout_value(),
            );
            let mut failures = 0;
            let yield_every = (shared.options.max_ungreeted_connections_value() / 2).max(1);
            let mut admitted = 0;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        if failures > 0 {
                            tracing::info!(
                                failures,
                                "accepting on the worker's named socket again"
                            );
                            failures = 0;
                        }
                        stream
                    }
                    Err(error) => {
                        let Some(pause) = accept_pause(&error, failures + 1) else {
                            tracing::debug!(%error, "a connection to the worker's named socket failed before it was accepted");
                            continue;
                        };
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(%error, ?pause, "accepting on the worker's named socket failed (out of descriptors or memory?); pausing");
                        } else {
                            tracing::debug!(%error, ?pause, failures, "accepting on the worker's named socket failed again");
                        }
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == uid => {}
                    Ok(cred) => {
                        tracing::warn!(
                            peer_uid = cred.uid(),
                            "refused a peer running as another user"
                        );
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "refused a peer whose credentials are unknown");
                        continue;
                    }
                }
                let greeting = admission.admit();
                let transport = SocketTransport::unix(stream, codec(&shared.options));
                let served = serve_peer(
                    transport,
                    Arc::clone(&service),
                    Arc::clone(&shared),
                    greeting,
                );
                let shared = Arc::clone(&shared);
                shared.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let ending = served.await;
                    shared.connection_ended();
                    match ending {
                        Ok(Ending::Shutdown) => shared.shutdown.notify_one(),
                        Ok(Ending::Closed) => {}
                        Err(PeerError::Ungreeted(why @ Ungreeted::TimedOut(_))) => {
                            tracing::warn!(%why, "closed a connection to the worker's named socket");
                        }
                        Err(PeerError::Ungreeted(why)) => {
                            tracing::debug!(%why, "closed a connection to the worker's named socket");
                        }
                        Err(PeerError::Frame(error)) => {
                            tracing::warn!(%error, "a connection to the worker's named socket ended")
                        }
                    }
                });
                // Let the connections admitted read their greetings, which a
                // host sends as it connects, before enough newer ones come to
                // push them out of the line: the accept loop yields after half
                // a line of them (while connections keep coming; else it
                // waits for the next anyway).
                admitted += 1;
                if admitted >= yield_every {
                    admitted = 0;
                    tokio::task::yield_now().await;
                }
            }
        });
    })
}

/// Why a connection to the named socket ended, other than as asked.
#[derive(Debug)]
enum PeerError {
    /// The serve loop ended with an error.
    Frame(FrameError),
    /// The worker closed it: its peer had not greeted in time, or newer
    /// connections pushed it out of the line.
    Ungreeted(Ungreeted),
}

/// Serves one peer of the named socket, which must greet before
/// `greeting` says it is unwelcome.
async fn serve_peer<S, T>(
    socket: SocketTransport<T>,
    service: Arc<S>,
    shared: Arc<WorkerShared>,
    greeting: Arc<Greeting>,
) -> Result<Ending, PeerError>
where
    S: Dispatch,
    T: AsyncRead + AsyncWrite + Descriptors + Send + Unpin + 'static,
{
    let socket = transport(socket, &shared.options, Arc::clone(&greeting));
    let control = ConnectionControl {
        shared: Arc::clone(&shared),
        inherited: false,
        greeting: Arc::clone(&greeting),
        passing: socket.passing(),
    };
    let transport = Stoppable::new(socket, Arc::clone(&shared.stop));
    let serve = serve_connection(transport, service, &shared.options, Some(&control));
    tokio::select! {
        // The serve loop first: it is where a greeting is accepted.
        biased;
        ending = serve => ending.map_err(PeerError::Frame),
        why = greeting.unwelcome() => Err(PeerError::Ungreeted(why)),
    }
}

/// How a connection served by `workerbus::fuzzing::serve_named_peer` ended.
#[cfg(fuzzing)]
#[derive(Debug)]
pub enum PeerEnd {
    /// The peer closed its end.
    Closed,
    /// The peer asked for a shutdown, and every call was answered.
    Shutdown,
    /// The serve loop ended with an error: a frame it refused, a peer whose
    /// greeting it refused, a frame over the greeting's limit...
    Error(FrameError),
    /// The worker closed the connection because the peer had not greeted in
    /// time; the reason, as the worker logs it.
    Ungreeted(String),
}

/// Serves `io` as a worker whose secret is `secret` serves a peer of its
/// named socket, with `options`' limits on a peer that has not greeted: the
/// code the accept loop runs for each connection, for the fuzz targets
/// (`workerbus::fuzzing::serve_named_peer`). A detach is refused: there is
/// no accept loop, and no socket is made.
#[cfg(fuzzing)]
pub(crate) async fn serve_fuzzed_peer<S>(
    io: tokio::io::DuplexStream,
    service: S,
    options: ServeOptions,
    secret: Secret,
) -> PeerEnd
where
    S: Dispatch,
{
    let options = options.driver("process");
    let shared = Arc::new(WorkerShared {
        name: "fuzzed".into(),
        services: service
            .schemas()
            .into_iter()
            .map(ServiceInfo::from)
            .collect(),
        options: options.clone(),
        secret: Mutex::new(Some(secret)),
        detached: AtomicBool::new(true),
        serving: AtomicBool::new(true),
        address: Mutex::new(None),
        shutdown: Notify::new(),
        accept: Mutex::new(None),
        stop: Arc::default(),
        connections: AtomicUsize::new(1),
    });
    let admission = Admission::new(
        options.max_ungreeted_connections_value(),
        options.greeting_timeout_value(),
    );
    let socket = SocketTransport::new(io, codec(&options));
    match serve_peer(socket, Arc::new(service), shared, admission.admit()).await {
        Ok(Ending::Closed) => PeerEnd::Closed,
        Ok(Ending::Shutdown) => PeerEnd::Shutdown,
        Err(PeerError::Frame(error)) => PeerEnd::Error(error),
        Err(PeerError::Ungreeted(why)) => PeerEnd::Ungreeted(why.to_string()),
    }
}

/// Binds a socket only our user can reach, with mode 0600, in a directory of
/// this worker's own (mode 0700) inside the user's private directory, so
/// that removing the worker's files leaves nothing behind.
fn listen(name: &str) -> io::Result<(PathBuf, std::os::unix::net::UnixListener)> {
    let private = private_dir()?;
    sweep_gone(&private);
    let dir = private.join(format!("{}-{}", sanitize(name), std::process::id()));
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        // Left by a killed worker that had our pid.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
        }
        Err(error) => return Err(error),
    }
    let path = dir.join(SOCKET_NAME);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok((path, listener))
}

/// The named socket's file name, in the worker's own directory.
pub(super) const SOCKET_NAME: &str = "socket";

/// Removes what workers that are gone left in the user's private directory:
/// a worker killed by a signal cannot remove its socket, so each worker that
/// makes one first removes the sockets (and then the directories, once
/// empty) of the `<name>-<pid>` directories whose process no longer exists
/// and whose socket refuses connections (a worker in another pid namespace
/// sharing the directory is not taken for gone once it listens). Only real
/// directories holding a socket are touched: no symbolic link is followed,
/// and a directory without a socket (a worker between making its directory
/// and binding) is left alone.
fn sweep_gone(private: &Path) {
    let Ok(entries) = std::fs::read_dir(private) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || sys::process_exists(pid) {
            continue;
        }
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let socket = entry.path().join(SOCKET_NAME);
        let is_socket =
            std::fs::symlink_metadata(&socket).is_ok_and(|meta| meta.file_type().is_socket());
        if !is_socket {
            continue;
        }
        match std::os::unix::net::UnixStream::connect(&socket) {
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => continue,
        }
        tracing::debug!(socket = %socket.display(), pid, "removing the socket of a worker that is gone");
        remove_socket(&socket);
    }
}

/// Removes a named socket and the worker's directory that holds it.
pub(super) fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The directory named by `WORKERBUS_SOCKET_DIR`, else
/// `$XDG_RUNTIME_DIR/workerbus`, else `<temp>/workerbus-<uid>`: created with
/// mode 0700, and refused if it exists but is not ours and private.
pub(crate) fn private_dir() -> io::Result<PathBuf> {
    let uid = sys::user_id();
    let dir = match (
        std::env::var_os(SOCKET_DIR_ENV),
        std::env::var_os("XDG_RUNTIME_DIR"),
    ) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(runtime)) if Path::new(&runtime).is_dir() => Path::new(&runtime).join("workerbus"),
        _ => std::env::temp_dir().join(format!("workerbus-{uid}")),
    };
    // With its parents, for a directory named by the user.
    match DirBuilder::new().mode(0o700).recursive(true).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by uid {uid} with mode 0700 (it has uid {} and mode {:o}); \
                 name another with ProcessDriver::socket_dir ({SOCKET_DIR_ENV})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// A worker name fit for a file name.
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if clean.is_empty() {
        "worker".into()
    } else {
        clean
    }
}

/// Ends the process if its host hangs up while the worker is still serving
/// and not detached, and the serve loop has not stopped within
/// [`HANGUP_GRACE`] (e.g. a handler is stuck in blocking code).
fn spawn_watchdog(socket: std::os::unix::net::UnixStream, shared: Arc<WorkerShared>) {
    let spawned = std::thread::Builder::new()
        .name("workerbus-watchdog".into())
        .spawn(move || {
            if sys::wait_for_hangup(&socket).is_err() {
                return;
            }
            std::thread::sleep(HANGUP_GRACE);
            if shared.serving.load(Ordering::SeqCst) && !shared.detached.load(Ordering::SeqCst) {
                // Handed over, not written here: the host's end of a
                // forwarded stderr is gone (a write would fail) and an unread
                // pipe may be full (a write would wait for good). The line
                // gets a moment, then the process ends whatever happened.
                crate::stderr::line(format!(
                    "workerbus: worker {:?}: the host went away and the worker did not stop within {HANGUP_GRACE:?}; exiting",
                    shared.name
                ));
                sys::exit_now(1);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the worker's watchdog thread");
    }
}
