//! What the public types print with `{:?}`: enough to tell one from another
//! in a log (names, states, counts), and never a worker's secret.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use workerbus::{
    CallInfo, Channel, ChannelOptions, Error, Frame, FrameCodec, Logging, MemoryTransport,
    MethodName, Middleware, Next, ProcessDriver, RestartPolicy, ServeOptions, ServerMiddleware,
    ServerNext, Status, Supervisor, ThreadDriver, TraceContext, Window, Worker, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{CountRequest, EchoClient, EchoEvents, EchoRequest, EchoServer};

use crate::ECHO_WORKER;

#[test]
fn names_traces_frames_and_options_describe_themselves() {
    let name = MethodName::from_static("echo.echo");
    assert_eq!(format!("{name:?}"), "\"echo.echo\"");
    let as_str: &str = name.as_ref();
    assert_eq!(as_str, "echo.echo");

    let trace = TraceContext::new_root();
    assert_eq!(
        format!("{trace:?}"),
        format!(
            "TraceContext({:032x}/{:016x})",
            trace.trace_id(),
            trace.span_id()
        )
    );

    assert_eq!(
        FrameCodec::default().max_len(),
        workerbus::DEFAULT_MAX_FRAME_LENGTH
    );
    assert_eq!(FrameCodec::new().max_frame_length(4096).max_len(), 4096);

    let options = ServeOptions::new()
        .max_concurrent_calls(8)
        .max_frame_length(4096)
        .window(Window::new(4, 1 << 20))
        .middleware(Logging::new());
    assert_eq!(
        format!("{options:?}"),
        "ServeOptions { max_concurrent_calls: 8, max_queued_calls: 1024, \
         max_frame_length: 4096, window: Window(4 messages, 1048576 bytes), \
         max_greeting_frame_length: 4096, greeting_timeout: 10s, \
         max_ungreeted_connections: 64, shared_memory_from: None, middleware: 1 }"
    );
}

#[test]
fn every_frame_kind_has_its_wire_name_and_id() {
    let frames = [
        (
            Frame::request(3, MethodName::from_static("a.b"), None, 1, Bytes::new()),
            "REQUEST",
            3,
        ),
        (
            Frame::Response {
                id: 4,
                payload: Bytes::new().into(),
            },
            "RESPONSE",
            4,
        ),
        (
            Frame::Status {
                id: 5,
                status: Status::internal("x"),
            },
            "STATUS",
            5,
        ),
        (Frame::Cancel { id: 6 }, "CANCEL", 6),
        (Frame::Shutdown, "SHUTDOWN", 0),
        (
            Frame::Item {
                id: 7,
                payload: Bytes::new(),
            },
            "ITEM",
            7,
        ),
        (Frame::End { id: 8 }, "END", 8),
        (
            Frame::Credit {
                id: 9,
                count: 1,
                bytes: 0,
            },
            "CREDIT",
            9,
        ),
        (
            Frame::Event {
                method: MethodName::from_static("a.e"),
                payload: Bytes::new(),
            },
            "EVENT",
            0,
        ),
    ];
    for (frame, kind, id) in frames {
        assert_eq!(frame.kind_name(), kind);
        assert_eq!(frame.id(), id, "{kind}");
    }
}

/// Keeps what a host and a worker middleware print of the call they see.
#[derive(Clone, Default)]
struct Printed(Arc<Mutex<Vec<String>>>);

impl Middleware for Printed {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        self.0.lock().unwrap().push(format!("{call:?}"));
        self.0.lock().unwrap().push(format!("{next:?}"));
        next.run().await
    }
}

impl ServerMiddleware for Printed {
    async fn handle(
        &self,
        call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        self.0.lock().unwrap().push(format!("{:?}", call.side()));
        self.0.lock().unwrap().push(format!("{next:?}"));
        next.run().await
    }
}

