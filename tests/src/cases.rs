//! Cases every driver must pass. Each takes a channel to a worker serving
//! [`EchoWorker`](crate::EchoWorker) and ends by checking that no call is
//! left in the channel's pending table.

use std::time::Duration;

use bytes::Bytes;
use workerbus::{Backoff, CallOptions, Channel, Code, Error, ExitReason};

use crate::pb::common::{Order, Page};
use crate::pb::echo::{
    EchoClient, EchoRequest, FailRequest, FlakyRequest, MissingClient, ObserveRequest,
    PanicRequest, SleepRequest, SleepState,
};

fn echo(channel: &Channel) -> EchoClient {
    EchoClient::new(channel.clone())
}

fn assert_settled(channel: &Channel) {
    assert_eq!(channel.in_flight(), 0, "calls left in the pending table");
}

/// Waits (through the worker) until the sleep tagged `tag` reaches `state`.
pub async fn observe(channel: &Channel, tag: &str, state: SleepState) {
    echo(channel)
        .observe_with(
            ObserveRequest {
                tag: tag.to_owned(),
                state: state.into(),
            },
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_or_else(|error| panic!("sleep {tag:?} never reached {state:?}: {error}"));
}

/// A call returns the handler's response.
pub async fn unary_round_trip(channel: &Channel) {
    let reply = echo(channel)
        .echo(EchoRequest {
            text: "hello".into(),
            data: Bytes::from_static(b"\x00\x01\x02"),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.data, Bytes::from_static(b"\x00\x01\x02"));
    assert_settled(channel);
}

/// A handler's `Err(Status)` reaches the caller with code, message and
/// details intact, and the error names the method.
pub async fn remote_status_is_intact(channel: &Channel) {
    let error = echo(channel)
        .fail(FailRequest {
            code: Code::NotFound.as_u32(),
            message: "no document 42 (é ✓)".into(),
            details: Bytes::from_static(b"detail"),
            repeat: 1,
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no document 42 (é ✓)");
    assert_eq!(status.details(), &Bytes::from_static(b"detail"));
    assert_eq!(error.method(), Some("echo.fail"));
    assert_eq!(
        error.to_string(),
        "echo.fail failed: not found: no document 42 (é ✓)"
    );
    assert_settled(channel);
}

/// A message name the worker does not serve is answered `Unimplemented`,
/// naming the method and the service.
pub async fn unknown_method_is_unimplemented(channel: &Channel) {
    let error = MissingClient::new(channel.clone())
        .nothing(())
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .starts_with("missing.nothing is not a method of echo.Echo (it has: echo.echo, "),
        "{}",
        status.message()
    );
    assert_settled(channel);
}

/// A panicking handler is answered `Internal` with its message, and the
/// worker goes on serving.
pub async fn handler_panic_is_internal(channel: &Channel) {
    let error = echo(channel)
        .panic(PanicRequest {
            message: "boom".into(),
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "the handler for echo.panic panicked: boom"
    );
    unary_round_trip(channel).await;
}

/// `count` calls in flight at once, finishing in shuffled order, each get
/// their own answer.
pub async fn concurrent_calls_are_correlated(channel: &Channel, count: usize) {
    let client = echo(channel);
    let calls = (0..count).map(|i| {
        let client = client.clone();
        async move {
            let text = format!("call {i}");
            let reply = client
                .echo(EchoRequest {
                    text: text.clone(),
                    data: Bytes::from(i.to_le_bytes().to_vec()),
                    // Later calls often finish first.
                    delay_ms: ((i * 7919) % 13) as u32,
                })
                .await
                .unwrap();
            assert_eq!(reply.text, text);
            assert_eq!(reply.data, Bytes::from(i.to_le_bytes().to_vec()));
        }
    });
    futures_util::future::join_all(calls).await;
    assert_settled(channel);
}

/// 300,000 multi-byte characters and 4 MiB of bytes round-trip unchanged.
pub async fn large_payloads_round_trip(channel: &Channel) {
    let text: String = "é✓🦀".chars().cycle().take(300_000).collect();
    let data: Bytes = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let reply = echo(channel)
        .echo(EchoRequest {
            text: text.clone(),
            data: data.clone(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.text.chars().count(), 300_000);
    assert!(reply.text == text, "text changed in transit");
    assert!(reply.data == data, "bytes changed in transit");
    assert_settled(channel);
}

/// Dropping a call's future cancels its handler in the worker.
pub async fn dropping_a_call_cancels_the_handler(channel: &Channel) {
    let client = echo(channel);
    let call = client.sleep(SleepRequest {
        tag: "dropped".into(),
        ms: 60_000,
        blocking: false,
    });
    let mut call = Box::pin(call);
    tokio::select! {
        result = &mut call => panic!("the sleep ended early: {result:?}"),
        () = observe(channel, "dropped", SleepState::Started) => {}
    }
    drop(call);
    observe(channel, "dropped", SleepState::Cancelled).await;
    assert_settled(channel);
}

/// A call that outlives its timeout fails with `Timeout` naming the method
/// and the duration, and its handler is cancelled.
pub async fn timeout_cancels_the_handler(channel: &Channel) {
    let client = echo(channel);
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let request = SleepRequest {
        tag: "timed out".into(),
        ms: 60_000,
        blocking: false,
    };
    let call = client.sleep_with(request, options);
    // The handler must have started for its cancellation to be observable.
    let (result, ()) = tokio::join!(call, observe(channel, "timed out", SleepState::Started));
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::Timeout { method, after } if *method == "echo.sleep" && *after == Duration::from_secs(1)),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "echo.sleep timed out after 1s");
    observe(channel, "timed out", SleepState::Cancelled).await;
    assert_settled(channel);
}

/// The schema's `retries: 3, idempotent: true` on `Flaky` apply without any
/// call options: attempts are counted and sent to the worker, and the last
/// failure is returned when they run out. The method travels under its
/// overridden name.
pub async fn schema_retries_apply(channel: &Channel) {
    let client = echo(channel)
        .with_options(CallOptions::new().backoff(Backoff::constant(Duration::from_millis(1))));
    let reply = client.flaky(FlakyRequest { succeed_on: 4 }).await.unwrap();
    assert_eq!(reply.attempt, 4, "three retries after the first attempt");
    let error = client
        .flaky(FlakyRequest { succeed_on: 5 })
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.flaky_v2 failed: unavailable: attempt 4 fails"
    );
    let error = client
        .flaky_with(
            FlakyRequest { succeed_on: 2 },
            CallOptions::new().retries(0),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.code()), Some(Code::Unavailable));
    assert_settled(channel);
}

/// Well-known types (`Empty`, `Timestamp`) and messages of another package
/// cross the boundary.
pub async fn well_known_types_and_imports(channel: &Channel) {
    let client = echo(channel);
    let now = client.now(()).await.unwrap();
    assert!(now.seconds > 1_600_000_000, "{now:?}");
    let page = Page {
        limit: 10,
        cursor: "abc".into(),
        order: Order::Descending.into(),
    };
    assert_eq!(client.page(page.clone()).await.unwrap(), page);
    assert_settled(channel);
}

/// After the worker is gone, calls fail at once with how it ended.
pub async fn calls_after_exit_fail_fast(channel: &Channel, exit: &ExitReason) {
    let error = echo(channel)
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    match &error {
        Error::WorkerExited { method, exit: got } => {
            assert_eq!(method, "echo.echo");
            assert_eq!(got, exit);
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert_settled(channel);
}

/// Every case that needs nothing but a fresh worker, in one go.
pub async fn all(channel: &Channel) {
    unary_round_trip(channel).await;
    remote_status_is_intact(channel).await;
    unknown_method_is_unimplemented(channel).await;
    handler_panic_is_internal(channel).await;
    concurrent_calls_are_correlated(channel, 1000).await;
    large_payloads_round_trip(channel).await;
    dropping_a_call_cancels_the_handler(channel).await;
    timeout_cancels_the_handler(channel).await;
    schema_retries_apply(channel).await;
    well_known_types_and_imports(channel).await;
}
