//! The code generated for the schema of `docs/GENERATED.md`
//! (`codegen/tests/reference/reference.proto`), used as the document says:
//! every generated item, each method of each kind called through its client
//! and answered by its handler, and the events service's emitter and
//! stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use workerbus::{
    CallOptions, Context, Incoming, Services, Status, StreamSender, Streaming, ThreadDriver,
};

use self::reference::{
    EchoClient, EchoEmitter, EchoEvent, EchoEvents, EchoHandler, EchoReply, EchoRequest,
    EchoServer, echo_events_service, echo_service,
};

/// The package `reference`, which `build.rs` compiles. It is included here,
/// not in the library, whose `echo` package has types of the same names:
/// the compiler would name both by their paths in the diagnostics the
/// `ui` tests compare. Its items are public, as in a user's crate, where
/// this binary cannot reach them.
#[allow(unreachable_pub)]
mod reference {
    workerbus::include_proto!("reference");
}

/// Echoes, and tells its host each text of `echo` and `forget` as an event.
#[derive(Debug)]
struct Echoer;

impl EchoHandler for Echoer {
    async fn echo(&self, request: EchoRequest, cx: &Context) -> Result<EchoReply, Status> {
        let reply = EchoReply { text: request.text };
        EchoEmitter::from_context(cx).echoed(reply.clone()).await?;
        Ok(reply)
    }

    async fn repeat(
        &self,
        request: EchoRequest,
        responses: StreamSender<EchoReply>,
        _cx: &Context,
    ) -> Result<(), Status> {
        for _ in 0..3 {
            let text = request.text.clone();
            responses.send(EchoReply { text }).await?;
        }
        Ok(())
    }

    async fn join(
        &self,
        mut requests: Incoming<EchoRequest>,
        _cx: &Context,
    ) -> Result<EchoReply, Status> {
        let mut texts = Vec::new();
        while let Some(request) = requests.message().await? {
            texts.push(request.text);
        }
        Ok(EchoReply {
            text: texts.join(" "),
        })
    }

    async fn chat(
        &self,
        mut requests: Incoming<EchoRequest>,
        responses: StreamSender<EchoReply>,
        _cx: &Context,
    ) -> Result<(), Status> {
        while let Some(request) = requests.message().await? {
            let text = request.text.to_uppercase();
            responses.send(EchoReply { text }).await?;
        }
        Ok(())
    }

    async fn forget(&self, request: EchoRequest, cx: &Context) -> Result<(), Status> {
        let reply = EchoReply { text: request.text };
        EchoEmitter::new(cx.events()).echoed(reply).await
    }
}

fn request(text: &str) -> EchoRequest {
    EchoRequest { text: text.into() }
}

/// The texts of a stream of replies, to its end.
async fn texts(mut replies: Streaming<EchoReply>) -> Vec<String> {
    let mut texts = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        texts.push(reply.text);
    }
    texts
}

fn echoed(text: &str) -> EchoEvent {
    EchoEvent::Echoed(EchoReply { text: text.into() })
}

#[tokio::test]
async fn the_reference_schemas_items_work_as_documented() {
    let handler = Arc::new(Echoer);
    let shared = EchoServer::from_arc(Arc::clone(&handler));
    assert!(Arc::ptr_eq(shared.clone().handler(), &handler));
    let worker = ThreadDriver::new()
        .spawn(Services::new(EchoServer::new(Echoer)))
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel())
        .with_options(CallOptions::new().timeout(Duration::from_secs(30)));
    // Subscribed before the worker sends anything.
    let mut events = EchoEvents::subscribe(client.channel());

    // Unary, with the schema's options and with a call's own.
    let reply = client.echo(request("hello")).await.unwrap();
    assert_eq!(reply.text, "hello");
    let options = CallOptions::new().timeout(Duration::from_secs(5));
    let reply = client.echo_with(request("again"), options).await.unwrap();
    assert_eq!(reply.text, "again");
    assert_eq!(events.next_event().await.unwrap().unwrap(), echoed("hello"));
    assert_eq!(events.next_event().await.unwrap().unwrap(), echoed("again"));

    // Server streaming.
    let replies = client.repeat(request("ho")).await.unwrap();
    assert_eq!(texts(replies).await, ["ho", "ho", "ho"]);
    let replies = client
        .repeat_with(request("hey"), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(texts(replies).await, ["hey", "hey", "hey"]);

    // Client streaming.
    let requests = stream::iter([request("one"), request("two")]);
    let reply = client.join(requests).await.unwrap();
    assert_eq!(reply.text, "one two");
    let requests = stream::iter([request("three")]);
    let reply = client
        .join_with(requests, CallOptions::new())
        .await
        .unwrap();
    assert_eq!(reply.text, "three");

    // Bidirectional streaming.
    let requests = stream::iter([request("a"), request("b")]);
    let replies = client.chat(requests).await.unwrap();
    assert_eq!(texts(replies).await, ["A", "B"]);
    let requests = stream::iter([request("c")]);
    let replies = client
        .chat_with(requests, CallOptions::new())
        .await
        .unwrap();
    assert_eq!(texts(replies).await, ["C"]);

    // One-way: the handler's event shows it arrived.
    client.forget(request("gone")).await.unwrap();
    assert_eq!(events.next_event().await.unwrap().unwrap(), echoed("gone"));
    client
        .forget_with(request("gone too"), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(
        events.next_event().await.unwrap().unwrap(),
        echoed("gone too")
    );

    // The names and the schemas.
    assert_eq!(echo_service::ECHO, "echo.echo");
    assert_eq!(echo_events_service::ECHOED, "echo_events.echoed");
    assert_eq!(EchoClient::SCHEMA.name(), "reference.Echo");
    assert_eq!(echo_service::SCHEMA.methods().len(), 5);
    assert_eq!(echo_events_service::SCHEMA.name(), "reference.EchoEvents");

    worker.shutdown().await;
}
