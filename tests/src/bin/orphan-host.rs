//! A host process that starts an echo worker sharing its stderr, prints the
//! worker's pid, and waits to be killed: to show the worker does not outlive
//! it.
//!
//! Usage: `orphan-host <path of echo-worker> [--busy]`
//! With --busy, the worker is also given a call whose handler blocks its
//! thread (it says so on stderr), so only its watchdog can notice the host
//! is gone.

use std::io::Write;

use workerbus::{ProcessDriver, Stdio};
use workerbus_tests::pb::echo::{EchoClient, SleepRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    let program = std::env::args().nth(1).expect("the path of echo-worker");
    let busy = std::env::args().any(|arg| arg == "--busy");
    let worker = ProcessDriver::new(program)
        .stderr(Stdio::Inherit)
        .spawn()
        .await?;
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
    println!("{}", worker.pid());
    std::io::stdout().flush().expect("stdout");
    std::future::pending::<()>().await;
    Ok(())
}
