//! The server's production parts: health that follows a supervised worker,
//! the listener's limits, compression, a graceful drain, and middleware on
//! the bridge.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use workerbus::{Metrics, Restart, RestartPolicy, Side, Supervisor, ThreadDriver, Worker};
use workerbus_grpc::{Compression, GrpcDriver, GrpcServer, GrpcWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{
    EchoClient, EchoReply, EchoRequest, EchoServer, FailRequest, SleepRequest,
};

async fn listen() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

async fn connect(
    address: std::net::SocketAddr,
    driver: impl FnOnce(GrpcDriver) -> GrpcDriver,
) -> GrpcWorker {
    driver(GrpcDriver::new(format!("http://{address}")))
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap()
}

async fn tonic_channel(address: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_supervised_worker() {
    let supervisor = Supervisor::new();
    let spawner = ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()));
    let policy = RestartPolicy::new()
        .restart(Restart::Temporary)
        .without_health_check();
    let worker = supervisor.supervise("echo", spawner, policy).await.unwrap();
    let (listener, address) = listen().await;
    let server = GrpcServer::new().add_supervised(&EchoClient::SCHEMA, &worker);
    tokio::spawn(server.serve(listener));
    let mut health = HealthClient::new(tonic_channel(address).await);
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: "echo.Echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || statuses.message().await.unwrap().unwrap().status;
    assert_eq!(next().await, ServingStatus::Serving as i32);
    // A temporary worker that ends is not restarted: down for good.
    worker.kill();
    assert_eq!(next().await, ServingStatus::NotServing as i32);
    assert!(worker.is_down());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_runs_no_more_calls_at_once_than_its_stream_limit() {
    let (listener, address) = listen().await;
    let server = GrpcServer::new()
        .max_concurrent_streams(1)
        .add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let worker = connect(address, |d| d.connections_per_endpoint(1)).await;
    let client = EchoClient::new(worker.channel());
    let sleeps = (0..4).map(|i| {
        client.sleep(SleepRequest {
            tag: format!("one at a time {i}"),
            ms: 50,
            blocking: false,
        })
    });
    for slept in futures_util::future::join_all(sleeps).await {
        slept.unwrap();
    }
    assert_eq!(client.stats(()).await.unwrap().peak_concurrency, 1);
}

/// Reads from `stream` until the server closes it; how many bytes it sent.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> usize {
    let mut buffer = [0u8; 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_closed_at_once() {
    let (listener, address) = listen().await;
    let server = GrpcServer::new()
        .max_connections(1)
        .add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let worker = connect(address, |d| d.connections_per_endpoint(1)).await;
    cases::unary_round_trip(&worker.channel()).await;
    // The one connection is the driver's: another is closed unread.
    let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut second)).await;
    assert_eq!(closed, Ok(0));
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_the_http2_preface_is_closed() {
    let (listener, address) = listen().await;
    let server = GrpcServer::new()
        .handshake_timeout(Duration::from_millis(200))
        .add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    // Silent: closed once the deadline passes.
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut silent)).await;
    assert_eq!(closed, Ok(0));
    // Another protocol: closed, unanswered.
    let mut other = tokio::net::TcpStream::connect(address).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut other)).await;
    assert_eq!(closed, Ok(0));
    // Half a preface, and then nothing: closed at the deadline.
    let mut trickle = tokio::net::TcpStream::connect(address).await.unwrap();
    trickle.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut trickle)).await;
    assert_eq!(closed, Ok(0));
    // A gRPC client is served.
    let worker = connect(address, |d| d).await;
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_compressed_when_the_caller_asks() {
    let (listener, address) = listen().await;
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    for compression in [Compression::Gzip, Compression::Zstd] {
        let worker = connect(address, |d| d.compression(compression)).await;
        cases::unary_round_trip(&worker.channel()).await;
        cases::large_payloads_round_trip(&worker.channel()).await;
    }
    // The server answers compressed, as asked, and only then.
    for (encoding, name) in [
        (Some(CompressionEncoding::Gzip), Some("gzip")),
        (Some(CompressionEncoding::Zstd), Some("zstd")),
        (None, None),
    ] {
        let mut grpc = tonic::client::Grpc::new(tonic_channel(address).await);
        if let Some(encoding) = encoding {
            grpc = grpc.send_compressed(encoding).accept_compressed(encoding);
        }
        grpc.ready().await.unwrap();
        let request = prost::Message::encode_to_vec(&EchoRequest {
            text: "squeeze".into(),
            data: Bytes::from(vec![b'z'; 64 * 1024]),
            ..EchoRequest::default()
        });
        let response = grpc
            .unary(
                tonic::Request::new(Bytes::from(request)),
                http::uri::PathAndQuery::from_static("/echo.Echo/Echo"),
                workerbus_grpc::BytesCodec,
            )
            .await
            .unwrap();
        let used = response
            .metadata()
            .get("grpc-encoding")
            .map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(used.as_deref(), name);
        let reply: EchoReply = prost::Message::decode(response.into_inner()).unwrap();
        assert_eq!(reply.text, "squeeze");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_calls_in_flight_finish_and_takes_no_more() {
    let (listener, address) = listen().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    let serving = tokio::spawn(server.serve_with_shutdown(listener, async {
        let _ = stopped.await;
    }));
    let worker = connect(address, |d| d).await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let sleep = tokio::spawn(async move {
        client
            .sleep(SleepRequest {
                tag: "drained".into(),
                ms: 300,
                blocking: false,
            })
            .await
    });
    cases::observe(
        &channel,
        "drained",
        workerbus_tests::pb::echo::SleepState::Started,
    )
    .await;
    stop.send(()).unwrap();
    sleep.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_middleware_sees_every_call_the_bridge_makes() {
    let metrics = Metrics::new();
    let serving = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let (listener, address) = listen().await;
    let server = GrpcServer::new().add_channel(
        &EchoClient::SCHEMA,
        serving.channel().with_middleware(metrics.clone()),
    );
    tokio::spawn(server.serve(listener));
    let worker = connect(address, |d| d).await;
    let client = EchoClient::new(worker.channel());
    for _ in 0..3 {
        client.echo(EchoRequest::default()).await.unwrap();
    }
    let failing = FailRequest {
        code: workerbus::Code::NotFound.as_u32(),
        message: "no such thing".into(),
        ..FailRequest::default()
    };
    client.fail(failing).await.unwrap_err();
    let snapshot = metrics.snapshot();
    let echo = snapshot
        .method(Side::Host, "echo.echo")
        .expect("echo calls");
    assert_eq!((echo.calls(), echo.ok()), (3, 3));
    let fail = snapshot
        .method(Side::Host, "echo.fail")
        .expect("failed calls");
    assert_eq!((fail.calls(), fail.failed()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_the_limit_is_refused_and_the_connection_goes_on() {
    let (listener, address) = listen().await;
    let server = GrpcServer::new()
        .max_header_list_size(4 * 1024)
        .add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let mut grpc = tonic::client::Grpc::new(tonic_channel(address).await);
    let echo = |grpc: &mut tonic::client::Grpc<tonic::transport::Channel>, padding: usize| {
        let mut request =
            tonic::Request::new(Bytes::from(prost::Message::encode_to_vec(&EchoRequest {
                text: "headers".into(),
                ..EchoRequest::default()
            })));
        request
            .metadata_mut()
            .insert("padding", "x".repeat(padding).parse().unwrap());
        let mut grpc = grpc.clone();
        async move {
            grpc.ready().await.unwrap();
            grpc.unary(
                request,
                http::uri::PathAndQuery::from_static("/echo.Echo/Echo"),
                workerbus_grpc::BytesCodec,
            )
            .await
        }
    };
    assert!(
        echo(&mut grpc, 6 * 1024).await.is_err(),
        "a 6 KiB header was taken"
    );
    // A call within the limit, on the same client, is served.
    let response = echo(&mut grpc, 1024).await.unwrap();
    let reply: EchoReply = prost::Message::decode(response.into_inner()).unwrap();
    assert_eq!(reply.text, "headers");
}

/// An HTTP/2 connection of `h2`'s own client to `address`: its handle, and
/// the connection, not yet driven, so that what is queued on the handle
/// leaves in one write once it is.
async fn bare_h2(
    address: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<tokio::net::TcpStream>,
) {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    h2::client::handshake(tcp).await.unwrap()
}

/// An Echo call's request headers, for `h2` itself.
fn echo_request() -> http::Request<()> {
    http::Request::post("http://workerbus.test/echo.Echo/Echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Queues `count` Echo calls on `send`, each reset (CANCEL) as soon as it
/// is opened: HEADERS then RST_STREAM, for streams the server has not yet
/// accepted.
fn open_and_reset(send: &mut h2::client::SendRequest<Bytes>, count: usize) {
    for _ in 0..count {
        let (_response, mut stream) = send.send_request(echo_request(), false).unwrap();
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// An Echo call over `send`, read to its end: the reply's text.
async fn echo_over(send: h2::client::SendRequest<Bytes>, text: &str) -> String {
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(echo_request(), false).unwrap();
    let message = prost::Message::encode_to_vec(&EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    });
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    stream.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        received.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let reply: EchoReply = prost::Message::decode(&received[5..]).unwrap();
    reply.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_streams_reset_before_the_server_accepts_them_closes_the_connection() {
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    resets_beyond_the_bound_close_the_connection(
        server,
        workerbus_grpc::DEFAULT_MAX_PENDING_RESETS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_on_reset_streams_is_the_servers_to_set() {
    let server = GrpcServer::new()
        .max_pending_resets(5)
        .add_service(EchoServer::new(EchoWorker::new()));
    resets_beyond_the_bound_close_the_connection(server, 5).await;
}

/// `bound` resets at once leave a connection serving; five times as many
/// close it with `ENHANCE_YOUR_CALM`; a new connection is served as ever.
async fn resets_beyond_the_bound_close_the_connection(server: GrpcServer, bound: usize) {
    let (listener, address) = listen().await;
    tokio::spawn(server.serve(listener));

    // As many as the bound, all in one write: the connection goes on, and
    // serves a call.
    let (mut send, connection) = bare_h2(address).await;
    open_and_reset(&mut send, bound);
    let driven = tokio::spawn(connection);
    assert_eq!(
        echo_over(send, "after the resets").await,
        "after the resets"
    );
    driven.abort();

    // Five times as many: the server ends the connection, telling the client
    // to calm down, rather than take reset after reset. (The connection is
    // settled first, by a call: the client has nothing left to write after
    // the resets, so a write to the closed socket cannot hide the GOAWAY.)
    let (mut send, connection) = bare_h2(address).await;
    let mut connection = std::pin::pin!(connection);
    let settled = tokio::select! {
        text = echo_over(send.clone(), "before the resets") => text,
        ended = &mut connection => panic!("the connection ended: {ended:?}"),
    };
    assert_eq!(settled, "before the resets");
    open_and_reset(&mut send, bound * 5);
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the connection was not closed");
    let error = ended.expect_err("the connection ended without an error");
    assert!(error.is_go_away() && error.is_remote(), "{error:?}");
    assert_eq!(
        error.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{error:?}"
    );

    // Another connection is served as ever.
    let worker = connect(address, |d| d).await;
    cases::unary_round_trip(&worker.channel()).await;
}
