//! A host process that starts an echo worker, calls it, detaches it, prints
//! how to reach it (address, secret, pid) and exits, leaving it running.
//!
//! Usage: `detach-host <path of echo-worker> [--stderr=forward]
//! [--stdout=inherit]`
//!
//! The worker's stdout and stderr are discarded, as they should be for a
//! worker that will outlive its host, unless `--stderr=forward`: then its
//! stderr is copied to this host's (the driver's default), and written to
//! a pipe whose reader is gone once this host has exited. With
//! `--stdout=inherit` the worker shares this host's stdout (and writes
//! nothing to it): whoever reads it sees its end only once the worker has
//! exited too.

use workerbus::{ProcessDriver, Stdio};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    let program = std::env::args().nth(1).expect("the path of echo-worker");
    let stderr = if std::env::args().any(|arg| arg == "--stderr=forward") {
        Stdio::Forward
    } else {
        Stdio::Null
    };
    let stdout = if std::env::args().any(|arg| arg == "--stdout=inherit") {
        Stdio::Inherit
    } else {
        Stdio::Null
    };
    let worker = ProcessDriver::new(program)
        .serves(EchoClient::SCHEMA)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .await?;
    let reply = EchoClient::new(worker.channel())
        .echo(EchoRequest {
            text: "before detaching".into(),
            ..EchoRequest::default()
        })
        .await?;
    assert_eq!(reply.text, "before detaching");
    let detached = worker.detach().await?;
    println!(
        "{} {} {}",
        detached.address().display(),
        detached.secret().to_hex(),
        detached.pid().expect("a detached worker has a process id")
    );
    Ok(())
}
