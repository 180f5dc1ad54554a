//! One span per call on each side, the worker's a child of the host's. (It
//! installs the process's global subscriber, which the worker thread logs
//! into too.)

use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;
use workerbus::{Logging, ServeOptions, ThreadDriver};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

use crate::{Fields, Recorder};

#[tokio::test]
async fn each_side_has_a_span_and_the_workers_is_a_child_of_the_hosts() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(Registry::default().with(recorder.clone())).unwrap();

    let worker = ThreadDriver::new()
        .serve_options(ServeOptions::new().middleware(Logging::new()))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel().with_middleware(Logging::new()));
    let request = EchoRequest {
        text: "traced".into(),
        ..EchoRequest::default()
    };
    client.echo(request).await.unwrap();
    worker.shutdown().await;

    let spans: Vec<Fields> = recorder
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|(_, fields)| fields.clone())
        .collect();
    let side = |name: &str| {
        spans
            .iter()
            .find(|fields| fields.get("side").map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let (host, worker) = (side("host"), side("worker"));
    for span in [host, worker] {
        assert_eq!(span["method"], "echo.echo");
        assert_eq!(span["attempt"], "1");
        assert_eq!(span["outcome"], "ok");
        assert!(span["duration_us"].parse::<u64>().is_ok());
    }
    assert_eq!(host["driver"], "thread");
    assert_eq!(worker["trace_id"], host["trace_id"], "one trace");
    assert_eq!(
        worker["parent_id"], host["span_id"],
        "the host's span is the parent"
    );
    assert!(
        !host.contains_key("parent_id"),
        "the host's call began the trace"
    );
    assert_eq!(worker["request_id"], "1");
}
