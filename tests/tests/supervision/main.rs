//! Supervision: restarts after crashes (real processes, SIGKILL), what calls
//! see across them, starts that fail or hang, health checks, graceful
//! recycling, group strategies, stopping workers and supervisors, and what
//! a supervised worker's handle and events say of its processes.

mod calls;
mod groups;
mod handle;
mod health;
mod recycling;
mod restarts;
mod shutdown;
mod starts;

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;
use workerbus::{
    Backoff, Error, ProcessDriver, RestartPolicy, Spawn, SupervisedWorker, SupervisorEvent,
    ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    EchoClient, EchoRequest, EchoServer, ObserveRequest, SleepRequest, SleepState,
};
use workerbus_tests::support::expect;

/// The test worker program, `tests/src/bin/echo-worker.rs`.
const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");

fn process_driver() -> ProcessDriver {
    ProcessDriver::new(ECHO_WORKER)
}

fn thread_spawner() -> impl Spawn {
    ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()))
}

/// The restarts of the next start of the worker `name`.
async fn started(events: &mut broadcast::Receiver<SupervisorEvent>, name: &str) -> u32 {
    expect(events, "Started", |event| match event {
        SupervisorEvent::Started {
            worker, restarts, ..
        } if worker == name => Some(*restarts),
        _ => None,
    })
    .await
}

/// The restarts of the next start of any worker.
async fn any_started(events: &mut broadcast::Receiver<SupervisorEvent>) -> u32 {
    expect(events, "Started", |event| match event {
        SupervisorEvent::Started { restarts, .. } => Some(*restarts),
        _ => None,
    })
    .await
}

fn echo(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

async fn echo_ok(worker: &SupervisedWorker) {
    let reply = EchoClient::new(worker.channel())
        .echo(echo("ping"))
        .await
        .unwrap();
    assert_eq!(reply.text, "ping");
}

/// An echo of "ping" through `client`: its text.
async fn ping(client: &EchoClient) -> Result<String, Error> {
    let request = EchoRequest {
        text: "ping".into(),
        ..EchoRequest::default()
    };
    client.echo(request).await.map(|reply| reply.text)
}

/// Restarts at once, at most `max` times within `within`.
fn policy(max: u32, within: Duration) -> RestartPolicy {
    RestartPolicy::new()
        .backoff(Backoff::constant(Duration::ZERO))
        .intensity(max, within)
}

/// A sleep of `ms` on the worker behind `client`, once it has started there.
async fn sleeping(
    client: &EchoClient,
    tag: &str,
    ms: u64,
) -> impl Future<Output = Result<(), Error>> + use<> {
    let sleep = SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    };
    let client_for_sleep = client.clone();
    let mut call = Box::pin(async move { client_for_sleep.sleep(sleep).await });
    let started = ObserveRequest {
        tag: tag.into(),
        state: SleepState::Started.into(),
    };
    tokio::select! {
        biased; // the sleep is sent first
        result = &mut call => panic!("the sleep ended before it was observed: {result:?}"),
        result = client.observe(started) => result.expect("the sleep started"),
    }
    call
}
