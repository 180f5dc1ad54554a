//! The peers of a comparison: tonic (gRPC) and tarpc, the Rust RPC
//! frameworks a workerbus user might pick instead, serving the same echo
//! service. Built with the `peers` feature only, so that the workspace's
//! tests and lints never compile them.
//!
//! | subject           | transport                         | server                            |
//! |-------------------|-----------------------------------|-----------------------------------|
//! | [`tonic_unix`]    | HTTP/2 on a Unix socket, protobuf | child process ([`TONIC_SERVER`])  |
//! | [`tarpc_unix`]    | Unix socket, bincode              | child process ([`TARPC_SERVER`])  |
//! | [`tarpc_channel`] | in-process channel, no encoding   | another thread ([`ServerThread`]) |
//! | [`tonic_tcp`]     | HTTP/2 on TCP loopback, protobuf  | child process ([`TONIC_TCP_SERVER`]) |
//! | [`workerbus_grpc`] | workerbus over gRPC, TCP loopback | child process ([`WORKERBUS_GRPC_SERVER`]) |
//!
//! Every server runs on a current-thread Tokio runtime, as a workerbus worker
//! does, and accepts messages of up to 16 MiB.

mod tarpc;
mod tcp;
mod tonic;

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitStatus;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use self::tarpc::TarpcEcho;
pub use self::tcp::{
    CONNECTIONS, TONIC_TCP_SERVER, WORKERBUS_GRPC_SERVER, tonic_tcp, workerbus_grpc,
};
pub use self::tonic::TonicEcho;

/// The role of a child process serving the tonic echo service.
pub const TONIC_SERVER: &str = "tonic-server";
/// The role of a child process serving the tarpc echo service (bincode).
pub const TARPC_SERVER: &str = "tarpc-server";

/// The largest message either side of a peer accepts (the largest payload
/// of the comparison is 1 MiB; the default limits of tonic and tarpc are 4
/// and 8 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// What a server stops with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client retries its connection to a starting server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server of `role` on the Unix socket `socket` if `role` is one of
/// the peers' roles ([`TONIC_SERVER`], [`TARPC_SERVER`]), until the process
/// is killed; returns false for other roles. The TCP roles
/// ([`TONIC_TCP_SERVER`], [`WORKERBUS_GRPC_SERVER`]) listen on loopback and
/// write their address to the file `socket` instead.
///
/// # Panics
///
/// If the server cannot listen on `socket` or stops with an error.
pub fn serve_role(role: &str, socket: &Path) -> bool {
    let served = match role {
        TONIC_SERVER => block_on(self::tonic::serve(socket)),
        TARPC_SERVER => block_on(self::tarpc::serve(socket)),
        _ => match self::tcp::serve_role(role, socket) {
            Some(served) => served,
            None => return false,
        },
    };
    if let Err(error) = served {
        panic!("the {role} server on {}: {error}", socket.display());
    }
    true
}

/// tonic unary calls over a Unix socket, the server in a child process.
///
/// # Panics
///
/// If the server does not accept a connection within 10 s, or exits first.
pub async fn tonic_unix() -> (TonicEcho, ServerProcess) {
    let mut server = ServerProcess::spawn(TONIC_SERVER);
    let socket = server.socket().to_owned();
    let client = connect_retrying(
        TONIC_SERVER,
        || self::tonic::connect(&socket),
        || server.exit_status(),
    )
    .await;
    (client, server)
}

/// tarpc with bincode (its serde transport) over a Unix socket, the server
/// in a child process.
///
/// # Panics
///
/// If the server does not accept a connection within 10 s, or exits first.
pub async fn tarpc_unix() -> (TarpcEcho, ServerProcess) {
    let mut server = ServerProcess::spawn(TARPC_SERVER);
    let socket = server.socket().to_owned();
    let client = connect_retrying(
        TARPC_SERVER,
        || self::tarpc::connect(&socket),
        || server.exit_status(),
    )
    .await;
    (client, server)
}

