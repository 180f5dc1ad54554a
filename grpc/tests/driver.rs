//! The gRPC driver against the gRPC server on loopback: the behaviour
//! suite every driver passes (`workerbus_tests::cases`), then what only a
//! network driver has (endpoints, connections, reconnection).

use std::time::Duration;

use bytes::Bytes;

use workerbus::{
    Backoff, CallOptions, Channel, Code, Error, RestartPolicy, Supervisor, SupervisorEvent, Worker,
};
use workerbus_grpc::{GrpcDriver, GrpcServer, GrpcWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::cases::{self, Differences};
use workerbus_tests::pb::echo::{
    CountRequest, EchoClient, EchoReply, EchoRequest, EchoServer, HeadersRequest, MissingClient,
    SleepRequest, SumRequest, echo_events_service,
};

/// A server of the Echo service on a loopback port; its address.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new()
        .add_service(EchoServer::new(EchoWorker::new()))
        .add_events(&echo_events_service::SCHEMA);
    tokio::spawn(server.serve(listener));
    format!("http://{address}")
}

async fn connect(address: &str) -> GrpcWorker {
    GrpcDriver::new(address)
        .serves(&EchoClient::SCHEMA)
        .events(&echo_events_service::SCHEMA)
        .connect()
        .await
        .unwrap()
}

/// What gRPC does differently, as the README's driver table says: HTTP/2
/// windows and send buffers count bytes (with hyper's defaults, at most a
/// 2 MiB receive window and a 1 MiB send buffer each way: 3 MiB, and a
/// little of the codec's), header blocks keep the order of each key's
/// entries only, and the server answers a path it does not route.
const GRPC: Differences = Differences {
    transport_bytes: 3 << 20,
    metadata_order_across_keys: false,
    worker_answers_unknown_methods: false,
    events_before_answers: false,
};

