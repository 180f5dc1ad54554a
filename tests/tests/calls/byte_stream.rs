//! The full call path over a byte stream with the frame codec (what the
//! process driver carries): every shared case, and garbage from either side.

use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use workerbus::{Channel, Error, FrameCodec, ServeOptions, serve_transport};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};
use workerbus_tests::{EchoWorker, cases};

#[tokio::test]
async fn every_shared_case_passes_over_a_byte_stream_with_the_frame_codec() {
    let (host, worker) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_transport(
        Framed::new(worker, FrameCodec::new()),
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new(),
    ));
    let channel = Channel::new(Framed::new(host, FrameCodec::new()));
    cases::all(&channel).await;
    drop(channel);
    served
        .await
        .unwrap()
        .expect("the worker stops cleanly when the host closes");
}

#[tokio::test]
async fn garbage_from_the_worker_fails_calls_with_a_clear_disconnection() {
    let (host, mut worker) = tokio::io::duplex(1024);
    let channel = Channel::new(Framed::new(host, FrameCodec::new()));
    let client = EchoClient::new(channel.clone());
    let call = client.echo(EchoRequest::default());
    let garbage = async {
        worker
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0x00])
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(call, garbage);
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: disconnected from the worker: frame of 4294967295 bytes exceeds the maximum frame length of 16777216 bytes"
    );
    assert!(matches!(error, Error::Disconnected { cause: Some(_), .. }));
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn garbage_from_the_host_ends_serving_with_a_clear_error() {
    let (mut host, worker) = tokio::io::duplex(1024);
    let served = tokio::spawn(serve_transport(
        Framed::new(worker, FrameCodec::new()),
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new(),
    ));
    host.write_all(&[0, 0, 0, 10, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        .await
        .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "unknown frame kind 0x2a");
}