/// tarpc over its in-process channel transport, without serialization; the
/// server runs on another thread with its own current-thread runtime, as a
/// workerbus thread worker does, until the returned guard is dropped.
///
/// # Panics
///
/// Outside a Tokio runtime: the client's dispatch task is spawned on the
/// current one.
pub fn tarpc_channel() -> (TarpcEcho, ServerThread) {
    self::tarpc::channel()
}

pub use crate::baselines::ServerProcess;

/// A server on its own OS thread, with its own current-thread Tokio runtime.
/// Dropping it stops the server (its tasks are dropped with the runtime) and
/// joins the thread.
#[derive(Debug)]
pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs the future `serve` makes on a new thread named `name`, until it
    /// ends or the guard is dropped. The future is made on that thread, so
    /// it need not be `Send`.
    pub(crate) fn spawn<F, Fut>(name: &str, serve: F) -> ServerThread
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                block_on(async move {
                    // A send or a drop of `stop` both end the wait.
                    tokio::select! {
                        () = serve() => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawning a server thread");
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic of the server has printed its message already.
            let _ = thread.join();
        }
    }
}

/// Runs `future` to its end on a new current-thread runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(future)
}

/// Calls `connect` until it succeeds: a server started a moment ago may not
/// listen yet. Panics, naming `role`, once `exited` reports that the server
/// is gone or after [`CONNECT_TIMEOUT`].
async fn connect_retrying<T, E, Fut>(
    role: &str,
    mut connect: impl FnMut() -> Fut,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let error = match connect().await {
            Ok(client) => return client,
            Err(error) => error,
        };
        if let Some(status) = exited() {
            panic!("the {role} server exited ({status}) before accepting a connection: {error}");
        }
        if Instant::now() >= deadline {
            panic!(
                "the {role} server did not accept a connection within {CONNECT_TIMEOUT:?}: {error}"
            );
        }
        // The interval between attempts, not a guess at the start-up time.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Each subject answers one small call, one large call and 64 concurrent
    //! calls through clones of one client on a current-thread runtime. The
    //! Unix-socket servers run on a thread here (the test binary does not
    //! dispatch roles); the child-process path is what the `compare` bench
    //! runs.

    use bytes::Bytes;

    use super::*;
    use crate::{Echo, MakeVectors};
    use std::path::PathBuf;

    pub(crate) async fn check(client: impl Echo) {
        for len in [64, 1 << 20] {
            let payload = Bytes::from(vec![7u8; len]);
            assert_eq!(client.echo(payload.clone()).await, payload);
        }
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.echo(Bytes::from(vec![1u8; 64 * i])).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().len(), 64 * i);
        }
    }

    /// The fresh-message scenario's call: the floats the server made.
    async fn check_vectors(client: impl MakeVectors) {
        assert_eq!(client.make(16_384).await, crate::fresh_vectors(16_384));
        assert!(client.make(0).await.is_empty());
    }

    pub(crate) fn socket(name: &str) -> PathBuf {
        let socket = std::env::temp_dir().join(format!(
            "workerbus-bench-test-{name}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        socket
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tonic_over_a_unix_socket() {
        let socket = socket("tonic");
        let path = socket.clone();
        let server = ServerThread::spawn("tonic-server", move || async move {
            super::tonic::serve(&path).await.unwrap();
        });
        let client = connect_retrying("tonic", || super::tonic::connect(&socket), || None).await;
        check_vectors(client.clone()).await;
        check(client).await;
        drop(server);
        let _ = std::fs::remove_file(&socket);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tarpc_over_a_unix_socket() {
        let socket = socket("tarpc");
        let path = socket.clone();
        let server = ServerThread::spawn("tarpc-server", move || async move {
            super::tarpc::serve(&path).await.unwrap();
        });
        let client = connect_retrying("tarpc", || super::tarpc::connect(&socket), || None).await;
        check_vectors(client.clone()).await;
        check(client).await;
        drop(server);
        let _ = std::fs::remove_file(&socket);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tarpc_over_a_channel() {
        let (client, server) = tarpc_channel();
        check_vectors(client.clone()).await;
        check(client).await;
        drop(server);
    }
}
