//! The baselines: what the hardware and the runtime allow without a
//! framework. Raw Unix-socket ping-pong between two processes (std and
//! Tokio), raw Unix-socket streaming, and a Tokio mpsc + oneshot request
//! and response between two runtimes on two threads.
//!
//! Raw frames are a little-endian `u32` length and the payload; the server
//! sends each frame back.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::{Echo, MakeVectors, ROLE_ENV};

/// The role of a server that sends every raw frame back (std, blocking).
pub const STD_ECHO: &str = "std-echo";
/// The role of a server that sends every raw frame back (Tokio,
/// current-thread runtime).
pub const TOKIO_ECHO: &str = "tokio-echo";
/// The role of a server that reads a stream to its end and answers with the
/// number of bytes it read (`u64`, little-endian).
pub const SINK: &str = "sink";

/// Runs the server of `role` on `socket` if it is a baseline's role; false
/// otherwise.
pub fn serve_role(role: &str, socket: &Path) -> bool {
    match role {
        STD_ECHO => serve_std_echo(socket),
        TOKIO_ECHO => serve_tokio_echo(socket),
        SINK => serve_sink(socket),
        _ => return false,
    }
    true
}

/// A server in a child process: this binary run again with [`ROLE_ENV`].
/// The child is killed, and its socket removed, on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    socket: PathBuf,
}

impl ServerProcess {
    /// Starts the server of `role` and waits until its socket accepts a
    /// connection.
    pub fn start(role: &str) -> ServerProcess {
        let server = ServerProcess::spawn(role);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.socket.exists() || UnixStream::connect(&server.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the {role} server did not listen on {} within 10 s",
                server.socket.display()
            );
            std::thread::yield_now();
        }
        server
    }

    /// Starts the server of `role` on a new socket in the temporary
    /// directory, without waiting for it: its clients retry their
    /// connection.
    pub fn spawn(role: &str) -> ServerProcess {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "workerbus-bench-{role}-{}-{}.sock",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(std::env::current_exe().expect("the benchmark's path"))
            .env(ROLE_ENV, role)
            .arg(&socket)
            .spawn()
            .expect("starting a server process");
        ServerProcess { child, socket }
    }

    /// How the child exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The server's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn bind(socket: &Path) -> UnixListener {
    UnixListener::bind(socket).unwrap_or_else(|error| panic!("bind {}: {error}", socket.display()))
}

fn serve_std_echo(socket: &Path) {
    let listener = bind(socket);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            loop {
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).is_err() {
                    return;
                }
                buffer.resize(u32::from_le_bytes(header) as usize, 0);
                if stream.read_exact(&mut buffer).is_err() {
                    return;
                }
                let _ = stream.write_all(&header);
                if stream.write_all(&buffer).is_err() {
                    return;
                }
            }
        });
    }
}

fn serve_tokio_echo(socket: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let Ok(len) = stream.read_u32_le().await else {
                        return;
                    };
                    buffer.resize(len as usize, 0);
                    if stream.read_exact(&mut buffer).await.is_err() {
                        return;
                    }
                    let _ = stream.write_u32_le(len).await;
                    if stream.write_all(&buffer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn serve_sink(socket: &Path) {
    let listener = bind(socket);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = stream.write_all(&total.to_le_bytes());
    }
}

/// A raw frame: the length, then `size` bytes.
fn raw_frame(size: usize) -> Vec<u8> {
    (size as u32)
        .to_le_bytes()
        .into_iter()
        .chain(std::iter::repeat_n(0x5a, size))
        .collect()
}

/// Latencies of raw round trips of `size` bytes for `time`, with blocking
/// std sockets, to a [`STD_ECHO`] server.
pub fn std_ping_pong(socket: &Path, size: usize, time: Duration) -> Vec<Duration> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let frame = raw_frame(size);
    let mut answer = vec![0u8; frame.len()];
    let mut samples = Vec::with_capacity(100_000);
    let end = Instant::now() + time;
    loop {
        let start = Instant::now();
        if start >= end {
            return samples;
        }
        stream.write_all(&frame).expect("write");
        stream.read_exact(&mut answer).expect("read");
        samples.push(start.elapsed());
    }
}

