//! A call's life in the serve loop: its deadline, whether it runs or waits
//! for the limit of calls running at once, a cancellation, even of a call
//! that cannot be interrupted, and a shutdown or a serve loop dropped while
//! calls run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{Frame, MemoryTransport, ServeOptions, Status, serve_transport};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoReply, EchoServer, SleepRequest, SleepState};

use super::{echo, next, observe, request, serve, sleep};

#[tokio::test]
async fn a_call_past_its_deadline_is_cancelled_and_not_answered() {
    let (mut host, _served) = serve(ServeOptions::new());
    host.send(sleep(
        1,
        "deadline",
        60_000,
        Some(Duration::from_millis(50)),
    ))
    .await
    .unwrap();
    host.send(observe(2, "deadline", SleepState::Cancelled))
        .await
        .unwrap();
    // The only answer is the observer's: the sleep was dropped, unanswered.
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 2,
            payload: Bytes::new().into()
        }
    );
    host.send(echo(3, "after")).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 3, .. }
    ));
}

#[tokio::test]
async fn a_call_whose_deadline_passes_while_it_waits_never_starts() {
    let (mut host, _served) = serve(ServeOptions::new().max_concurrent_calls(1));
    host.send(sleep(1, "holder", 300, None)).await.unwrap();
    host.send(sleep(2, "expired", 10, Some(Duration::from_millis(20))))
        .await
        .unwrap();
    host.send(observe(3, "holder", SleepState::Finished))
        .await
        .unwrap();
    // Ids 1 and 3 are answered once the holder finishes; 2 never runs.
    let mut answered = [next(&mut host).await.id(), next(&mut host).await.id()];
    answered.sort();
    assert_eq!(answered, [1, 3]);
    host.send(echo(4, "probe")).await.unwrap();
    assert_eq!(next(&mut host).await.id(), 4);
    host.send(request(5, "echo.stats", &())).await.unwrap();
    let Frame::Response { id: 5, payload } = next(&mut host).await else {
        panic!("expected stats");
    };
    let stats = workerbus_tests::pb::echo::StatsReply::decode(payload.into_bytes()).unwrap();
    assert_eq!(stats.peak_concurrency, 1);
    assert_eq!(
        stats.sleeps_cancelled, 0,
        "the expired call never started, so was never cancelled"
    );
}

/// A call cancelled at its deadline frees its slot for a waiting call, and
/// lets a shutdown complete, without any other frame arriving.
#[tokio::test]
async fn a_deadline_frees_the_slot_and_lets_shutdown_finish() {
    let (mut host, worker) = MemoryTransport::pair();
    let served = tokio::spawn(serve_transport(
        worker,
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new().max_concurrent_calls(1),
    ));
    host.send(sleep(
        1,
        "expires",
        60_000,
        Some(Duration::from_millis(100)),
    ))
    .await
    .unwrap();
    host.send(echo(2, "waiting")).await.unwrap();
    assert_eq!(next(&mut host).await.id(), 2);
    host.send(sleep(
        3,
        "expires too",
        60_000,
        Some(Duration::from_millis(100)),
    ))
    .await
    .unwrap();
    host.send(Frame::Shutdown).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), host.next())
        .await
        .expect("the worker finished its shutdown");
    assert!(end.is_none(), "{end:?}");
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_over_the_limit_wait_in_order_and_can_be_cancelled_while_waiting() {
    let (mut host, _served) = serve(ServeOptions::new().max_concurrent_calls(1));
    host.send(sleep(1, "first", 60_000, None)).await.unwrap();
    host.send(echo(2, "queued")).await.unwrap();
    host.send(echo(3, "also queued")).await.unwrap();
    host.send(Frame::Cancel { id: 2 }).await.unwrap();
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    // Call 1 is cancelled, 2 never starts, 3 gets the free slot.
    let Frame::Response { id: 3, payload } = next(&mut host).await else {
        panic!("expected the answer to call 3");
    };
    let reply = workerbus_tests::pb::echo::EchoReply::decode(payload.into_bytes()).unwrap();
    assert_eq!(reply.text, "also queued");
}

