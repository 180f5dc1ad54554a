//! TLS, mutual TLS and bearer tokens between the gRPC driver and server,
//! with certificates made here, for each test.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use workerbus::{Error, Worker};
use workerbus_grpc::{ClientTls, GrpcDriver, GrpcServer, GrpcWorker, ServerTls};
use workerbus_tests::EchoWorker;
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{EchoClient, EchoServer};

/// An authority, and a certificate and key it issued for `localhost`.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// A certificate for `localhost` and its key, in PEM.
    fn issue(&self) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (
            certificate.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
    }
}

/// A server of the Echo service on loopback, as `configure` sets it up;
/// its `https://localhost:port` address.
async fn serve(configure: impl FnOnce(GrpcServer) -> GrpcServer, scheme: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = configure(GrpcServer::new().add_service(EchoServer::new(EchoWorker::new())));
    tokio::spawn(server.serve(listener));
    format!("{scheme}://localhost:{port}")
}

async fn connect(driver: GrpcDriver) -> Result<GrpcWorker, Error> {
    driver.serves(&EchoClient::SCHEMA).connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_tls_to_a_server_whose_certificate_chains_to_the_clients_authority() {
    let authority = Authority::new("servers");
    let (certificate, key) = authority.issue();
    let address = serve(
        |server| server.tls(ServerTls::new(&certificate, &key).unwrap()),
        "https",
    )
    .await;
    let worker = connect(GrpcDriver::new(&address).tls(ClientTls::new(&authority.pem()).unwrap()))
        .await
        .unwrap();
    cases::unary_round_trip(&worker.channel()).await;
    cases::response_stream_in_order(&worker.channel()).await;

    // A client that trusts another authority does not connect.
    let stranger = Authority::new("strangers");
    let error = connect(GrpcDriver::new(&address).tls(ClientTls::new(&stranger.pem()).unwrap()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("TLS handshake failed"),
        "{error}"
    );
    // Nor does one that speaks plain HTTP/2 to it.
    let plain = address.replace("https://", "http://");
    assert!(connect(GrpcDriver::new(&plain)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_from_the_clients_authority() {
    let servers = Authority::new("servers");
    let clients = Authority::new("clients");
    let (certificate, key) = servers.issue();
    let address = serve(
        |server| {
            let tls = ServerTls::new(&certificate, &key)
                .unwrap()
                .client_ca(&clients.pem())
                .unwrap();
            server.tls(tls)
        },
        "https",
    )
    .await;
    let (client_certificate, client_key) = clients.issue();
    let trusted = ClientTls::new(&servers.pem())
        .unwrap()
        .identity(&client_certificate, &client_key)
        .unwrap();
    let worker = connect(GrpcDriver::new(&address).tls(trusted))
        .await
        .unwrap();
    cases::unary_round_trip(&worker.channel()).await;

    // No certificate, or one from another authority: refused.
    let anonymous = ClientTls::new(&servers.pem()).unwrap();
    assert!(
        connect(GrpcDriver::new(&address).tls(anonymous))
            .await
            .is_err()
    );
    let (other_certificate, other_key) = servers.issue();
    let impostor = ClientTls::new(&servers.pem())
        .unwrap()
        .identity(&other_certificate, &other_key)
        .unwrap();
    assert!(
        connect(GrpcDriver::new(&address).tls(impostor))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_a_token_refuses_calls_without_it_but_health_checks() {
    let address = serve(|server| server.require_token("s3cret"), "http").await;
    let worker = connect(GrpcDriver::new(&address).token("s3cret"))
        .await
        .unwrap();
    cases::unary_round_trip(&worker.channel()).await;
    // The token does not reach the handler's metadata.
    cases::metadata_goes_both_ways_with(&worker.channel(), &GRPC).await;

    for driver in [
        GrpcDriver::new(&address),
        GrpcDriver::new(&address).token("guess"),
    ] {
        let error = connect(driver).await.unwrap_err();
        assert!(
            error.to_string().contains("requires a valid bearer token"),
            "{error}"
        );
    }
    // Probes check health without credentials.
    let channel =
        tonic::transport::Endpoint::from_shared(address.replace("localhost", "127.0.0.1"))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "echo.Echo".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[test]
fn bad_pem_is_refused_naming_the_input() {
    let error = ServerTls::new(b"not a certificate", b"nor a key").unwrap_err();
    assert!(
        error.to_string().contains("the server's certificate chain"),
        "{error}"
    );
    let error = ClientTls::new(b"").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the servers' authority: no certificate"),
        "{error}"
    );
    let authority = Authority::new("servers");
    let (certificate, _) = authority.issue();
    let error = ServerTls::new(
        &certificate,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the server's certificate and key"),
        "{error}"
    );
}

/// As in the driver's tests: header blocks keep each key's order only.
const GRPC: cases::Differences = cases::Differences {
    transport_bytes: 3 << 20,
    metadata_order_across_keys: false,
    worker_answers_unknown_methods: false,
    events_before_answers: false,
};
