//! Unit tests of the client: the pending table, the link, deadlines and
//! retries, on in-memory and scripted transports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, FrameError, Status};
use crate::frame::Frame;
use crate::name::MethodName;

use super::channel::{Channel, wait_closed};
use super::deadline::Deadlines;
use super::options::{CallOptions, ChannelOptions, DEFAULT_TIMEOUT, MethodDefaults, Resolved};
use super::pending::{Failure, lock};
use crate::transport::MemoryTransport;
use futures_util::{SinkExt, StreamExt};

static ECHO: MethodName = MethodName::from_static("test.echo");

fn resolved(timeout: Option<Duration>, retries: u32) -> Resolved {
    Resolved {
        timeout,
        retries,
        backoff: Backoff::constant(Duration::from_millis(10)),
        idempotent: true,
        metadata: crate::Metadata::new(),
        response_metadata: None,
        trace: None,
        first_attempt: 1,
    }
}

async fn next_request(worker: &mut MemoryTransport) -> (u64, u32, Bytes) {
    match worker.next().await.unwrap().unwrap() {
        Frame::Request {
            id,
            attempt,
            payload,
            ..
        } => (id, attempt, payload.into_bytes()),
        other => panic!("expected a request, got {other:?}"),
    }
}

/// A transport whose writes all fail, handing back as unwritten the
/// requests it was given; it never receives anything.
#[derive(Default)]
struct Refusing {
    given: Vec<Frame>,
}

impl futures_core::Stream for Refusing {
    type Item = Result<Frame, FrameError>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Pending
    }
}

impl futures_sink::Sink<Frame> for Refusing {
    type Error = FrameError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        self.given.push(frame);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let requests: Vec<(u64, crate::payload::Payload)> = std::mem::take(&mut self.given)
            .into_iter()
            .filter_map(|frame| match frame {
                Frame::Request { id, payload, .. } => Some((id, payload)),
                _ => None,
            })
            .collect();
        if requests.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let source = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        Poll::Ready(Err(FrameError::Unwritten { source, requests }))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_handed_back_unwritten_ends_as_never_sent_or_given_up_meanwhile() {
    // The exit is never reported: the link waits a second to learn it,
    // holding the requests it could not write meanwhile.
    let (_exit, watch) = watch::channel(None);
    let channel = Channel::connect(
        Refusing::default(),
        ChannelOptions::new(),
        Some(watch),
        "test",
    );
    let shared = Arc::clone(channel.direct().unwrap());
    let options = resolved(Some(Duration::from_secs(10)), 0);
    let payload = Bytes::from_static(b"never written");
    let kept = channel.call(&ECHO, payload.clone().into(), &options);
    tokio::pin!(kept);
    {
        let given_up = channel.call(&ECHO, payload.clone().into(), &options);
        tokio::pin!(given_up);
        for mut call in [kept.as_mut(), given_up.as_mut()] {
            let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        // The link writes, fails, and learns which requests were not
        // written.
        while !lock(&shared).closing {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&shared).unwritten.len(), 2);
        assert_eq!(lock(&shared).queued_bytes, 0);
    }
    // The one given up meanwhile is gone; the other ends with the
    // connection, as never sent: its payload comes back.
    wait_closed(&shared).await;
    let outcome = match lock(&shared)
        .calls
        .get(&1)
        .expect("the call kept")
        .outcome()
    {
        Some(Err(Failure::Undelivered { payload, .. })) => payload.clone(),
        other => panic!("expected the request back, got {other:?}"),
    };
    assert_eq!(outcome.into_bytes(), payload);
    assert_eq!(lock(&shared).calls.len(), 1);
    assert_eq!(lock(&shared).queued_bytes, 0);
    let error = kept.await.unwrap_err();
    assert!(matches!(error, Error::Disconnected { .. }), "{error:?}");
}

#[tokio::test]
async fn answers_reach_their_own_callers_out_of_order() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let opts = resolved(None, 0);
    let a = channel.call(&ECHO, Bytes::from_static(b"a").into(), &opts);
    let b = channel.call(&ECHO, Bytes::from_static(b"b").into(), &opts);
    let answer = async {
        let first = next_request(&mut worker).await;
        let second = next_request(&mut worker).await;
        for (id, _, payload) in [second, first] {
            worker
                .send(Frame::Response {
                    id,
                    payload: payload.into(),
                })
                .await
                .unwrap();
        }
    };
    let (a, b, ()) = tokio::join!(a, b, answer);
    assert_eq!(a.unwrap().into_bytes(), "a");
    assert_eq!(b.unwrap().into_bytes(), "b");
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_sends_cancel_and_leaves_no_slot() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let result = channel
        .call(
            &ECHO,
            Bytes::new().into(),
            &resolved(Some(Duration::from_secs(2)), 0),
        )
        .await;
    assert!(
        matches!(&result, Err(Error::Timeout { method, after }) if *method == "test.echo" && *after == Duration::from_secs(2)),
        "{result:?}"
    );
    assert_eq!(channel.in_flight(), 0);
    let (id, _, _) = next_request(&mut worker).await;
    assert_eq!(worker.next().await.unwrap().unwrap(), Frame::Cancel { id });
    // A late answer is dropped, not delivered to anyone.
    worker
        .send(Frame::Response {
            id,
            payload: Bytes::new().into(),
        })
        .await
        .unwrap();
    let opts = resolved(None, 0);
    let again = channel.call(&ECHO, Bytes::from_static(b"x").into(), &opts);
    let serve = async {
        let (id, _, payload) = next_request(&mut worker).await;
        worker
            .send(Frame::Response {
                id,
                payload: payload.into(),
            })
            .await
            .unwrap();
    };
    let (again, ()) = tokio::join!(again, serve);
    assert_eq!(again.unwrap().into_bytes(), "x");
}