/// Latencies of raw round trips of `size` bytes for `time`, with Tokio
/// sockets, to a [`TOKIO_ECHO`] server.
pub async fn tokio_ping_pong(socket: &Path, size: usize, time: Duration) -> Vec<Duration> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let frame = raw_frame(size);
    let mut answer = vec![0u8; frame.len()];
    let mut samples = Vec::with_capacity(100_000);
    let end = Instant::now() + time;
    loop {
        let start = Instant::now();
        if start >= end {
            return samples;
        }
        stream.write_all(&frame).await.expect("write");
        stream.read_exact(&mut answer).await.expect("read");
        samples.push(start.elapsed());
    }
}

/// The send buffer workerbus's process driver asks of its sockets, for the
/// streaming baseline that uses the same.
pub const WORKERBUS_SEND_BUFFER: usize = 1024 * 1024;

/// Bytes per second streamed to a [`SINK`] server in writes of `write`
/// bytes for `time`, until the server has read them all; with the socket's
/// send buffer at `send_buffer` bytes, or at the system's default.
pub fn stream_to_sink(
    socket: &Path,
    write: usize,
    send_buffer: Option<usize>,
    time: Duration,
) -> f64 {
    let mut stream = UnixStream::connect(socket).expect("connect");
    if let Some(bytes) = send_buffer {
        set_send_buffer(&stream, bytes);
    }
    let chunk = vec![0x5a; write];
    let start = Instant::now();
    let end = start + time;
    let mut sent = 0;
    while Instant::now() < end {
        stream.write_all(&chunk).expect("write");
        sent += write;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).expect("the sink's count");
    assert_eq!(u64::from_le_bytes(count), sent as u64);
    sent as f64 / start.elapsed().as_secs_f64()
}

#[allow(unsafe_code)] // setsockopt has no safe wrapper in std
fn set_send_buffer(stream: &UnixStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).expect("a buffer size that fits a c_int");
    // SAFETY: `value` outlives the call, and the length given is its size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        set,
        0,
        "setsockopt(SO_SNDBUF): {}",
        std::io::Error::last_os_error()
    );
}

/// A request and the way back for its answer.
enum Request {
    /// An echo of the payload.
    Echo(Bytes, oneshot::Sender<Bytes>),
    /// A fresh batch of this many floats.
    Make(u32, oneshot::Sender<Vec<f32>>),
}

/// Tokio mpsc + oneshot request and response: the server is a task on a
/// current-thread runtime of its own thread, as a thread worker is.
#[derive(Clone, Debug)]
pub struct MpscEcho {
    requests: mpsc::Sender<Request>,
}

impl MpscEcho {
    /// Starts the server thread; it ends when every clone is dropped.
    pub fn start() -> MpscEcho {
        let (requests, mut incoming) = mpsc::channel::<Request>(1024);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a Tokio runtime");
            runtime.block_on(async move {
                while let Some(request) = incoming.recv().await {
                    match request {
                        Request::Echo(payload, answer) => {
                            let _ = answer.send(payload);
                        }
                        Request::Make(count, answer) => {
                            let _ = answer.send(crate::fresh_vectors(count));
                        }
                    }
                }
            });
        });
        MpscEcho { requests }
    }
}

impl Echo for MpscEcho {
    async fn echo(&self, payload: Bytes) -> Bytes {
        let (answer, response) = oneshot::channel();
        self.requests
            .send(Request::Echo(payload, answer))
            .await
            .expect("the server thread is gone");
        response.await.expect("the server dropped a request")
    }
}

impl MakeVectors for MpscEcho {
    async fn make(&self, count: u32) -> Vec<f32> {
        let (answer, response) = oneshot::channel();
        self.requests
            .send(Request::Make(count, answer))
            .await
            .expect("the server thread is gone");
        response.await.expect("the server dropped a request")
    }
}