#[tokio::test]
async fn channels_streams_subscriptions_and_middleware_describe_their_state() {
    let (host, worker) = MemoryTransport::pair();
    assert_eq!(
        format!("{host:?}"),
        "MemoryTransport { capacity: 1024, unsent: 0, unread: 0, .. }"
    );
    let printed = Printed::default();
    let served = tokio::spawn(serve_transport(
        worker,
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new().middleware(printed.clone()),
    ));
    let channel = Channel::with_options(host, ChannelOptions::new());
    assert_eq!(
        format!("{channel:?}"),
        "Channel { in_flight: 0, closed: None, .. }"
    );
    let client = EchoClient::new(channel.clone().with_middleware(printed.clone()));
    let request = EchoRequest {
        text: "seen".into(),
        ..EchoRequest::default()
    };
    client.echo(request).await.unwrap();
    {
        let printed = printed.0.lock().unwrap();
        assert!(
            printed[0].starts_with(
                "CallInfo { side: Host, method: \"echo.echo\", request_id: None, attempt: 1, \
                 deadline: Some("
            ),
            "{}",
            printed[0]
        );
        assert!(
            printed[0]
                .ends_with("driver: \"transport\", request_len: 6, trace: None, metadata: {} }"),
            "{}",
            printed[0]
        );
        assert_eq!(printed[1], "Next { remaining: 0, .. }");
        assert_eq!(printed[2], "Worker");
        assert_eq!(printed[3], "ServerNext { remaining: 0, .. }");
    }

    let events = EchoEvents::subscribe(&channel);
    assert_eq!(
        format!("{events:?}"),
        "EchoEvents { inner: Subscription { service: \"echo.EchoEvents\", unread: 0, \
         ended: false } }"
    );
    let mut stream = client
        .count(CountRequest {
            count: 1,
            ..CountRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        format!("{stream:?}"),
        "Streaming { method: \"echo.count\", ended: false, .. }"
    );
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(
        format!("{stream:?}"),
        "Streaming { method: \"echo.count\", ended: true, .. }"
    );

    drop(client);
    served.abort();
    channel.closed().await;
    assert_eq!(
        format!("{channel:?}"),
        "Channel { in_flight: 0, closed: Some(Lost(None)), .. }"
    );
    assert_eq!(
        format!("{events:?}"),
        "EchoEvents { inner: Subscription { service: \"echo.EchoEvents\", unread: 0, \
         ended: true } }"
    );
}

/// A worker's name, through the trait a supervisor uses.
fn name_of(worker: &impl Worker) -> &str {
    worker.name()
}

#[tokio::test]
async fn thread_workers_and_supervisors_describe_their_workers() {
    let spawner = ThreadDriver::default()
        .name("debugged")
        .spawner(|| EchoServer::new(EchoWorker::new()));
    let printed = format!("{spawner:?}");
    assert!(
        printed.starts_with("ThreadSpawner { driver: ThreadDriver { name: Some(\"debugged\"), "),
        "{printed}"
    );
    let worker = ThreadDriver::new()
        .name("debugged")
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    assert_eq!(name_of(&worker), "debugged");
    assert_eq!(
        format!("{worker:?}"),
        "ThreadWorker { name: \"debugged\", exit: None, channel: Channel { in_flight: 0, \
         closed: None, .. } }"
    );
    worker.shutdown().await;

    let supervisor = Supervisor::new();
    assert_eq!(format!("{supervisor:?}"), "Supervisor { .. }");
    let supervised = supervisor
        .supervise("debugged", spawner, RestartPolicy::new())
        .await
        .unwrap();
    assert_eq!(
        format!("{supervised:?}"),
        "SupervisedWorker { name: \"debugged\", restarts: 0, last_exit: None, running: true, .. }"
    );
    assert_eq!(
        format!("{:?}", supervised.channel()),
        "Channel { worker: \"debugged\", state: Up(Channel { in_flight: 0, closed: None, .. }), \
         .. }"
    );
    supervisor.shutdown().await;
    assert_eq!(
        format!("{:?}", supervised.channel()),
        "Channel { worker: \"debugged\", state: Down(\"its supervisor shut it down\"), .. }"
    );
}

#[tokio::test]
async fn process_workers_describe_themselves_without_their_secret() {
    let worker = ProcessDriver::new(ECHO_WORKER)
        .name("secretive")
        .stderr(workerbus::Stdio::Null)
        .spawn()
        .await
        .unwrap();
    assert_eq!(name_of(&worker), "secretive");
    let running = format!("{worker:?}");
    assert!(
        running.starts_with(&format!(
            "ProcessWorker {{ name: \"secretive\", pid: Some({}), exit: None, address: None, \
             channel: Channel {{ ",
            worker.pid().expect("a spawned worker has a process id")
        )),
        "{running}"
    );
    let detached = worker.detach().await.unwrap();
    let secret = detached.secret().to_hex();
    let printed = format!("{detached:?}");
    assert!(printed.contains("name: \"secretive\""), "{printed}");
    assert!(printed.contains("secret: Secret(..)"), "{printed}");
    assert_eq!(format!("{:?}", detached.secret()), "Secret(..)");
    for output in [&running, &printed] {
        assert!(!output.contains(&secret), "the secret is in {output}");
        assert!(
            !output.contains(&secret.to_uppercase()),
            "the secret is in {output}"
        );
    }
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .unwrap();
    let connected = format!("{host:?}");
    assert!(!connected.contains(&secret), "the secret is in {connected}");
    assert!(
        connected.contains(&format!("address: Some({:?})", detached.address())),
        "{connected}"
    );
    host.shutdown().await;
}
