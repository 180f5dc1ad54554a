//! Interop with peers workerbus did not write: the client and server that
//! tonic-prost-build generates for the same `.proto` (`peer.proto`, in the
//! `grpc-peer` fixture) call a workerbus server and serve a workerbus
//! client, with every call shape, metadata, status codes and deadlines.

use std::time::Duration;

use futures_util::StreamExt;
use workerbus::{CallOptions, Code, Context, Error, Metadata, ResponseMetadata, Status, Worker};
use workerbus_fixture_grpc_peer::tonic_peer::peer_client::PeerClient as TonicClient;
use workerbus_fixture_grpc_peer::tonic_peer::peer_server::Peer as TonicPeerService;
use workerbus_fixture_grpc_peer::tonic_peer::peer_server::PeerServer as TonicServer;
use workerbus_fixture_grpc_peer::workerbus_peer::peer::{
    Letter, PeerClient, PeerHandler, PeerServer, Words,
};
use workerbus_fixture_grpc_peer::{TonicPeer, WorkerbusPeer, tonic_peer};
use workerbus_grpc::{GrpcDriver, GrpcServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonics_generated_client_calls_a_workerbus_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        GrpcServer::new()
            .add_service(PeerServer::new(WorkerbusPeer))
            .serve(listener),
    );
    let mut client = TonicClient::connect(format!("http://{address}"))
        .await
        .unwrap();

    let mut request = tonic::Request::new(tonic_peer::Words {
        text: "hello".into(),
        fail_code: 0,
    });
    request
        .metadata_mut()
        .insert("tenant", "blue".parse().unwrap());
    let response = client.say(request).await.unwrap();
    assert_eq!(response.metadata().get("said-by").unwrap(), "workerbus");
    assert_eq!(response.into_inner().text, "hello (tenant blue)");

    let status = client
        .say(tonic_peer::Words {
            text: String::new(),
            fail_code: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "asked to fail")
    );

    let letters: Vec<String> = client
        .spell(tonic_peer::Words {
            text: "abc".into(),
            fail_code: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|letter| letter.unwrap().letter)
        .collect()
        .await;
    assert_eq!(letters, ["a", "b", "c"]);

    let sent = ["x", "y", "z"].map(|letter| tonic_peer::Letter {
        letter: letter.into(),
    });
    let joined = client.join(futures_util::stream::iter(sent)).await.unwrap();
    assert_eq!(joined.into_inner().text, "xyz");

    let sent = ["one", "two"].map(|text| tonic_peer::Words {
        text: text.into(),
        fail_code: 0,
    });
    let relayed: Vec<String> = client
        .relay(futures_util::stream::iter(sent))
        .await
        .unwrap()
        .into_inner()
        .map(|words| words.unwrap().text)
        .collect()
        .await;
    assert_eq!(relayed, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workerbus_client_calls_tonics_generated_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TonicServer::new(TonicPeer))
            .serve_with_incoming(incoming),
    );
    // tonic's server cannot describe what it serves: accepted unchecked.
    let worker = GrpcDriver::new(format!("http://{address}"))
        .serves(&PeerClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let client = PeerClient::new(worker.channel());

    let answered = ResponseMetadata::new();
    let options = CallOptions::new()
        .metadata(Metadata::new().with("tenant", "blue").unwrap())
        .response_metadata(&answered);
    let words = Words {
        text: "hello".into(),
        fail_code: 0,
    };
    let reply = client.say_with(words, options).await.unwrap();
    assert_eq!(reply.text, "hello (tenant blue)");
    assert_eq!(answered.get().get_str("said-by"), Some("tonic"));

    let error = client
        .say(Words {
            text: String::new(),
            fail_code: 7,
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a status");
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "asked to fail")
    );

    let mut spelled = client
        .spell(Words {
            text: "abc".into(),
            fail_code: 0,
        })
        .await
        .unwrap();
    let mut letters = Vec::new();
    while let Some(letter) = spelled.message().await.unwrap() {
        letters.push(letter.letter);
    }
    assert_eq!(letters, ["a", "b", "c"]);

    let sent = ["x", "y", "z"].map(|letter| Letter {
        letter: letter.into(),
    });
    let joined = client.join(futures_util::stream::iter(sent)).await.unwrap();
    assert_eq!(joined.text, "xyz");

    let sent = ["one", "two"].map(|text| Words {
        text: text.into(),
        fail_code: 0,
    });
    let mut relayed = client
        .relay(futures_util::stream::iter(sent))
        .await
        .unwrap();
    let mut texts = Vec::new();
    while let Some(words) = relayed.message().await.unwrap() {
        texts.push(words.text);
    }
    assert_eq!(texts, ["one", "two"]);
}

