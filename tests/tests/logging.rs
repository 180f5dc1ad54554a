//! The Logging middleware's spans, as a subscriber sees them: one per call
//! on each side, the worker's joined to the host's. (Its own test binary:
//! it installs the process's global subscriber, which the worker thread
//! logs into too.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};
use workerbus::{Logging, ServeOptions, ThreadDriver};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

type Fields = BTreeMap<String, String>;

/// Keeps every `workerbus.call` span's fields, as recorded.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<BTreeMap<u64, Fields>>>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _cx: Context<'_, S>) {
        if attrs.metadata().name() == "workerbus.call" {
            let mut fields = Fields::new();
            attrs.record(&mut Visitor(&mut fields));
            self.spans.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _cx: Context<'_, S>) {
        if let Some(fields) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Visitor(fields));
        }
    }
}

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

    let spans: Vec<Fields> = recorder.spans.lock().unwrap().values().cloned().collect();
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
