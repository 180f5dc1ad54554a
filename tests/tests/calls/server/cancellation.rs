//! The cancellation a handler hands its work (`Context::cancelled`), seen
//! through raw frames: fired by a `CANCEL` (asked for in the handler or
//! already in the dispatch), by the connection's end, and by the deadline of
//! a call or a one-way message; never by the handler's answer.
//!
//! That work stops within 50 ms of a cancel or a deadline on every driver
//! is a shared case (`cases::handed_off_work_stops_*`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use workerbus::{
    Call, Cancellation, Frame, MemoryTransport, MethodKind, ServeOptions, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoServer, HandOffRequest, SleepState};

use super::{Handled, Probe, next, request, request_within, serve_with, still_serving};

fn hand_off(id: u64, tag: &str, blocking: bool, timeout: Option<Duration>) -> Frame {
    let message = HandOffRequest {
        tag: tag.to_owned(),
        blocking,
    };
    request_within(id, "echo.hand_off", timeout, &message)
}

/// A service whose calls give the test their cancellation, asked for in
/// the dispatch itself (before the handler's first poll) or in the handler,
/// and then answer, or (`echo.sleep`) wait to be cancelled.
fn handing_out(tokens: tokio::sync::mpsc::UnboundedSender<Cancellation>) -> Probe {
    Probe(Box::new(move |call: Call| -> Handled {
        let (_payload, cx, _streams) = call.into_parts();
        let tokens = tokens.clone();
        if cx.method() == "echo.sleep" {
            tokens.send(cx.cancelled()).unwrap();
            return Box::pin(std::future::pending());
        }
        Box::pin(async move {
            tokens.send(cx.cancelled()).unwrap();
            Ok(workerbus::Payload::new())
        })
    }))
}

async fn token(tokens: &mut tokio::sync::mpsc::UnboundedReceiver<Cancellation>) -> Cancellation {
    tokio::time::timeout(Duration::from_secs(20), tokens.recv())
        .await
        .expect("a handler asks within 20 s")
        .expect("the service is alive")
}

/// A `CANCEL` fires the token of the call it is for, asked for in its
/// dispatch, before the call has an entry among those running (a handler's
/// first poll in the serve loop is such a moment too); its other calls'
/// tokens stay as they were.
#[tokio::test]
async fn a_cancel_fires_the_token_its_dispatch_asked_for() {
    let (sender, mut tokens) = tokio::sync::mpsc::unbounded_channel();
    let (mut host, _served) = serve_with(handing_out(sender), ServeOptions::new());
    host.send(request(1, "echo.sleep", &())).await.unwrap();
    host.send(request(2, "echo.sleep", &())).await.unwrap();
    let (first, second) = (token(&mut tokens).await, token(&mut tokens).await);
    assert!(!first.is_cancelled() && !second.is_cancelled());
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), first.clone())
        .await
        .expect("the cancel fired the token");
    assert!(first.is_cancelled());
    assert!(!second.is_cancelled());
    assert_eq!(
        format!("{first:?}"),
        "Cancellation { cancelled: true, deadline: None }"
    );
}

/// A call whose handler answered is not cancelled: neither a late `CANCEL`
/// nor the connection's end fires its token.
#[tokio::test]
async fn an_answered_call_s_token_never_fires() {
    let (sender, mut tokens) = tokio::sync::mpsc::unbounded_channel();
    let (mut host, served) = serve_with(handing_out(sender), ServeOptions::new());
    host.send(request(1, "echo.echo", &())).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 1, .. }
    ));
    let answered = token(&mut tokens).await;
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    // Answered after the cancel was read: the cancel has been dealt with.
    host.send(request(2, "echo.echo", &())).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
    drop(host);
    served.await.unwrap().unwrap();
    assert!(!answered.is_cancelled(), "{answered:?}");
}

