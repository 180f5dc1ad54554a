//! Helpers the integration tests share: signalling or killing a worker
//! process (now, or when a test ends however it ends), waiting for a
//! supervisor's event, connecting to a detached worker as a host would,
//! running a program short of file descriptors, and filling a pipe.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use tokio_util::codec::Framed;
use workerbus::{DetachedWorker, Frame, FrameCodec, MethodName, Secret, SupervisorEvent};

/// Sends SIGKILL to `pid`, failing the test if `kill` fails.
pub fn sigkill(pid: u32) {
    signal(pid, "KILL");
}

/// Sends SIGTERM to `pid`, failing the test if `kill` fails.
pub fn sigterm(pid: u32) {
    signal(pid, "TERM");
}

/// Runs `program` with `args` under a limit of 64 open files (`ulimit -n`,
/// in a shell that then becomes the program), failing the test if it
/// fails: what it printed on stdout, trimmed.
pub fn with_few_files(program: &str, args: &[&str]) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(program)
        .args(args)
        .output()
        .expect("run sh");
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {said} {stderr}",
        output.status
    );
    said
}

/// Fills the pipe `writer` writes to, so that the next write to it (by any
/// process holding it) waits until someone reads. Its end is made
/// non-blocking while it is filled, which every holder of that end shares,
/// and blocking again before this returns: nobody else may write meanwhile.
pub fn fill_pipe(writer: &std::io::PipeWriter) {
    use std::io::Write;

    let end = std::os::fd::OwnedFd::from(writer.try_clone().expect("dup the pipe's end"));
    // On a thread of its own: the caller may be on a runtime already.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("a runtime");
            let _runtime = runtime.enter();
            // Tokio's pipe end sets O_NONBLOCK on the end, and clears it when
            // made blocking again: the standard library has no call for
            // either.
            let nonblocking = tokio::net::unix::pipe::Sender::from_owned_fd(end).expect("a pipe");
            // Pages, then bytes: a write of a page does not fit in what is
            // left of a page.
            for chunk in [&[b'.'; 4096][..], b"."] {
                loop {
                    match (&*writer).write(chunk) {
                        Ok(_) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(error) => panic!("filling the pipe: {error}"),
                    }
                }
            }
            drop(
                nonblocking
                    .into_blocking_fd()
                    .expect("make the pipe blocking again"),
            );
        });
    });
}

/// Sends the signal named `name` (`KILL`, `STOP`, `USR1`...) to `pid`,
/// failing the test if `kill` fails.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Kills a worker process when dropped, so that a failing test leaves no
/// worker behind (a detached worker outlives its host; a stopped one never
/// notices its host is gone).
#[derive(Debug)]
pub struct KillOnDrop(pub u32);

impl KillOnDrop {
    /// Forgets the process, which has ended: its pid may name another
    /// process by the time the guard would drop.
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A worker's secret as the bytes a greeting carries (from its hex form,
/// the only one the API shows).
pub fn secret_bytes(secret: &Secret) -> Vec<u8> {
    let hex = secret.to_hex();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
        .collect()
}

/// Waits for the first event `pick` accepts, failing the test after 20 s.
pub async fn expect<T>(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    what: &str,
    mut pick: impl FnMut(&SupervisorEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let event = events.recv().await.expect("the supervisor's events");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} event within 20 s"))
}

/// A host's connection to a detached worker, greeted with the right secret:
/// what a hostile host needs to reach the worker's serve loop.
pub async fn greeted(worker: &DetachedWorker) -> Framed<UnixStream, FrameCodec> {
    let socket = UnixStream::connect(worker.address())
        .await
        .expect("connect");
    let mut peer = Framed::new(socket, FrameCodec::new());
    let secret = secret_bytes(worker.secret());
    let mut hello = vec![0x08, workerbus::PROTOCOL_VERSION as u8, 0x12, 32];
    hello.extend_from_slice(&secret);
    let method = MethodName::from_static("$workerbus.hello");
    let greeting = Frame::request(1, method, None, 1, Bytes::from(hello));
    peer.send(greeting).await.expect("greet");
    match peer.next().await {
        Some(Ok(Frame::Response { id: 1, .. })) => peer,
        other => panic!("the worker did not welcome us: {other:?}"),
    }
}
