//! Interop with peers workerbus did not write: the client and server that
//! tonic-prost-build generates for the same `.proto` (`peer.proto`, in the
//! `grpc-peer` fixture) call a workerbus server and serve a workerbus
//! client, with every call shape, metadata and status codes.

use futures_util::StreamExt;
use workerbus::{CallOptions, Code, Metadata, ResponseMetadata, Worker};
use workerbus_fixture_grpc_peer::tonic_peer::peer_client::PeerClient as TonicClient;
use workerbus_fixture_grpc_peer::tonic_peer::peer_server::PeerServer as TonicServer;
use workerbus_fixture_grpc_peer::workerbus_peer::peer::{Letter, PeerClient, PeerServer, Words};
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