/// The work handed off by calls still running when their connection ends
/// stops: the host closed it, or the serve loop was dropped. Nobody is left
/// to hear an answer.
#[tokio::test]
async fn handed_off_work_stops_when_its_connection_ends() {
    for ending in ["closed by the host", "serve loop dropped"] {
        let handler = Arc::new(EchoWorker::new());
        let (mut host, worker) = MemoryTransport::pair();
        let served = tokio::spawn(serve_transport(
            worker,
            EchoServer::from_arc(Arc::clone(&handler)),
            ServeOptions::new(),
        ));
        let (task, blocking) = (format!("task, {ending}"), format!("blocking, {ending}"));
        host.send(hand_off(1, &task, false, None)).await.unwrap();
        host.send(hand_off(2, &blocking, true, None)).await.unwrap();
        handler.wait_for(&task, SleepState::Started).await;
        handler.wait_for(&blocking, SleepState::Started).await;
        match ending {
            "closed by the host" => drop(host),
            _ => served.abort(),
        }
        for tag in [&task, &blocking] {
            tokio::time::timeout(
                Duration::from_secs(10),
                handler.wait_for(tag, SleepState::Cancelled),
            )
            .await
            .unwrap_or_else(|_| panic!("the work of {tag:?} runs on"));
        }
    }
}

/// The work a call handed off stops at the call's deadline with no
/// `CANCEL` sent (a host's timeout sends one, which may arrive first): so
/// does a one-way message's, which never has a `CANCEL`.
#[tokio::test]
async fn handed_off_work_stops_at_its_deadline_without_a_cancel() {
    let handler = Arc::new(EchoWorker::new());
    let (mut host, _served) = serve_with(
        EchoServer::from_arc(Arc::clone(&handler)),
        ServeOptions::new(),
    );
    let within = Some(Duration::from_millis(200));
    let calls = [
        (
            "call, to a task",
            hand_off(1, "call, to a task", false, within),
        ),
        (
            "call, blocking",
            hand_off(2, "call, blocking", true, within),
        ),
        (
            "one-way, to a task",
            hand_off(3, "one-way, to a task", false, within).with_kind(MethodKind::OneWay),
        ),
        (
            "one-way, blocking",
            hand_off(4, "one-way, blocking", true, within).with_kind(MethodKind::OneWay),
        ),
    ];
    for (tag, frame) in calls {
        host.send(frame).await.unwrap();
        handler.wait_for(tag, SleepState::Started).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            handler.wait_for(tag, SleepState::Cancelled),
        )
        .await
        .unwrap_or_else(|_| panic!("the work of {tag:?} runs on past its deadline"));
    }
    // None answered (dropped at the deadline): the next frame is the answer
    // to a later call.
    still_serving(&mut host, 5).await;
}

/// A handler that ends on its own once its deadline has passed (here: when
/// its token fires) is not answered, as a handler dropped at the deadline
/// is not: the caller's own timer ends the call there, with a timeout, and
/// an answer would only race it.
#[tokio::test]
async fn a_handler_that_ends_at_its_deadline_is_not_answered() {
    let (fired, mut gave_up) = tokio::sync::mpsc::unbounded_channel();
    let probe = Probe(Box::new(move |call: Call| -> Handled {
        let (_payload, cx, _streams) = call.into_parts();
        let fired = fired.clone();
        Box::pin(async move {
            if cx.method() != "echo.sleep" {
                return Ok(workerbus::Payload::new());
            }
            cx.cancelled().await;
            fired.send(()).unwrap();
            Err(workerbus::Status::cancelled("gave up at the deadline"))
        })
    }));
    let (mut host, _served) = serve_with(probe, ServeOptions::new());
    let sleep = request_within(1, "echo.sleep", Some(Duration::from_millis(50)), &());
    host.send(sleep).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), gave_up.recv())
        .await
        .expect("the token fires at the deadline");
    host.send(request(2, "echo.now", &())).await.unwrap();
    match next(&mut host).await {
        Frame::Response { id: 2, .. } => {}
        other => panic!("expected only the answer to request 2, got {other:?}"),
    }
}