#[tokio::test(start_paused = true)]
async fn a_call_due_sooner_than_the_others_times_out_on_time() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    // A slow call sets the link's timer for a minute from now...
    let minute = resolved(Some(Duration::from_secs(60)), 0);
    let slow = channel.call(&ECHO, Bytes::new().into(), &minute);
    tokio::pin!(slow);
    let slow_id = tokio::select! {
        _ = &mut slow => panic!("the slow call ended unanswered"),
        (id, _, _) = next_request(&mut worker) => id,
    };
    // ...and one due in 50 ms must move it forward.
    let started = Instant::now();
    let quick = channel
        .call(
            &ECHO,
            Bytes::new().into(),
            &resolved(Some(Duration::from_millis(50)), 0),
        )
        .await;
    assert!(matches!(quick, Err(Error::Timeout { .. })), "{quick:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    let (quick_id, _, _) = next_request(&mut worker).await;
    assert_eq!(
        worker.next().await.unwrap().unwrap(),
        Frame::Cancel { id: quick_id }
    );
    // The slow call still waits for its answer, and gets it.
    worker
        .send(Frame::Response {
            id: slow_id,
            payload: Bytes::from_static(b"late").into(),
        })
        .await
        .unwrap();
    assert_eq!(slow.await.unwrap().into_bytes(), "late");
    assert_eq!(channel.in_flight(), 0);
}

proptest::proptest! {
    #[test]
    fn deadlines_leave_earliest_first_whatever_order_they_came_in(
        steps in proptest::collection::vec((0u64..50, proptest::bool::weighted(0.3)), 0..200),
    ) {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let mut model: Vec<(Instant, u64)> = Vec::new();
        for (id, (offset, pop)) in (0u64..).zip(steps) {
            if pop {
                model.sort_unstable();
                let earliest = (!model.is_empty()).then(|| model.remove(0));
                proptest::prop_assert_eq!(deadlines.peek(), earliest);
                deadlines.pop();
            } else {
                let entry = (start + Duration::from_millis(offset), id);
                deadlines.push(entry);
                model.push(entry);
            }
            proptest::prop_assert_eq!(deadlines.len(), model.len());
        }
    }
}