/// What a stalling handler saw: how long its call had left as it began,
/// its `grpc-timeout` header, and its end (its future dropped).
#[derive(Debug)]
enum Seen {
    Remaining(Option<Duration>),
    GrpcTimeout(Option<String>),
    Dropped,
}

/// Says `Dropped` when the handler holding it is dropped.
struct OnDrop(tokio::sync::mpsc::UnboundedSender<Seen>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Seen::Dropped);
    }
}

/// The next thing a stalling handler saw, within 10 s.
async fn next_seen(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the handler said nothing within 10 s")
        .expect("the handler is gone")
}

/// `WorkerbusPeer`, but `Say` with the words "stall" never answers: it says
/// how long its call has left, and waits until it is dropped.
#[derive(Clone, Debug)]
struct StallingWorkerbus(tokio::sync::mpsc::UnboundedSender<Seen>);

impl PeerHandler for StallingWorkerbus {
    async fn say(&self, request: Words, cx: &Context) -> Result<Words, Status> {
        if request.text != "stall" {
            return WorkerbusPeer.say(request, cx).await;
        }
        let _dropped = OnDrop(self.0.clone());
        let _ = self.0.send(Seen::Remaining(cx.remaining()));
        std::future::pending().await
    }

    async fn spell(
        &self,
        request: Words,
        responses: workerbus::StreamSender<Letter>,
        cx: &Context,
    ) -> Result<(), Status> {
        WorkerbusPeer.spell(request, responses, cx).await
    }

    async fn join(
        &self,
        requests: workerbus::Incoming<Letter>,
        cx: &Context,
    ) -> Result<Words, Status> {
        WorkerbusPeer.join(requests, cx).await
    }

    async fn relay(
        &self,
        requests: workerbus::Incoming<Words>,
        responses: workerbus::StreamSender<Words>,
        cx: &Context,
    ) -> Result<(), Status> {
        WorkerbusPeer.relay(requests, responses, cx).await
    }
}

/// `TonicPeer`, but `Say` with the words "stall" never answers: it says
/// the call's `grpc-timeout` header, and waits until it is dropped.
#[derive(Clone, Debug)]
struct StallingTonic(tokio::sync::mpsc::UnboundedSender<Seen>);

#[tonic::async_trait]
impl TonicPeerService for StallingTonic {
    async fn say(
        &self,
        request: tonic::Request<tonic_peer::Words>,
    ) -> Result<tonic::Response<tonic_peer::Words>, tonic::Status> {
        if request.get_ref().text != "stall" {
            return TonicPeer.say(request).await;
        }
        let _dropped = OnDrop(self.0.clone());
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let _ = self.0.send(Seen::GrpcTimeout(timeout));
        std::future::pending().await
    }

    type SpellStream = <TonicPeer as TonicPeerService>::SpellStream;

    async fn spell(
        &self,
        request: tonic::Request<tonic_peer::Words>,
    ) -> Result<tonic::Response<Self::SpellStream>, tonic::Status> {
        TonicPeer.spell(request).await
    }

    async fn join(
        &self,
        request: tonic::Request<tonic::Streaming<tonic_peer::Letter>>,
    ) -> Result<tonic::Response<tonic_peer::Words>, tonic::Status> {
        TonicPeer.join(request).await
    }

    type RelayStream = <TonicPeer as TonicPeerService>::RelayStream;

