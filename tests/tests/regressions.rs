//! One test per bug found in review, each failing on the code before its fix.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{
    CallOptions, Channel, ChannelOptions, Error, Frame, MemoryTransport, MethodName, ServeOptions,
    ThreadDriver, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    EchoClient, EchoReply, EchoRequest, EchoServer, SleepRequest, SleepState,
};

fn request(
    id: u64,
    method: &'static str,
    timeout: Option<Duration>,
    message: &impl Message,
) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        timeout,
        1,
        Bytes::from(message.encode_to_vec()),
    )
}

fn sleep(id: u64, tag: &str, ms: u64, blocking: bool, timeout: Option<Duration>) -> Frame {
    let message = SleepRequest {
        tag: tag.into(),
        ms,
        blocking,
    };
    request(id, "echo.sleep", timeout, &message)
}

fn echo(id: u64, text: &str) -> Frame {
    let message = EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    };
    request(id, "echo.echo", None, &message)
}

async fn next(transport: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), transport.next())
        .await
        .expect("an answer within 20 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// A worker that stops reading must not make the host buffer every request:
/// calls wait for room within their timeout, and requests that never left
/// are withdrawn, not followed by a CANCEL.
#[tokio::test]
async fn a_worker_that_does_not_read_does_not_make_the_host_buffer_without_bound() {
    let (host, mut worker) = MemoryTransport::pair_with_capacity(4);
    let channel = Channel::with_options(host, ChannelOptions::new().max_queued_bytes(1024 * 1024));
    let client = EchoClient::new(channel.clone());
    let options = CallOptions::new().timeout(Duration::from_millis(50));
    let payload = Bytes::from(vec![7; 256 * 1024]);
    let calls = (0..100).map(|_| {
        client.echo_with(
            EchoRequest {
                data: payload.clone(),
                ..EchoRequest::default()
            },
            options.clone(),
        )
    });
    for result in futures_util::future::join_all(calls).await {
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }
    assert_eq!(channel.in_flight(), 0);
    drop(client);
    drop(channel);
    // What reached the worker: the few requests the transport took, and a
    // CANCEL for each; nothing for the calls that never left the host.
    let mut requests = 0;
    while let Some(frame) = worker.next().await {
        if matches!(frame.unwrap(), Frame::Request { .. }) {
            requests += 1;
        }
    }
    assert!(
        requests <= 16,
        "{requests} of 100 requests were queued for a worker that was not reading"
    );
}

/// Calls must not hang when the runtime that ran the connection's link task
/// shuts down.
#[tokio::test]
async fn calls_end_when_the_runtime_running_the_connection_shuts_down() {
    let (made, channel) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let worker =
            runtime.block_on(ThreadDriver::new().spawn(EchoServer::new(EchoWorker::new())));
        made.send(worker.unwrap().channel()).unwrap();
        stopped.recv().unwrap();
        drop(runtime);
    });
    let channel: Channel = tokio::task::spawn_blocking(move || channel.recv().unwrap())
        .await
        .unwrap();
    let client = EchoClient::new(channel.clone());
    let call = client.sleep_with(
        SleepRequest {
            tag: "orphaned".into(),
            ms: 60_000,
            blocking: false,
        },
        CallOptions::new().no_timeout(),
    );
    // Runtime A is parked outside `block_on`: its link task cannot run, so
    // the call stays queued until A is dropped; it must then end.
    let shut_down = async {
        tokio::task::yield_now().await;
        stop.send(()).unwrap();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(call, shut_down)
    })
    .await
    .expect("the call ended instead of hanging");
    assert!(
        matches!(result, Err(Error::Disconnected { .. })),
        "{result:?}"
    );
    other.join().unwrap();
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
        false,
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
        false,
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
    host.send(sleep(5, "uninterruptible", 500, true, None))
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
    assert_eq!(EchoReply::decode(payload).unwrap().text, "second");
    // And nothing else arrives for id 5 once the blocked handler returns.
    handler
        .wait_for("uninterruptible", SleepState::Finished)
        .await;
    host.send(echo(6, "probe")).await.unwrap();
    assert_eq!(next(&mut host).await.id(), 6);
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
    host.send(sleep(1, "abandoned", 60_000, false, None))
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