#[tokio::test]
async fn deadlines_of_answered_calls_do_not_pile_up() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let opts = resolved(Some(Duration::from_secs(3600)), 0);
    let serve = async move {
        while let Some(Ok(Frame::Request { id, payload, .. })) = worker.next().await {
            worker.send(Frame::Response { id, payload }).await.unwrap();
        }
    };
    let calls = async {
        for _ in 0..5_000 {
            channel
                .call(&ECHO, Bytes::new().into(), &opts)
                .await
                .unwrap();
        }
    };
    tokio::select! {
        () = calls => {}
        () = serve => panic!("the worker end closed"),
    }
    let shared = channel.direct().unwrap();
    // Every call is answered and due in an hour: the entries left are
    // at most those of one sweep's worth.
    let pending = lock(shared).deadlines.len();
    assert!(
        pending <= 1024 + 2,
        "{pending} deadline entries kept for 5000 answered calls"
    );
}

#[tokio::test]
async fn worker_end_fails_every_pending_call_and_later_calls() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let opts = resolved(None, 0);
    let calls = futures_util::future::join_all(
        (0..10).map(|_| channel.call(&ECHO, Bytes::new().into(), &opts)),
    );
    let kill = async {
        for _ in 0..10 {
            next_request(&mut worker).await;
        }
        drop(worker);
    };
    let (results, ()) = tokio::join!(calls, kill);
    for result in results {
        assert!(
            matches!(result, Err(Error::Disconnected { cause: None, .. })),
            "{result:?}"
        );
    }
    assert_eq!(channel.in_flight(), 0);
    assert!(channel.is_closed());
    let after = channel.call(&ECHO, Bytes::new().into(), &opts).await;
    assert!(
        matches!(after, Err(Error::Disconnected { .. })),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_frame_only_a_worker_may_receive_closes_the_connection() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let opts = resolved(None, 0);
    let call = channel.call(&ECHO, Bytes::new().into(), &opts);
    let misbehave = async {
        next_request(&mut worker).await;
        worker.send(Frame::Cancel { id: 1 }).await.unwrap();
    };
    let (result, ()) = tokio::join!(call, misbehave);
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "test.echo failed: disconnected from the worker: unexpected CANCEL frame from the worker"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_resend_with_a_new_id_and_attempt_number() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let opts = resolved(None, 2);
    let call = channel.call(&ECHO, Bytes::from_static(b"p").into(), &opts);
    let serve = async {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (id, attempt, _) = next_request(&mut worker).await;
            seen.push((id, attempt));
            worker
                .send(Frame::Status {
                    id,
                    status: Status::unavailable("busy"),
                })
                .await
                .unwrap();
        }
        let (id, attempt, payload) = next_request(&mut worker).await;
        seen.push((id, attempt));
        worker
            .send(Frame::Response {
                id,
                payload: payload.into(),
            })
            .await
            .unwrap();
        seen
    };
    let (result, seen) = tokio::join!(call, serve);
    assert_eq!(result.unwrap().into_bytes(), "p");
    assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
}

/// A message that counts its copies.
#[derive(Debug, Default)]
struct Copied {
    copies: Arc<AtomicUsize>,
}

impl Clone for Copied {
    fn clone(&self) -> Copied {
        self.copies.fetch_add(1, Ordering::SeqCst);
        Copied {
            copies: Arc::clone(&self.copies),
        }
    }
}

crate::payload::test_message!(Copied);