#[tokio::test]
async fn a_request_beyond_the_queue_is_answered_busy_at_once() {
    let (mut host, _served) = serve(
        ServeOptions::new()
            .max_concurrent_calls(1)
            .max_queued_calls(1),
    );
    host.send(sleep(1, "running", 60_000, None)).await.unwrap();
    host.send(echo(2, "queued")).await.unwrap();
    host.send(echo(3, "shed")).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Status {
            id: 3,
            status: Status::unavailable(
                "echo.echo was not started: the worker is busy (1 calls running, 1 waiting)"
            ),
        }
    );
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
}

#[tokio::test]
async fn a_zero_queue_still_runs_calls_while_slots_are_free() {
    let (mut host, _served) = serve(
        ServeOptions::new()
            .max_concurrent_calls(2)
            .max_queued_calls(0),
    );
    host.send(echo(1, "a")).await.unwrap();
    host.send(echo(2, "b")).await.unwrap();
    let mut answered = [next(&mut host).await, next(&mut host).await];
    answered.sort_by_key(Frame::id);
    assert!(matches!(answered[0], Frame::Response { id: 1, .. }));
    assert!(matches!(answered[1], Frame::Response { id: 2, .. }));
}

/// A `sleep` that blocks its thread: no abort can interrupt it.
fn blocking_sleep(id: u64, tag: &str, ms: u64) -> Frame {
    let message = SleepRequest {
        tag: tag.into(),
        ms,
        blocking: true,
    };
    request(id, "echo.sleep", &message)
}

/// A request may reuse the id of one it cancelled; the cancelled call, even
/// one that cannot be interrupted, must not answer in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_cancelled_call_never_answers_for_a_later_call_with_its_id() {
    let (mut host, worker) = MemoryTransport::pair();
    let handler = Arc::new(EchoWorker::new());
    tokio::spawn(serve_transport(
        worker,
        EchoServer::from_arc(Arc::clone(&handler)),
        ServeOptions::new(),
    ));
    host.send(blocking_sleep(5, "uninterruptible", 500))
        .await
        .unwrap();
    // Its thread is now blocked inside the handler: an abort cannot stop it.
    handler
        .wait_for("uninterruptible", SleepState::Started)
        .await;
    host.send(Frame::Cancel { id: 5 }).await.unwrap();
    host.send(echo(5, "second")).await.unwrap();
    let Frame::Response { id: 5, payload } = next(&mut host).await else {
        panic!("expected the answer to the second call 5");
    };
    assert_eq!(
        EchoReply::decode(payload.into_bytes()).unwrap().text,
        "second"
    );
    // And nothing else arrives for id 5 once the blocked handler returns.
    handler
        .wait_for("uninterruptible", SleepState::Finished)
        .await;
    host.send(echo(6, "probe")).await.unwrap();
    assert_eq!(next(&mut host).await.id(), 6);
}

#[tokio::test]
async fn shutdown_refuses_new_calls_finishes_running_ones_then_closes() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sleep(1, "draining", 50, None)).await.unwrap();
    host.send(observe(2, "draining", SleepState::Started))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
    host.send(Frame::Shutdown).await.unwrap();
    host.send(echo(3, "too late")).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Status {
            id: 3,
            status: Status::unavailable("echo.echo was not started: the worker is shutting down"),
        }
    );
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 1,
            payload: Bytes::new().into()
        }
    );
    assert!(
        host.next().await.is_none(),
        "the worker closes after draining"
    );
    served.await.unwrap().unwrap();
}

/// Dropping the serve future (e.g. aborting its task) cancels every call.
#[tokio::test]
async fn dropping_the_serve_loop_cancels_its_calls() {
    let (mut host, worker) = MemoryTransport::pair();
    let handler = Arc::new(EchoWorker::new());
    let served = tokio::spawn(serve_transport(
        worker,
        EchoServer::from_arc(Arc::clone(&handler)),
        ServeOptions::new(),
    ));
    host.send(sleep(1, "abandoned", 60_000, None))
        .await
        .unwrap();
    handler.wait_for("abandoned", SleepState::Started).await;
    served.abort();
    tokio::time::timeout(
        Duration::from_secs(20),
        handler.wait_for("abandoned", SleepState::Cancelled),
    )
    .await
    .expect("the handler was cancelled");
}
