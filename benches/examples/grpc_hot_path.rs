//! A fixed number of sequential 64 B echo calls over gRPC on TCP loopback,
//! workerbus's (`GrpcDriver` to `GrpcServer`) or plain tonic's, for
//! profilers that count rather than time. Each server runs in a child
//! process; with `--dump`, the example asks callgrind to write every
//! process's counts before it stops the server (a killed process writes
//! none), so that both sides are counted:
//!
//! ```text
//! cargo build --release -p workerbus-benches --features peers --example grpc_hot_path
//! valgrind --tool=callgrind --trace-children=yes \
//!     target/release/examples/grpc_hot_path workerbus 4000 --dump
//! ```
//!
//! Instructions per call are the difference between two runs (e.g. 2,000
//! and 4,000 calls) divided by the difference in calls, per process: the
//! client is the process run with the subject's name, the server the one
//! run with a socket path. Arguments: the subject (`workerbus` or
//! `tonic`), the number of calls, and `--dump`.

use std::path::PathBuf;

use workerbus_benches::scenarios::payload;
use workerbus_benches::{Echo, ROLE_ENV, peers};

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let socket = PathBuf::from(std::env::args_os().nth(1).expect("a socket path"));
        assert!(peers::serve_role(&role, &socket), "unknown role {role:?}");
        return;
    }
    let mut args = std::env::args().skip(1);
    let subject = args.next().unwrap_or_else(|| "workerbus".to_owned());
    let calls: usize = args
        .next()
        .map_or(4_000, |n| n.parse().expect("a number of calls"));
    let dump = args.next().is_some_and(|arg| arg == "--dump");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        let payload = payload(64);
        match subject.as_str() {
            "workerbus" => {
                let (echo, worker, _server) = peers::workerbus_grpc().await;
                for _ in 0..calls {
                    echo.echo(payload.clone()).await;
                }
                if dump {
                    dump_counts();
                }
                workerbus::Worker::shutdown(&worker).await;
            }
            "tonic" => {
                let (echo, _server) = peers::tonic_tcp().await;
                for _ in 0..calls {
                    echo.echo(payload.clone()).await;
                }
                if dump {
                    dump_counts();
                }
            }
            other => panic!("unknown subject {other:?}: workerbus or tonic"),
        }
    });
    println!("{calls} calls over gRPC ({subject})");
}

/// Asks callgrind to write the counts of every process it runs.
fn dump_counts() {
    match std::process::Command::new("callgrind_control")
        .arg("--dump")
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("callgrind_control --dump: {status}"),
        Err(error) => eprintln!("callgrind_control --dump: {error}"),
    }
}