/// Answers `failures + 1` attempts of a call, taking each one's message
/// as a generated server does; all but the last are refused. Each
/// attempt arrives with no copy made for it: `copies` counts only the
/// takes before it, from `before`, its count when the call was made.
async fn take_attempts(
    worker: &mut MemoryTransport,
    failures: usize,
    copies: &AtomicUsize,
    before: usize,
) {
    for attempt in 0..=failures {
        let Some(Ok(Frame::Request { id, payload, .. })) = worker.next().await else {
            panic!("expected a request");
        };
        let taken_before = if failures == 0 { 0 } else { attempt };
        assert_eq!(
            copies.load(Ordering::SeqCst) - before,
            taken_before,
            "attempt {attempt} was copied to be sent"
        );
        let _taken: Copied = payload.decode().unwrap();
        let answer = if attempt < failures {
            Frame::Status {
                id,
                status: Status::unavailable("busy"),
            }
        } else {
            Frame::Response {
                id,
                payload: crate::Payload::new(),
            }
        };
        worker.send(answer).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_is_copied_only_where_a_retry_may_need_it_and_once_an_attempt() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let copies = Arc::new(AtomicUsize::new(0));
    let message = || Copied {
        copies: Arc::clone(&copies),
    };
    // Run once: handed over, never copied.
    let once = resolved(None, 0);
    let call = channel.call(&ECHO, crate::Payload::message(message()), &once);
    let (result, ()) = tokio::join!(call, take_attempts(&mut worker, 0, &copies, 0));
    result.unwrap();
    assert_eq!(copies.load(Ordering::SeqCst), 0);

    // May run again: the attempts share the message the call keeps, and
    // each worker's take copies it, once an attempt.
    let again = resolved(None, 2);
    let call = channel.call(&ECHO, crate::Payload::message(message()), &again);
    let (result, ()) = tokio::join!(call, take_attempts(&mut worker, 2, &copies, 0));
    result.unwrap();
    assert_eq!(copies.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn dropping_every_channel_closes_the_transport() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let clone = channel.clone();
    drop(channel);
    drop(clone);
    assert!(worker.next().await.is_none());
}

#[test]
fn options_fall_back_call_then_client_then_schema_then_library() {
    let schema = MethodDefaults {
        timeout: Some(Duration::from_secs(5)),
        retries: Some(2),
        idempotent: true,
    };
    let none = CallOptions::new();
    let client = CallOptions::new().timeout(Duration::from_secs(9));
    let call = CallOptions::new().retries(7);
    let r = CallOptions::resolve([Some(&call), Some(&client)], &schema);
    assert_eq!((r.timeout, r.retries), (Some(Duration::from_secs(9)), 7));
    let r = CallOptions::resolve([Some(&none), None], &schema);
    assert_eq!((r.timeout, r.retries), (Some(Duration::from_secs(5)), 2));
    let r = CallOptions::resolve([None, None], &MethodDefaults::default());
    assert_eq!((r.timeout, r.retries), (Some(DEFAULT_TIMEOUT), 0));
    let forever = CallOptions::new().no_timeout();
    assert_eq!(
        CallOptions::resolve([Some(&forever), None], &schema).timeout,
        None
    );
}

#[test]
fn retries_apply_only_to_idempotent_methods() {
    let schema = MethodDefaults {
        retries: Some(3),
        ..MethodDefaults::default()
    };
    assert_eq!(CallOptions::resolve([None, None], &schema).retries, 0);
    let asserted = CallOptions::new().idempotent(true);
    assert_eq!(
        CallOptions::resolve([Some(&asserted), None], &schema).retries,
        3
    );
}

#[test]
fn a_methods_defaults_resolved_at_compile_time_are_those_resolved_at_run_time() {
    // An attempt number of 1 is the library's own: set, it sends the
    // options through the full fallback without changing the outcome.
    let set = CallOptions::new().attempt(1);
    for schema in [
        MethodDefaults::default(),
        MethodDefaults {
            timeout: Some(Duration::from_secs(5)),
            retries: Some(2),
            idempotent: true,
        },
        MethodDefaults {
            retries: Some(3),
            ..MethodDefaults::default()
        },
        MethodDefaults {
            timeout: Some(Duration::MAX),
            ..MethodDefaults::default()
        },
    ] {
        assert_eq!(
            Resolved::of(&schema),
            CallOptions::resolve([Some(&set), None], &schema)
        );
    }
}
