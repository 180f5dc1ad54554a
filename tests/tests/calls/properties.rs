//! Properties of generated messages on the way through: any message the
//! generated code can hold survives prost encoding, the frame codec (fed in
//! arbitrary pieces) and a real call through a worker, unchanged.
//!
//! The frame codec's own round trip over arbitrary frames is a property in
//! `runtime/src/frame.rs`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};
use workerbus::{Frame, FrameCodec, MethodName, ThreadDriver, ThreadWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::common::{Order, Page};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

fn echo_request() -> impl Strategy<Value = EchoRequest> {
    (
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(text, data)| EchoRequest {
            text,
            data: Bytes::from(data),
            delay_ms: 0,
        })
}

fn page() -> impl Strategy<Value = Page> {
    (any::<u32>(), any::<String>(), 0..3i32).prop_map(|(limit, cursor, order)| Page {
        limit,
        cursor,
        order,
    })
}

/// Encodes `frame`, then decodes it from the bytes cut into pieces at
/// `cuts`, as a socket might deliver them.
fn through_the_codec(frame: Frame, cuts: &[usize]) -> Frame {
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    codec.encode(frame, &mut wire).expect("encode");
    let wire = wire.freeze();
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    let mut buffer = BytesMut::new();
    let mut start = 0;
    let mut decoded = None;
    for point in points {
        buffer.extend_from_slice(&wire[start..point]);
        start = point;
        if let Some(frame) = codec.decode(&mut buffer).expect("decode") {
            assert!(decoded.is_none(), "two frames from one");
            decoded = Some(frame);
        }
    }
    assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
    decoded.expect("a whole frame decodes once all bytes are in")
}

proptest! {
    #[test]
    fn generated_messages_round_trip_through_prost(request in echo_request(), page in page()) {
        prop_assert_eq!(EchoRequest::decode(request.encode_to_vec().as_slice()).unwrap(), request);
        prop_assert_eq!(Page::decode(page.encode_to_vec().as_slice()).unwrap(), page.clone());
        let _ = Order::try_from(page.order).expect("a known order");
    }

    #[test]
    fn generated_messages_round_trip_through_the_frame_codec(
        request in echo_request(),
        id in 1..u64::MAX,
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let payload = Bytes::from(request.encode_to_vec());
        let sent = Frame::request(id, MethodName::from_static("echo.echo"), None, 1, payload);
        let received = through_the_codec(sent.clone(), &cuts);
        prop_assert_eq!(&received, &sent);
        let Frame::Request { payload, .. } = received else { unreachable!() };
        prop_assert_eq!(EchoRequest::decode(payload.into_bytes()).unwrap(), request);
    }
}

/// One worker for every case of the property below.
fn worker() -> (tokio::runtime::Runtime, ThreadWorker) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker = runtime
        .block_on(ThreadDriver::new().spawn(EchoServer::new(EchoWorker::new())))
        .unwrap();
    (runtime, worker)
}

#[test]
fn generated_messages_round_trip_through_a_worker() {
    let (runtime, worker) = worker();
    let client = EchoClient::new(worker.channel());
    let config = ProptestConfig::with_cases(128);
    proptest!(config, |(request in echo_request(), page in page())| {
        let (reply, echoed) = runtime.block_on(async {
            (
                client.echo(request.clone()).await.expect("echo"),
                client.page(page.clone()).await.expect("page"),
            )
        });
        prop_assert_eq!(reply.text, request.text);
        prop_assert_eq!(reply.data, request.data);
        prop_assert_eq!(echoed, page);
    });
}
