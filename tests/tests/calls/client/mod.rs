//! The host's side of a call, scripted frame by frame over an in-memory
//! transport where it helps: a worker that breaks the rules, what the host
//! sends and when (its own limits, waiting for room), how calls and streams
//! end, a supervised channel, and call options.

mod endings;
mod options;
mod rules;
mod sending;
mod supervised;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use workerbus::{Channel, Frame, MemoryTransport};
use workerbus_tests::pb::echo::{CountRequest, EchoClient, EchoRequest};

fn echo_request(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

fn count_request(count: u32) -> CountRequest {
    CountRequest {
        tag: "count".into(),
        from: 0,
        count,
        delay_ms: 0,
        fail_code: 0,
        padding: 0,
    }
}

/// The next frame the host sent, which must come within 20 s.
async fn sent(worker: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), worker.next())
        .await
        .expect("the host sends within 20 s")
        .expect("the host's end is open")
        .expect("a valid frame")
}

/// The id of the next request the host sent.
async fn request_id(worker: &mut MemoryTransport) -> u64 {
    match sent(worker).await {
        Frame::Request { id, .. } => id,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Waits until `channel` has closed, failing the test after 20 s.
async fn closed(channel: &Channel) {
    tokio::time::timeout(Duration::from_secs(20), channel.closed())
        .await
        .expect("the channel closes within 20 s");
}

/// The error a call on `channel` fails with once it has closed.
async fn closed_with(channel: &Channel) -> String {
    closed(channel).await;
    EchoClient::new(channel.clone())
        .echo(echo_request("after"))
        .await
        .expect_err("a call on a closed channel fails")
        .to_string()
}

/// A channel over an in-memory transport, its client, and the worker's end.
fn scripted() -> (Channel, EchoClient, MemoryTransport) {
    let (host, worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    (channel, client, worker)
}

/// Answers the next request with `payload`.
async fn answer(worker: &mut MemoryTransport, payload: Bytes) {
    let id = request_id(worker).await;
    worker
        .send(Frame::Response {
            id,
            payload: payload.into(),
        })
        .await
        .unwrap();
}
