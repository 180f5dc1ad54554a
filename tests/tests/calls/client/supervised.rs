//! A supervised channel, whose connection is its worker slot's: calls,
//! streams and one-way messages through it, what its middleware sees, and
//! how it closes with its supervisor.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use workerbus::{
    Backoff, CallInfo, Error, Middleware, Next, RestartPolicy, Supervisor, ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoEvent, EchoEvents, EchoServer, NoteRequest};

use super::{count_request, echo_request};

/// A call as a middleware saw it: its method, driver, request length and
/// time left.
type SeenCall = (String, &'static str, usize, Option<Duration>);

/// What a middleware saw of each call.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenCall>>>);

impl Middleware for Seen {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let left = call
            .deadline()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        self.0.lock().unwrap().push((
            call.method().to_owned(),
            call.driver(),
            call.request_len(),
            left,
        ));
        next.run().await
    }
}

#[tokio::test]
async fn a_supervised_channel_streams_posts_and_closes_with_its_supervisor() {
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise(
            "edges",
            ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new())),
            RestartPolicy::new().backoff(Backoff::constant(Duration::ZERO)),
        )
        .await
        .unwrap();
    let seen = Seen::default();
    let channel = worker.channel().with_middleware(seen.clone());
    let client = EchoClient::new(channel.clone());

    let request = echo_request("supervised");
    let reply = client.echo(request.clone()).await.unwrap();
    assert_eq!(reply.text, "supervised");
    let mut stream = client.count(count_request(3)).await.unwrap();
    let mut values = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        values.push(reply.value);
    }
    assert_eq!(values, [0, 1, 2]);
    client
        .note(NoteRequest {
            tag: "posted".into(),
            ..NoteRequest::default()
        })
        .await
        .unwrap();
    let progress = client
        .progress(workerbus_tests::pb::echo::ProgressRequest {
            tag: "posted".into(),
            at_least: 1,
        })
        .await
        .unwrap();
    assert_eq!(progress.messages, 1);

    {
        let seen = seen.0.lock().unwrap();
        let (method, driver, request_len, left) = &seen[0];
        assert_eq!(method, "echo.echo");
        assert_eq!(
            *driver, "thread",
            "the driver of the worker behind the slot"
        );
        assert_eq!(*request_len, request.encoded_len());
        let left = left.expect("the default timeout sets a deadline");
        assert!(
            left <= workerbus::DEFAULT_TIMEOUT && left > Duration::from_secs(20),
            "{left:?}"
        );
        let methods: Vec<&str> = seen.iter().map(|(method, ..)| method.as_str()).collect();
        assert_eq!(
            methods,
            ["echo.echo", "echo.count", "echo.note", "echo.progress"]
        );
    }

    let waiting = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.closed().await })
    };
    assert!(!channel.is_closed());
    supervisor.shutdown().await;
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("closed() returns once the supervisor shut the worker down")
        .unwrap();
    assert!(channel.is_closed());
    assert_eq!(channel.in_flight(), 0, "no worker, nothing in flight");
    let error = client.count(count_request(1)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.count failed: worker edges is unavailable: its supervisor shut it down"
    );
    let error = client.note(NoteRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    // Its events end with it.
    let mut events = EchoEvents::subscribe(&channel);
    let ended: Option<Result<EchoEvent, Error>> = events.next_event().await;
    assert!(ended.is_none());
}
