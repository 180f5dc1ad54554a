//! A worker process serving the Echo test service. Its arguments make it
//! misbehave on purpose, and run by hand it behaves as a command-line tool.
//!
//! - `--exit-before-handshake=<code>`: exits with `code` before serving.
//! - `--delay-start-ms=<ms>`: waits before serving (a worker slow to start).
//! - `--close-socket-on-sigusr1`: on SIGUSR1, shuts its connection to the
//!   host down and lives on, serving nothing, until it is killed or its host
//!   ends (a worker whose connection broke while its process lives).
//! - `--logging`: serves with the `Logging` middleware.
//! - `--shared-memory-from=<bytes>`: takes payloads in memory files, and
//!   sends those of at least `bytes` so, if the host takes them.

use std::time::Duration;

use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::EchoServer;

/// Where a worker process finds its connection (`docs/PROTOCOL.md` 9.3).
const SOCKET_FD: i32 = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve_anyway = args.iter().any(|arg| arg == "--serve-anyway");
    if workerbus::startup_data().is_none() && !serve_anyway {
        // One binary, two roles: started by a person, it is a CLI.
        println!("echo-worker: not started by a workerbus host; nothing to serve");
        return;
    }
    for arg in &args {
        if let Some(code) = arg.strip_prefix("--exit-before-handshake=") {
            eprintln!("echo-worker: loading the model failed on purpose");
            eprintln!("echo-worker: giving up with code {code}");
            std::process::exit(code.parse().expect("an exit code"));
        }
        if let Some(ms) = arg.strip_prefix("--delay-start-ms=") {
            tokio::time::sleep(Duration::from_millis(ms.parse().expect("milliseconds"))).await;
        }
    }
    let close_on_signal = args.iter().any(|arg| arg == "--close-socket-on-sigusr1");
    if close_on_signal {
        let mut signal =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .expect("listen for SIGUSR1");
        tokio::spawn(async move {
            signal.recv().await;
            close_connection();
        });
    }
    let mut options = workerbus::ServeOptions::new();
    if args.iter().any(|arg| arg == "--logging") {
        options = options.middleware(workerbus::Logging::new());
    }
    for arg in &args {
        if let Some(from) = arg.strip_prefix("--shared-memory-from=") {
            options = options.shared_memory_from(Some(from.parse().expect("a number of bytes")));
        }
    }
    for arg in &args {
        if let Some(ms) = arg.strip_prefix("--greeting-timeout-ms=") {
            let ms = ms.parse().expect("milliseconds");
            options = options.greeting_timeout(Duration::from_millis(ms));
        }
        if let Some(max) = arg.strip_prefix("--max-ungreeted-connections=") {
            options = options.max_ungreeted_connections(max.parse().expect("a number"));
        }
    }
    let server = EchoServer::new(EchoWorker::in_process());
    let served = workerbus::serve_with_options(server, options).await;
    if close_on_signal {
        eprintln!("echo-worker: the connection ended ({served:?}); living on, serving nothing");
        let host = workerbus::startup_data().map(|startup| startup.host_pid());
        live_while_host_lives(host).await;
    }
    if let Err(error) = served {
        eprintln!("echo-worker: {error}");
        std::process::exit(1);
    }
}

/// Shuts the connection to the host down in both directions, without
/// closing the descriptor the runtime owns: the host reads its end, the
/// serve loop sees the connection end, and the process lives on.
fn close_connection() {
    use std::os::fd::FromRawFd;

    // SAFETY: a workerbus host starts its workers with their end of the
    // socket at descriptor 3, which the serve loop owns while it serves (the
    // tests signal a worker that serves). The stream made here is never
    // dropped, so it never closes the descriptor; shutdown(2) ends the
    // connection and touches no memory.
    #[allow(unsafe_code)]
    let socket = std::mem::ManuallyDrop::new(unsafe {
        std::os::unix::net::UnixStream::from_raw_fd(SOCKET_FD)
    });
    eprintln!("echo-worker: SIGUSR1: shutting the connection to the host down");
    if let Err(error) = socket.shutdown(std::net::Shutdown::Both) {
        eprintln!("echo-worker: shutting the connection down failed: {error}");
    }
}

/// Returns once the host process is gone, so that a worker that outlives
/// its connection does not outlive its host.
async fn live_while_host_lives(host: Option<u32>) {
    let Some(host) = host else {
        return;
    };
    let host = format!("/proc/{host}");
    while std::path::Path::new(&host).exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
