//! The generated API as a user crate sees it: implement a handler, serve it
//! on a thread worker, call it through the typed client.

use workerbus::{CallOptions, Context, Status, ThreadDriver};
use workerbus_tests::pb::echo::{MissingClient, MissingHandler, MissingServer, echo_service, missing_service};

struct Nothing;

impl MissingHandler for Nothing {
    async fn nothing(&self, _request: (), cx: &Context) -> Result<(), Status> {
        assert_eq!(cx.method(), missing_service::NOTHING);
        Ok(())
    }
}

fn assert_client<T: Clone + Send + Sync + 'static>() {}

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
