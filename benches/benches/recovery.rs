//! Mean time to recovery: from the SIGKILL of a supervised process worker
//! to the next successful call through the same client, which waits for the
//! restart. Thread workers (killed through the supervisor) are measured
//! beside them.
//!
//! Run: `cargo bench -p workerbus-benches --bench recovery`
//! (`ROUNDS=n` sets the rounds per driver; default 40).
//!
//! The benchmark binary is also its own worker: started by a host, it serves
//! the Echo test service instead.
#![allow(unsafe_code)] // libc::kill, to kill the worker at a known instant

use std::time::{Duration, Instant};

use workerbus::{
    CallOptions, ProcessDriver, RestartPolicy, SupervisedWorker, Supervisor, ThreadDriver,
};
use workerbus_benches::summary;
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

fn main() {
    if workerbus::startup_data().is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(workerbus::serve(EchoServer::new(EchoWorker::in_process())))
            .unwrap();
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let process = measure(
            "process worker, SIGKILL",
            rounds,
            |supervisor, policy| async move {
                let driver =
                    ProcessDriver::new(std::env::current_exe().unwrap()).name("bench-worker");
                supervisor
                    .supervise("process", driver, policy)
                    .await
                    .unwrap()
            },
        )
        .await;
        let thread = measure(
            "thread worker, kill()",
            rounds,
            |supervisor, policy| async move {
                let spawner = ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()));
                supervisor
                    .supervise("thread", spawner, policy)
                    .await
                    .unwrap()
            },
        )
        .await;
        println!("recovery, from the kill to the next successful call through the same client:");
        println!("  {:<26} {}", "process worker, SIGKILL", summary(&process));
        println!("  {:<26} {}", "thread worker, kill()", summary(&thread));
    });
}

async fn measure<F, Fut>(label: &str, rounds: usize, supervise: F) -> Vec<Duration>
where
    F: FnOnce(Supervisor, RestartPolicy) -> Fut,
    Fut: std::future::Future<Output = SupervisedWorker>,
{
    let supervisor = Supervisor::new();
    // Each kill hits a worker that has run longer than the intensity period,
    // so each restart is the first of its run (immediate, no backoff): the
    // recovery from one crash, not from a crash loop, which the policy
    // rightly slows down.
    let within = Duration::from_millis(10);
    let policy = RestartPolicy::new().intensity(u32::MAX, within);
    let worker = supervise(supervisor.clone(), policy).await;
    let client = EchoClient::new(worker.channel());
    let options = CallOptions::new()
        .idempotent(true)
        .timeout(Duration::from_secs(10));
    let request = EchoRequest {
        text: "ping".into(),
        ..EchoRequest::default()
    };
    for _ in 0..100 {
        client.echo(request.clone()).await.unwrap();
    }
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        tokio::time::sleep(within * 2).await;
        let restarts = worker.restarts();
        let killed = match worker.pid() {
            Some(pid) => {
                // SAFETY: kill has no memory-safety preconditions; the pid is
                // our own child's, alive (a call just succeeded on it).
                let status = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                assert_eq!(status, 0, "kill {pid}");
                Instant::now()
            }
            None => {
                worker.kill();
                Instant::now()
            }
        };
        client
            .echo_with(request.clone(), options.clone())
            .await
            .unwrap_or_else(|error| panic!("{label}, round {round}: {error}"));
        samples.push(killed.elapsed());
        assert_eq!(
            worker.restarts(),
            restarts + 1,
            "{label}: one restart per kill"
        );
    }
    supervisor.shutdown().await;
    samples
}
