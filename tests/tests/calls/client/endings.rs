//! How calls and streams end on the host: a stream ended by its answer (no
//! `CANCEL`, no more requests taken), a stream answered by a middleware, a
//! request stream cut off by a lost connection, and calls whose
//! connection's runtime shuts down.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use prost::Message;
use workerbus::{
    CallInfo, CallOptions, Channel, Error, Frame, MemoryTransport, Middleware, Next, ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    CountReply, EchoClient, EchoRequest, EchoServer, SleepRequest, SumRequest,
};

use super::{answer, closed, count_request, echo_request, request_id, scripted, sent};

#[tokio::test]
async fn a_streaming_call_that_ends_with_its_answer_sends_no_cancel() {
    let (_channel, client, mut worker) = scripted();
    let mut stream = client.count(count_request(1)).await.unwrap();
    let id = request_id(&mut worker).await;
    let item = CountReply {
        value: 7,
        padding: Bytes::new(),
    };
    let payload = Bytes::from(item.encode_to_vec());
    worker.send(Frame::Item { id, payload }).await.unwrap();
    let payload = Bytes::new();
    worker
        .send(Frame::Response {
            id,
            payload: payload.into(),
        })
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap(), Some(item));
    assert_eq!(stream.message().await.unwrap(), None);
    let (reply, ()) = tokio::join!(
        client.echo(echo_request("next")),
        answer(&mut worker, Bytes::new())
    );
    reply.expect("the next call is the next frame the worker reads");

    let requests = futures_util::stream::empty::<SumRequest>();
    let script = async {
        let id = request_id(&mut worker).await;
        assert_eq!(sent(&mut worker).await, Frame::End { id });
        let payload = Bytes::new();
        worker
            .send(Frame::Response {
                id,
                payload: payload.into(),
            })
            .await
            .unwrap();
    };
    let (sum, ()) = tokio::join!(client.sum(requests), script);
    sum.unwrap();
    let (reply, ()) = tokio::join!(
        client.echo(echo_request("next")),
        answer(&mut worker, Bytes::new())
    );
    reply.expect("the next call is the next frame the worker reads");
}

#[tokio::test]
async fn a_call_streaming_both_ways_stops_taking_requests_once_answered() {
    let (_channel, client, mut worker) = scripted();
    let (items, requests) = tokio::sync::mpsc::unbounded_channel::<EchoRequest>();
    let requests = futures_util::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|request| (request, requests))
    });
    let mut chat = client.chat(requests).await.unwrap();
    let id = request_id(&mut worker).await;
    let status = workerbus::Status::failed_precondition("no chatting today");
    worker.send(Frame::Status { id, status }).await.unwrap();
    let error = chat.message().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.chat failed: failed precondition: no chatting today"
    );
    // The call is over: the sender stops and drops the caller's stream of
    // requests, without waiting for its next request.
    tokio::time::timeout(Duration::from_secs(20), items.closed())
        .await
        .expect("the requests are dropped once the call is over");
    assert!(items.send(echo_request("too late")).is_err());
}

#[tokio::test]
async fn a_middleware_answering_a_call_streaming_both_ways_gives_an_empty_stream() {
    struct Answers;
    impl Middleware for Answers {
        async fn call(
            &self,
            _call: &CallInfo,
            _next: Next<'_>,
        ) -> Result<workerbus::Payload, Error> {
            Ok(Bytes::new().into())
        }
    }
    let (host, _worker) = MemoryTransport::pair();
    let channel = Channel::new(host).with_middleware(Answers);
    let mut chat = EchoClient::new(channel.clone())
        .chat(futures_util::stream::iter([echo_request("unsent")]))
        .await
        .unwrap();
    assert!(chat.message().await.unwrap().is_none());
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn a_request_stream_cut_off_by_a_lost_connection_fails_the_call() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let (items, requests) = tokio::sync::mpsc::unbounded_channel::<SumRequest>();
    let requests = futures_util::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|request| (request, requests))
    });
    items.send(SumRequest::default()).unwrap();
    let script = async {
        request_id(&mut worker).await;
        assert!(matches!(sent(&mut worker).await, Frame::Item { .. }));
        drop(worker);
        closed(&channel).await;
        // The caller's stream stays open, with nothing more to send: the
        // call ends with the connection all the same.
    };
    // Without a timeout too, the call ends with the connection.
    let forever = CallOptions::new().no_timeout();
    let (result, ()) = tokio::join!(client.sum_with(requests, forever), script);
    let error = result.unwrap_err();
    assert!(
        matches!(error, Error::Disconnected { cause: None, .. }),
        "{error:?}"
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
