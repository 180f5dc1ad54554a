//! What a supervised worker's handle and events say of the worker: the pid
//! of each of its processes (in `Started` and the exit events, as the
//! handle's `pid()` gives it), and how it ended once it is down for good.

use workerbus::{ExitReason, Restart, RestartPolicy, Supervisor, SupervisorEvent};
use workerbus_tests::pb::echo::{EchoClient, ExitRequest};
use workerbus_tests::support::{expect, sigkill};

use crate::{echo_ok, process_driver, thread_spawner};

/// The restarts and pid of the next `Started` event.
async fn started(
    events: &mut tokio::sync::broadcast::Receiver<SupervisorEvent>,
) -> (u32, Option<u32>) {
    expect(events, "Started", |event| match event {
        SupervisorEvent::Started { restarts, pid, .. } => Some((*restarts, *pid)),
        _ => None,
    })
    .await
}

/// The exit and pid of the next `Exited` event.
async fn exited(
    events: &mut tokio::sync::broadcast::Receiver<SupervisorEvent>,
) -> (ExitReason, Option<u32>) {
    expect(events, "Exited", |event| match event {
        SupervisorEvent::Exited { exit, pid, .. } => Some((exit.clone(), *pid)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn each_start_and_exit_of_a_process_worker_names_its_pid() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise("echo", process_driver(), RestartPolicy::new())
        .await
        .unwrap();
    let (restarts, first) = started(&mut events).await;
    assert_eq!(restarts, 0);
    assert!(first.is_some(), "a process worker has a pid");
    assert_eq!(first, worker.pid());

    let mut pids = vec![first.unwrap()];
    for restart in 1..=2 {
        let old = worker.pid().expect("a process worker has a pid");
        sigkill(old);
        assert_eq!(
            exited(&mut events).await,
            (ExitReason::Signal(9), Some(old)),
            "the exit names the process that ended"
        );
        let (restarts, pid) = started(&mut events).await;
        assert_eq!(restarts, restart);
        // Recorded before the worker takes its first call: already current.
        assert_eq!(pid, worker.pid(), "the start names the new process");
        let pid = pid.expect("a process worker has a pid");
        assert!(!pids.contains(&pid), "{pid} is a new process");
        pids.push(pid);
        echo_ok(&worker).await;
    }

    // A stop names the process it stopped, too.
    supervisor.shutdown().await;
    let (_, pid) = exited(&mut events).await;
    assert_eq!(pid, pids.last().copied());
}

#[tokio::test]
async fn the_events_of_a_thread_worker_name_no_pid() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise("threaded", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    assert_eq!(started(&mut events).await, (0, None));
    assert_eq!(worker.pid(), None);
    worker.kill();
    assert_eq!(exited(&mut events).await, (ExitReason::Killed, None));
    assert_eq!(started(&mut events).await, (1, None));
    assert_eq!(worker.pid(), None);
    echo_ok(&worker).await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_supervised_worker_ends_only_when_it_is_down_for_good() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise("job", process_driver(), RestartPolicy::new())
        .await
        .unwrap();
    let ended = worker.watch_exit();
    started(&mut events).await;

    // One of its processes ends, and is replaced: the worker has not ended.
    sigkill(worker.pid().expect("a process worker has a pid"));
    assert_eq!(exited(&mut events).await.0, ExitReason::Signal(9));
    started(&mut events).await;
    assert_eq!(worker.last_exit(), Some(ExitReason::Signal(9)));
    assert_eq!(worker.exit_reason(), None);

    // The supervisor shuts down: the worker has ended, as its last process.
    supervisor.shutdown().await;
    let (last, _) = exited(&mut events).await;
    assert!(worker.is_down());
    assert_eq!(worker.exit_reason(), Some(last.clone()));
    assert_eq!(worker.last_exit(), Some(last.clone()));
    assert_eq!(worker.exited().await, last);
    assert_eq!(ended.await, last, "the future outlives nothing it borrows");
}

#[tokio::test]
async fn a_worker_its_policy_does_not_restart_ends_as_its_process_did() {
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise(
            "temporary",
            process_driver(),
            RestartPolicy::new().restart(Restart::Temporary),
        )
        .await
        .unwrap();
    let ended = worker.watch_exit();
    let _ = EchoClient::new(worker.channel())
        .exit(ExitRequest { code: 3 })
        .await;
    assert_eq!(ended.await, ExitReason::Code(3));
    assert!(worker.is_down());
    assert_eq!(worker.exit_reason(), Some(ExitReason::Code(3)));
    supervisor.shutdown().await;
    assert_eq!(
        worker.exit_reason(),
        Some(ExitReason::Code(3)),
        "a shutdown after the end changes nothing"
    );
}
