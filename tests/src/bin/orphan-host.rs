//! A host process that starts an echo worker, prints the worker's pid, and
//! waits to be killed: to show the worker does not outlive it.
//!
//! Usage: `orphan-host <path of echo-worker> [--busy] [--stderr=forward]`
//!
//! The worker shares this host's stdout, so whoever reads it sees its end
//! only once both have exited. Its stderr is this host's too, unless
//! `--stderr=forward`, which copies it to this host's stderr (the driver's
//! default). With --busy, the worker is also given a call whose handler
//! blocks its thread (it says so on stderr), so only its watchdog can
//! notice the host is gone.

use std::io::Write;

use workerbus::{ProcessDriver, Stdio};
use workerbus_tests::pb::echo::{EchoClient, SleepRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    let program = std::env::args().nth(1).expect("the path of echo-worker");
    let busy = std::env::args().any(|arg| arg == "--busy");
    let stderr = if std::env::args().any(|arg| arg == "--stderr=forward") {
        Stdio::Forward
    } else {
        Stdio::Inherit
    };
    let worker = ProcessDriver::new(program).stderr(stderr).spawn().await?;
    if busy {
        let client = EchoClient::new(worker.channel());
        tokio::spawn(async move {
            let _ = client
                .sleep(SleepRequest {
                    tag: "wedged".into(),
                    ms: 3_600_000,
                    blocking: true,
                })
                .await;
        });
    }
    let pid = worker.pid().expect("a spawned worker has a process id");
    println!("{pid}");
    std::io::stdout().flush().expect("stdout");
    std::future::pending::<()>().await;
    Ok(())
}