    async fn relay(
        &self,
        request: tonic::Request<tonic::Streaming<tonic_peer::Words>>,
    ) -> Result<tonic::Response<Self::RelayStream>, tonic::Status> {
        TonicPeer.relay(request).await
    }
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most eight digits and a
/// unit).
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    assert!((1..=8).contains(&digits.len()), "{value}");
    let count: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(count * 3600),
        "M" => Duration::from_secs(count * 60),
        "S" => Duration::from_secs(count),
        "m" => Duration::from_millis(count),
        "u" => Duration::from_micros(count),
        "n" => Duration::from_nanos(count),
        _ => panic!("not a grpc-timeout unit: {value}"),
    }
}

/// One HTTP/2 connection, as a `tower::Service` tonic's generated client
/// can call through: tonic's client without tonic's `Channel`, whose own
/// timer ends a call at its `grpc-timeout` (with `CANCELLED`) before the
/// server's answer can arrive.
#[derive(Clone, Debug)]
struct Connection(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

async fn tonic_client_on_one_connection(address: std::net::SocketAddr) -> TonicClient<Connection> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let origin = format!("http://{address}").parse().unwrap();
    TonicClient::with_origin(Connection(send), origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonics_client_past_its_grpc_timeout_gets_deadline_exceeded_and_the_handler_is_dropped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        GrpcServer::new()
            .add_service(PeerServer::new(StallingWorkerbus(seen)))
            .serve(listener),
    );
    let mut client = tonic_client_on_one_connection(address).await;
    let words = |text: &str| tonic_peer::Words {
        text: text.into(),
        fail_code: 0,
    };

    // Answered within its deadline.
    let mut request = tonic::Request::new(words("in time"));
    request.set_timeout(Duration::from_secs(30));
    let reply = client.say(request).await.unwrap();
    assert_eq!(reply.into_inner().text, "in time");

    // Not answered within it: the server ends the call DEADLINE_EXCEEDED.
    let timeout = Duration::from_millis(300);
    let mut request = tonic::Request::new(words("stall"));
    request.set_timeout(timeout);
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), client.say(request))
        .await
        .expect("no answer within 10 s")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    // The grpc-timeout was the call's timeout, from the moment the server
    // read the call; the handler was dropped.
    match next_seen(&mut heard).await {
        Seen::Remaining(Some(left)) => assert!(
            left <= timeout && left > timeout - Duration::from_millis(100),
            "{left:?}"
        ),
        other => panic!("expected the call's time left, got {other:?}"),
    }
    assert!(matches!(next_seen(&mut heard).await, Seen::Dropped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workerbus_call_past_its_timeout_on_tonics_server_is_a_timeout_carried_as_grpc_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TonicServer::new(StallingTonic(seen)))
            .serve_with_incoming(incoming),
    );
    let worker = GrpcDriver::new(format!("http://{address}"))
        .serves(&PeerClient::SCHEMA)
        .connect()
        .await
        .unwrap();
    let client = PeerClient::new(worker.channel());
    let words = |text: &str| Words {
        text: text.into(),
        fail_code: 0,
    };

    // Answered within its timeout.
    let options = CallOptions::new().timeout(Duration::from_secs(30));
    let reply = client.say_with(words("in time"), options).await.unwrap();
    assert_eq!(reply.text, "in time");

    // Not answered within it: the channel's own timeout.
    let timeout = Duration::from_millis(300);
    let options = CallOptions::new().timeout(timeout);
    let started = tokio::time::Instant::now();
    let said = client.say_with(words("stall"), options);
    let error = tokio::time::timeout(Duration::from_secs(10), said)
        .await
        .expect("no answer within 10 s")
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    // The timeout crossed as grpc-timeout, no longer than the call's and
    // barely shorter; the handler was dropped.
    match next_seen(&mut heard).await {
        Seen::GrpcTimeout(Some(value)) => {
            let sent = grpc_timeout(&value);
            assert!(
                sent <= timeout && sent > timeout - Duration::from_millis(100),
                "{value}"
            );
        }
        other => panic!("expected the call's grpc-timeout, got {other:?}"),
    }
    assert!(matches!(next_seen(&mut heard).await, Seen::Dropped));
    assert_eq!(worker.channel().in_flight(), 0);
}
