//! The generated API as a user crate sees it: implement a handler, serve it
//! on a thread worker, call it through the typed client.

use workerbus::{CallOptions, Context, Status, ThreadDriver};
use workerbus_tests::pb::echo::{
    CountRequest, EchoClient, EchoEvents, MissingClient, MissingHandler, MissingServer,
    NoteRequest, echo_service, missing_service,
};

struct Nothing;

impl MissingHandler for Nothing {
    async fn nothing(&self, _request: (), cx: &Context) -> Result<(), Status> {
        assert_eq!(cx.method(), missing_service::NOTHING);
        Ok(())
    }
}

fn assert_client<T: Clone + Send + Sync + 'static>() {}

fn assert_send<T: Send>(_: &T) {}

fn assert_stream<T: futures_util::Stream + Send + Unpin + 'static>(_: &T) {}

/// Type-checked, never run: the futures of every kind of method are `Send`
/// (they can be spawned), and the streams are `Stream + Send + Unpin`.
#[allow(dead_code)]
async fn every_kind_of_method_is_send(client: EchoClient, channel: workerbus::Channel) {
    let count = client.count(CountRequest::default());
    assert_send(&count);
    let replies = count.await.unwrap();
    assert_stream(&replies);
    let sum = client.sum(futures_util::stream::empty());
    assert_send(&sum);
    let chat = client.chat(futures_util::stream::empty());
    assert_send(&chat);
    let note = client.note(NoteRequest::default());
    assert_send(&note);
    let events = EchoEvents::subscribe(&channel);
    assert_stream(&events);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    assert_client::<MissingClient>();
    assert_eq!(echo_service::ECHO, "echo.echo");
    assert_eq!(MissingClient::SCHEMA.name(), "echo.Missing");

    let worker = ThreadDriver::new().spawn(MissingServer::new(Nothing)).await?;
    let client = MissingClient::new(worker.channel()).with_options(CallOptions::new().retries(0));
    client.nothing(()).await?;
    client.nothing_with((), CallOptions::new().timeout(std::time::Duration::from_secs(5))).await?;
    // Calls can run on other tasks: the client and its futures are Send.
    let spawned = tokio::spawn({
        let client = client.clone();
        async move { client.nothing(()).await }
    });
    spawned.await.expect("the task ran")?;
    worker.shutdown().await;
    Ok(())
}