async fn fresh() -> (GrpcWorker, Channel) {
    let worker = connect(&serve().await).await;
    let channel = worker.channel();
    (worker, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::all_with(&channel, &GRPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::streams_with(&channel, &GRPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::metadata_with(&channel, &GRPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_way_and_event_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::one_way_and_events_with(&channel, &GRPC).await;
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stream_with_nothing_to_send_ends_with_its_worker() {
    let (worker, channel) = fresh().await;
    cases::a_request_stream_with_nothing_to_send_ends_with_its_worker(&channel, || worker.kill())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_serving_another_schema_is_refused_naming_the_difference() {
    let address = serve().await;
    let error = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .serves(&MissingClient::SCHEMA)
        .connect()
        .await
        .unwrap_err();
    match &error {
        Error::Handshake { reason, .. } => assert!(
            reason.contains("the worker does not serve echo.Missing (it serves: echo.Echo)"),
            "{reason}"
        ),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

/// A gRPC server that is not workerbus's: tonic's own, serving health only.
async fn plain_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_describe_itself_is_accepted_unless_a_check_is_required() {
    let address = plain_server().await;
    let unchecked = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    // Connected, and its calls are the server's to answer.
    let error = EchoClient::new(unchecked.channel())
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        error.status().map(|s| s.code()),
        Some(Code::Unimplemented),
        "{error}"
    );
    let error = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .require_schema_check()
        .connect()
        .await
        .unwrap_err();
    match &error {
        Error::Handshake { reason, .. } => {
            assert!(
                reason.contains("cannot describe what it serves"),
                "{reason}"
            );
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_come_from_the_serving_node() {
    let (_worker, channel) = fresh().await;
    let report = channel.health(Duration::from_secs(5)).await.unwrap();
    // The server runs in this process: its memory is this process's.
    assert!(report.memory_bytes > 0);
    cases::unary_round_trip(&channel).await;
    let later = channel.health(Duration::from_secs(5)).await.unwrap();
    assert!(
        later.processed > report.processed,
        "{report:?} then {later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_endpoint_fails_the_connection_naming_each_and_why() {
    let (first, second) = (dead_address().await, dead_address().await);
    let error = GrpcDriver::new(&first)
        .endpoint(&second)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    for address in [&first, &second] {
        assert!(
            message.contains(&format!("{address} (Connection refused")),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_and_calls_go_to_the_live_ones() {
    let (dead, live) = (dead_address().await, serve().await);
    let worker = GrpcDriver::new(&dead)
        .endpoint(&live)
        .connections_per_endpoint(3)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let channel = worker.channel();
    // Calls succeed from the first, while the live endpoint's other
    // connections open.
    while worker.open_connections() != [0, 3] {
        cases::unary_round_trip(&channel).await;
    }
    cases::concurrent_calls_are_correlated(&channel, 200).await;
    assert_eq!(worker.open_connections(), [0, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_every_endpoint() {
    let (first, second) = (serve().await, serve().await);
    let worker = GrpcDriver::new(&first)
        .endpoint(&second)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    while worker.open_connections() != [2, 2] {
        client.echo(EchoRequest::default()).await.unwrap();
    }
    // Each server's worker counts the sleeps it ran: both ran some.
    let sleeps = (0..8).map(|i| {
        client.sleep(SleepRequest {
            tag: format!("spread {i}"),
            ms: 200,
            blocking: false,
        })
    });
    for slept in futures_util::future::join_all(sleeps).await {
        slept.unwrap();
    }
    let mut served = std::collections::HashSet::new();
    for _ in 0..8 {
        let stats = client.stats(()).await.unwrap();
        served.insert(stats.peak_concurrency > 0);
    }
    assert!(!served.contains(&false), "an endpoint ran no sleep");
}

/// What a hostile server does with each call.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Resets the stream with REFUSED_STREAM: it never ran.
    Refuse,
    /// Answers an `EchoReply` whose text is "answered".
    Reply,
    /// Ends the call NOT_FOUND with details that are not base64.
    BadDetails,
    /// Ends the call DEADLINE_EXCEEDED at once.
    DeadlineExceeded,
}

/// A bare HTTP/2 server that answers `Describe` UNIMPLEMENTED (so the
/// client connects without a check) and each other call as `answers` says,
/// in turn (the last answer repeats); its address, and the count of calls
/// it has seen.
async fn hostile_server(
    answers: Vec<Answer>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(answer_hostile(
                tcp,
                answers.clone(),
                std::sync::Arc::clone(&counter),
            ));
        }
    });
    (format!("http://{address}"), seen)
}

/// Serves one connection of [`hostile_server`]: `Describe` UNIMPLEMENTED,
/// and each other call as `answers` says, counting them in `counter`.
async fn answer_hostile(
    tcp: tokio::net::TcpStream,
    answers: Vec<Answer>,
    counter: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let Ok(mut connection) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let grpc = |status: &str| {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", status)
        };
        if request.uri().path() == "/workerbus.v1.Worker/Describe" {
            let _ = respond.send_response(grpc("12").body(()).unwrap(), true);
            continue;
        }
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match answers[n.min(answers.len() - 1)] {
            Answer::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
            Answer::DeadlineExceeded => {
                let _ = respond.send_response(grpc("4").body(()).unwrap(), true);
            }
            Answer::BadDetails => {
                let response = grpc("5")
                    .header("grpc-message", "gone")
                    .header("grpc-status-details-bin", "!!not*base64!!")
                    .body(())
                    .unwrap();
                let _ = respond.send_response(response, true);
            }
            Answer::Reply => {
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
                let mut send = respond.send_response(response, false).unwrap();
                let reply = EchoReply {
                    text: "answered".into(),
                    ..EchoReply::default()
                };
                let message = prost::Message::encode_to_vec(&reply);
                let mut frame = vec![0];
                frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
                frame.extend_from_slice(&message);
                let _ = send.send_data(frame.into(), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_before_any_server_saw_it_is_sent_again_even_if_not_idempotent() {
    let (address, seen) = hostile_server(vec![Answer::Refuse, Answer::Refuse, Answer::Reply]).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    // Echo is not idempotent: the channel itself would not retry it.
    let reply = EchoClient::new(worker.channel())
        .echo(EchoRequest::default())
        .await
        .unwrap();
    assert_eq!(reply.text, "answered");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_again_and_again_fails_unavailable() {
    let (address, seen) = hostile_server(vec![Answer::Refuse]).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let error = EchoClient::new(worker.channel())
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    // The first try and 4 more.
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(
        error.status().map(|s| s.code()),
        Some(Code::Unavailable),
        "{error}"
    );
}

/// Where a GOAWAY puts its last stream id, against the call it answers.
#[derive(Clone, Copy, Debug)]
enum LastStream {
    /// Below the call's stream id: the server says it never processed it.
    BelowTheCall,
    /// The call's own stream id: the server says it took the call.
    TheCall,
}

/// An HTTP/2 frame: its 9-byte header, then its payload (RFC 9113, 4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The next HTTP/2 frame on `tcp`: its type, flags, stream id and payload;
/// `None` once the peer has closed.
async fn read_h2_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let mut payload = vec![0; usize::try_from(length).unwrap()];
    tcp.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// An HPACK header field, literal, never indexed, with a new name (RFC
/// 7541, 6.2.2), for names and values under 128 bytes.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut field = vec![0x10, u8::try_from(name.len()).unwrap()];
    field.extend_from_slice(name.as_bytes());
    field.push(u8::try_from(value.len()).unwrap());
    field.extend_from_slice(value.as_bytes());
    field
}

/// One connection spoken frame by frame: `Describe` (the connection's first
/// stream) is answered UNIMPLEMENTED; the call that follows is counted in
/// `received` and never answered. Below the call, the GOAWAY goes at the
/// call's HEADERS; at the call, once the call's request has ended (its
/// message and END_STREAM received), and then the server closes its side,
/// as one that went away with the call unanswered.
async fn go_away_under_a_call(
    mut tcp: tokio::net::TcpStream,
    last: LastStream,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const ACK: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    const END_STREAM_AND_HEADERS: u8 = END_STREAM | 0x4;
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    // A client that has gone is no error: the test looks at the counts.
    if tcp.write_all(&h2_frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    let mut describe = None;
    while let Some((kind, flags, stream, payload)) = read_h2_frame(&mut tcp).await {
        let answer = match kind {
            SETTINGS if flags & ACK == 0 => h2_frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => h2_frame(PING, ACK, 0, &payload),
            HEADERS if describe.is_none() => {
                describe = Some(stream);
                // `:status: 200` (static index 8), then a trailers-only
                // UNIMPLEMENTED.
                let mut block = vec![0x88];
                block.extend(hpack_literal("content-type", "application/grpc"));
                block.extend(hpack_literal("grpc-status", "12"));
                h2_frame(HEADERS, END_STREAM_AND_HEADERS, stream, &block)
            }
            // The call's frames (`Describe`'s message is left unread).
            HEADERS | DATA if describe != Some(stream) => {
                if kind == HEADERS {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let ended = flags & END_STREAM != 0;
                let last_stream = match last {
                    LastStream::BelowTheCall if kind == HEADERS => describe.unwrap(),
                    LastStream::TheCall if ended => stream,
                    _ => continue,
                };
                let mut payload = last_stream.to_be_bytes().to_vec();
                payload.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                if tcp
                    .write_all(&h2_frame(GOAWAY, 0, 0, &payload))
                    .await
                    .is_err()
                {
                    return;
                }
                if let LastStream::TheCall = last {
                    let _ = tcp.shutdown().await;
                }
                continue;
            }
            // Window updates, resets, `Describe`'s message: never answered.
            _ => continue,
        };
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// A server whose first connection sends GOAWAY under the call that follows
/// `Describe` (as [`go_away_under_a_call`] says), and whose later
/// connections answer every call "answered" (as [`hostile_server`]'s
/// `Reply`). Its address, the calls the first connection received, and the
/// calls the later ones answered.
async fn going_away_server(
    last: LastStream,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (received, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (first, later) = (Arc::clone(&received), Arc::clone(&answered));
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(go_away_under_a_call(tcp, last, first));
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(answer_hostile(tcp, vec![Answer::Reply], Arc::clone(&later)));
        }
    });
    (format!("http://{address}"), received, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_above_a_goaways_last_stream_is_sent_again_on_a_new_connection_even_if_not_idempotent()
 {
    use std::sync::atomic::Ordering;
    let (address, received, answered) = going_away_server(LastStream::BelowTheCall).await;
    // One connection: `Describe` and then the call go on the same one.
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connections_per_endpoint(1)
        .connect()
        .await
        .unwrap();
    // Echo is not idempotent: the channel itself would not retry it.
    let reply = EchoClient::new(worker.channel())
        .echo(EchoRequest::default())
        .await
        .unwrap();
    // The first connection had the call, and let it go unprocessed; the
    // second answered it, once.
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    assert_eq!(reply.text, "answered");
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_a_goaway_took_is_not_sent_again_when_its_connection_then_closes() {
    use std::sync::atomic::Ordering;
    let (address, received, answered) = going_away_server(LastStream::TheCall).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connections_per_endpoint(1)
        .connect()
        .await
        .unwrap();
    let answer = EchoClient::new(worker.channel())
        .echo(EchoRequest::default())
        .await;
    let counts = (
        received.load(Ordering::SeqCst),
        answered.load(Ordering::SeqCst),
    );
    let error = answer.err().unwrap_or_else(|| {
        panic!("sent again: (received by the first connection, answered by a later one) {counts:?}")
    });
    // The server took the whole call (it may have run it): a call that is not
    // idempotent fails, naming the endpoint, and is not sent again.
    assert_eq!(
        error.status().map(|s| s.code()),
        Some(Code::Unavailable),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(address.trim_start_matches("http://")),
        "{error}"
    );
    assert_eq!(counts, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_details_that_are_not_base64_fail_the_call_internal_without_a_panic() {
    let (address, _) = hostile_server(vec![Answer::BadDetails]).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let channel = worker.channel();
    for _ in 0..3 {
        let error = EchoClient::new(channel.clone())
            .echo(EchoRequest::default())
            .await
            .unwrap_err();
        let status = error.status().expect("a status");
        assert_eq!(status.code(), Code::Internal, "{error}");
        assert!(
            status
                .message()
                .contains("grpc-status-details-bin that is not base64"),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    let serving = tokio::spawn(first.serve_with_shutdown(listener, async {
        let _ = stopped.await;
    }));
    let worker = GrpcDriver::new(format!("http://{socket}"))
        .serves(&EchoClient::SCHEMA)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let channel = worker.channel();
    cases::unary_round_trip(&channel).await;
    stop.send(()).unwrap();
    serving.await.unwrap();
    // Down: calls fail at once, naming the endpoint.
    let error = loop {
        match EchoClient::new(channel.clone())
            .echo(EchoRequest::default())
            .await
        {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert_eq!(
        error.status().map(|s| s.code()),
        Some(Code::Unavailable),
        "{error}"
    );
    assert!(error.to_string().contains(&socket.to_string()), "{error}");
    // Up again on the same port: an idempotent call retried with backoff
    // gets through once the endpoint's next try connects.
    let listener = tokio::net::TcpListener::bind(socket).await.unwrap();
    let second = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(second.serve(listener));
    let options = CallOptions::new()
        .retries(50)
        .backoff(Backoff::constant(Duration::from_millis(20)));
    EchoClient::new(channel.clone())
        .headers_with(HeadersRequest::default(), options)
        .await
        .unwrap();
    cases::unary_round_trip(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_holds_a_remote_worker_and_restarts_it_by_reconnecting() {
    let address = serve().await;
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let remote = supervisor
        .supervise(
            "remote",
            GrpcDriver::new(&address).serves(&EchoClient::SCHEMA),
            RestartPolicy::new(),
        )
        .await
        .unwrap();
    cases::unary_round_trip(&remote.channel()).await;
    remote.kill();
    loop {
        if let SupervisorEvent::Started { restarts: 1, .. } = events.recv().await.unwrap() {
            break;
        }
    }
    assert_eq!(remote.restarts(), 1);
    cases::unary_round_trip(&remote.channel()).await;
    // The default health check goes through the serving node.
    let report = remote
        .channel()
        .health(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.memory_bytes > 0);
}

/// A server of the Echo service taking messages of at most 1 MiB.
async fn serve_small() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new()
        .max_message_size(MIB)
        .add_service(EchoServer::new(EchoWorker::new()))
        .add_events(&echo_events_service::SCHEMA);
    tokio::spawn(server.serve(listener));
    format!("http://{address}")
}

const MIB: usize = 1 << 20;

fn exhausted(error: &Error, expected: &str) {
    let status = error.status().expect("a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{error}");
    assert!(status.message().contains(expected), "{error}");
    assert!(
        status.message().contains(&format!("over the {MIB} bytes")),
        "{error}"
    );
}

/// What a size refusal says, for each call shape, and who refused.
struct Refusals {
    unary: &'static str,
    refuser: &'static str,
    response_stream: &'static str,
    request_stream: &'static str,
}

/// A unary request, a response-stream message and a request-stream message
/// of 2 MiB, each refused `RESOURCE_EXHAUSTED` naming both sizes; the
/// server goes on serving.
async fn two_mib_messages_are_refused(worker: &GrpcWorker, says: Refusals) {
    let client = EchoClient::new(worker.channel());
    let big = Bytes::from(vec![7; 2 * MIB]);
    let error = client
        .echo(EchoRequest {
            data: big.clone(),
            ..EchoRequest::default()
        })
        .await
        .unwrap_err();
    exhausted(&error, says.unary);
    assert!(error.to_string().contains(says.refuser), "{error}");

    let mut counted = client
        .count(CountRequest {
            count: 1,
            padding: u32::try_from(2 * MIB).unwrap(),
            ..CountRequest::default()
        })
        .await
        .unwrap();
    let error = counted.message().await.unwrap_err();
    exhausted(&error, says.response_stream);

    let items = futures_util::stream::iter([SumRequest {
        value: 1,
        padding: big,
        ..SumRequest::default()
    }]);
    let error = client.sum(items).await.unwrap_err();
    exhausted(&error, says.request_stream);
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_servers_limit_are_resource_exhausted_naming_both_sizes() {
    let address = serve_small().await;
    let worker = connect(&address).await;
    let says = Refusals {
        unary: "a request message of echo.echo is 2097",
        refuser: "this server takes",
        response_stream: "a response message of echo.count is 2097",
        request_stream: "a request stream message of echo.sum is 2097",
    };
    two_mib_messages_are_refused(&worker, says).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_clients_limit_are_resource_exhausted_naming_both_sizes() {
    let worker = GrpcDriver::new(serve().await)
        .serves(&EchoClient::SCHEMA)
        .max_message_size(MIB)
        .connect()
        .await
        .unwrap();
    let says = Refusals {
        unary: "a request message of echo.echo is 2097",
        refuser: "this gRPC client takes",
        response_stream: "a response message is 2097",
        request_stream: "a request message of echo.sum is 2097",
    };
    two_mib_messages_are_refused(&worker, says).await;
}

/// A TCP proxy to `target` whose first connection stops carrying bytes,
/// both ways, once `freeze` is sent; its address, and a count of the
/// connections it has accepted.
async fn freezing_proxy(
    target: std::net::SocketAddr,
    freeze: tokio::sync::watch::Receiver<bool>,
) -> (String, tokio::sync::watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (accepted, count) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        loop {
            let (inbound, _) = listener.accept().await.unwrap();
            let first = *accepted.borrow() == 0;
            accepted.send_modify(|count| *count += 1);
            let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            let mut freeze = freeze.clone();
            tokio::spawn(async move {
                let (mut a, mut b) = (inbound, outbound);
                if first {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = async { drop(freeze.wait_for(|frozen| *frozen).await) } => {
                            // Hold both sockets open, silent.
                            std::future::pending::<()>().await;
                        }
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (format!("http://{address}"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_pings_go_unanswered_is_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(
        GrpcServer::new()
            .add_service(EchoServer::new(EchoWorker::new()))
            .serve(listener),
    );
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    let (address, mut accepted) = freezing_proxy(target, frozen).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connections_per_endpoint(1)
        .keepalive(Duration::from_millis(100), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(*accepted.borrow(), 1);
    // The network goes silent without closing anything: only the pings
    // can tell, and the driver connects again.
    freeze.send(true).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        accepted.wait_for(|count| *count >= 2),
    )
    .await
    .expect("no new connection after the pings went unanswered")
    .unwrap();
    // A call waits for the new connection rather than fail.
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(worker.open_connections(), [1]);
}

/// A server that answers `Describe` UNIMPLEMENTED and, at its first other
/// call, closes its connection and stops listening: an endpoint that dies
/// under a call. Its address, and a count of the calls it saw.
async fn vanishing_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        let (gone, mut vanish) = tokio::sync::watch::channel(false);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = vanish.wait_for(|gone| *gone) => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, _)) = accepted else { return };
            if *vanish.borrow() {
                // Gone: a connection that raced the vanishing is closed.
                return;
            }
            let counter = std::sync::Arc::clone(&counter);
            let gone = gone.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    if request.uri().path() == "/workerbus.v1.Worker/Describe" {
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "12")
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(response, true);
                        continue;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Gone, with the call unanswered.
                    gone.send_replace(true);
                    return;
                }
            });
        }
    });
    (format!("http://{address}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_whose_endpoint_dies_is_retried_on_another() {
    let (vanishing, seen) = vanishing_server().await;
    let live = serve().await;
    let worker = GrpcDriver::new(&vanishing)
        .endpoint(&live)
        .connections_per_endpoint(1)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    // Headers is idempotent: with retries, a call cut short by its
    // endpoint's death runs again, on the endpoint that is left.
    let options = CallOptions::new()
        .retries(2)
        .backoff(Backoff::constant(Duration::from_millis(10)));
    let mut retried = false;
    for _ in 0..10 {
        let reply = client
            .headers_with(HeadersRequest::default(), options.clone())
            .await
            .unwrap();
        retried |= reply.attempt > 1;
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(retried, "no call was retried after its endpoint died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_deadline_exceeded_at_the_calls_own_deadline_is_its_timeout() {
    let (address, _) = hostile_server(vec![Answer::DeadlineExceeded]).await;
    let worker = GrpcDriver::new(&address)
        .serves(&EchoClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    // Within 100 ms of the call's deadline: the channel's timer answers.
    let near = CallOptions::new().timeout(Duration::from_millis(50));
    let error = client
        .echo_with(EchoRequest::default(), near)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    // Long before it: the server's status, as it is.
    let far = CallOptions::new().timeout(Duration::from_secs(30));
    let error = client
        .echo_with(EchoRequest::default(), far)
        .await
        .unwrap_err();
    let status = error.status().expect("the server's status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{error:?}");
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_a_goaway_turned_away_is_answered_on_the_next_connection() {
    use std::sync::atomic::Ordering;
    let mut failures = Vec::new();
    for round in 0..10 {
        let (address, received, answered) = going_away_server(LastStream::BelowTheCall).await;
        let worker = GrpcDriver::new(&address)
            .serves(&EchoClient::SCHEMA)
            .connections_per_endpoint(1)
            .connect()
            .await
            .unwrap();
        let client = EchoClient::new(worker.channel());
        // Echo is not idempotent: only the transport's resend can save them.
        let calls = (0..50).map(|_| client.echo(EchoRequest::default()));
        for result in futures_util::future::join_all(calls).await {
            if let Err(error) = result {
                failures.push(format!(
                    "round {round} (first connection received {}, later ones answered {}): {error}",
                    received.load(Ordering::SeqCst),
                    answered.load(Ordering::SeqCst)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} calls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
