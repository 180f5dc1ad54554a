//! Group strategies: one for all, rest for one, each in start order.

use workerbus::{RestartPolicy, Strategy, Supervisor, SupervisorEvent};
use workerbus_tests::support::expect;

use crate::{echo_ok, started, thread_spawner};

#[tokio::test]
async fn one_for_all_restarts_the_whole_group_in_order() {
    let supervisor = Supervisor::with_strategy(Strategy::OneForAll);
    let mut events = supervisor.subscribe();
    let a = supervisor
        .supervise("a", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let b = supervisor
        .supervise("b", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let c = supervisor
        .supervise("c", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    for name in ["a", "b", "c"] {
        started(&mut events, name).await;
    }
    b.kill();
    let mut order = Vec::new();
    while order.len() < 3 {
        let name = expect(&mut events, "Started", |event| match event {
            SupervisorEvent::Started { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .await;
        order.push(name);
    }
    assert_eq!(order, ["a", "b", "c"], "restarted in start order");
    assert_eq!((a.restarts(), b.restarts(), c.restarts()), (1, 1, 1));
    for worker in [&a, &b, &c] {
        echo_ok(worker).await;
    }
    supervisor.shutdown().await;
}

#[tokio::test]
async fn rest_for_one_restarts_the_worker_and_those_started_after_it() {
    let supervisor = Supervisor::with_strategy(Strategy::RestForOne);
    let mut events = supervisor.subscribe();
    let a = supervisor
        .supervise("a", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let b = supervisor
        .supervise("b", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let c = supervisor
        .supervise("c", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    for name in ["a", "b", "c"] {
        started(&mut events, name).await;
    }
    b.kill();
    assert_eq!(started(&mut events, "b").await, 1);
    assert_eq!(started(&mut events, "c").await, 1);
    assert_eq!((a.restarts(), b.restarts(), c.restarts()), (0, 1, 1));
    for worker in [&a, &b, &c] {
        echo_ok(worker).await;
    }
    supervisor.shutdown().await;
}
