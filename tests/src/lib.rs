//! Test support: the generated test services, a handler that provokes each
//! runtime behaviour on request, and test cases shared by every driver.
//!
//! The handler reports what happened inside the worker (a sleep started, was
//! cancelled...) through rpcs of its own (`Observe`, `Stats`), so the same
//! cases run unchanged whether the worker is a thread or a process.

pub mod cases;
pub mod heap;
pub mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use workerbus::{Code, Context, Incoming, Status, StreamSender};

/// The generated code of the test schemas.
pub mod pb {
    /// Package `common` (imported by `echo`).
    #[allow(missing_docs)]
    pub mod common {
        workerbus::include_proto!("common");
    }

    /// Package `echo`: the `Echo` and `Missing` services.
    #[allow(missing_docs)]
    pub mod echo {
        workerbus::include_proto!("echo");
    }
}

/// The descriptors of `echo.proto` and its imports, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = workerbus::include_descriptor_set!();

use pb::common::Page;
use pb::echo::{
    AnnounceReply, AnnounceRequest, CountReply, CountRequest, EchoEmitter, EchoHandler, EchoReply,
    EchoRequest, ExitRequest, FailRequest, FlakyReply, FlakyRequest, HandOffRequest, NoteRequest,
    ObserveRequest, PanicRequest, ProgressReply, ProgressRequest, SleepRequest, SleepState,
    StatsReply, SumReply, SumRequest, TickEvent, TraceReply,
};
use pb::echo::{Header, HeadersReply, HeadersRequest};

/// The `Echo` handler.
#[derive(Debug, Default)]
pub struct EchoWorker {
    state: Arc<EchoState>,
    on_drop: Option<std::sync::mpsc::Sender<()>>,
    /// Whether `Exit` may end the process: only in a worker process.
    may_exit: bool,
}

#[derive(Debug, Default)]
struct EchoState {
    sleeps: Mutex<HashMap<String, SleepState>>,
    changed: tokio::sync::Notify,
    running: AtomicU32,
    peak: AtomicU32,
    cancelled: AtomicU32,
    /// Messages sent or read by the stream with a tag.
    progress: Mutex<HashMap<String, u64>>,
}

impl EchoWorker {
    /// A fresh handler.
    pub fn new() -> EchoWorker {
        EchoWorker::default()
    }

    /// A handler that sends on `signal` when it is dropped, i.e. when the
    /// worker serving it has stopped and released it.
    pub fn with_drop_signal(signal: std::sync::mpsc::Sender<()>) -> EchoWorker {
        EchoWorker {
            state: Arc::default(),
            on_drop: Some(signal),
            may_exit: false,
        }
    }

    /// A handler for a worker process, whose `Exit` ends the process.
    pub fn in_process() -> EchoWorker {
        EchoWorker {
            state: Arc::default(),
            on_drop: None,
            may_exit: true,
        }
    }
}

impl EchoWorker {
    /// Waits until the sleep tagged `tag` has reached `state`, observed from
    /// the host's side when the worker runs in the same process.
    pub async fn wait_for(&self, tag: &str, state: SleepState) {
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.reached(tag, state) {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for EchoWorker {
    fn drop(&mut self) {
        if let Some(signal) = self.on_drop.take() {
            let _ = signal.send(());
        }
    }
}

impl EchoState {
    fn set(&self, tag: &str, state: SleepState) {
        self.sleeps.lock().unwrap().insert(tag.to_owned(), state);
        self.changed.notify_waiters();
    }

    /// Counts one more message of the stream tagged `tag`.
    fn advance(&self, tag: &str) {
        *self
            .progress
            .lock()
            .unwrap()
            .entry(tag.to_owned())
            .or_default() += 1;
        self.changed.notify_waiters();
    }

    /// Waits until the stream tagged `tag` has counted `at_least` messages.
    async fn progressed(&self, tag: &str, at_least: u64) -> u64 {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let messages = self.progress.lock().unwrap().get(tag).copied();
            if let Some(messages) = messages.filter(|messages| *messages >= at_least) {
                return messages;
            }
            changed.await;
        }
    }

    fn reached(&self, tag: &str, wanted: SleepState) -> bool {
        let sleeps = self.sleeps.lock().unwrap();
        match (sleeps.get(tag), wanted) {
            (None, _) => false,
            (Some(_), SleepState::Started) => true,
            (Some(state), wanted) => *state == wanted,
        }
    }
}

/// How long the work `HandOff` hands off runs at most when its cancellation
/// never fires (it then records that it finished): long past what any test
/// waits, but a runtime that waits for its blocking threads as it shuts down
/// is not held forever by a test that failed.
const HAND_OFF_LIMIT: Duration = Duration::from_secs(30);

impl EchoState {
    /// Hands work off, as `HandOff` does: it runs until the call's
    /// cancellation fires, recording under `tag` that it started, and that
    /// it saw the cancellation. Then waits for the caller to give up.
    async fn hand_off(self: &Arc<Self>, request: HandOffRequest, cx: &Context) -> Status {
        let cancellation = cx.cancelled();
        let (state, tag) = (Arc::clone(self), request.tag);
        if request.blocking {
            tokio::task::spawn_blocking(move || {
                state.set(&tag, SleepState::Started);
                let started = std::time::Instant::now();
                while !cancellation.is_cancelled() {
                    if started.elapsed() > HAND_OFF_LIMIT {
                        return state.set(&tag, SleepState::Finished);
                    }
                    // A chunk of work between two checks.
                    std::thread::sleep(Duration::from_millis(1));
                }
                state.set(&tag, SleepState::Cancelled);
            });
        } else {
            tokio::spawn(async move {
                state.set(&tag, SleepState::Started);
                let ended = match tokio::time::timeout(HAND_OFF_LIMIT, cancellation).await {
                    Ok(()) => SleepState::Cancelled,
                    Err(_) => SleepState::Finished,
                };
                state.set(&tag, ended);
            });
        }
        std::future::pending().await
    }
}

/// Marks a sleep started; marks it cancelled if dropped before `finish`.
struct SleepGuard {
    state: Arc<EchoState>,
    tag: String,
    finished: bool,
}

impl SleepGuard {
    fn start(state: &Arc<EchoState>, tag: String) -> SleepGuard {
        let running = state.running.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(running, Ordering::SeqCst);
        state.set(&tag, SleepState::Started);
        SleepGuard {
            state: Arc::clone(state),
            tag,
            finished: false,
        }
    }
}

impl Drop for SleepGuard {
    fn drop(&mut self) {
        self.state.running.fetch_sub(1, Ordering::SeqCst);
        if self.finished {
            self.state.set(&self.tag, SleepState::Finished);
        } else {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
            self.state.set(&self.tag, SleepState::Cancelled);
        }
    }
}

impl EchoHandler for EchoWorker {
    async fn echo(&self, request: EchoRequest, _cx: &Context) -> Result<EchoReply, Status> {
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        }
        Ok(EchoReply {
            text: request.text,
            data: request.data,
        })
    }

    async fn fail(&self, request: FailRequest, _cx: &Context) -> Result<(), Status> {
        let message = request.message.repeat(request.repeat.max(1) as usize);
        Err(Status::new(Code::from_u32(request.code), message).with_details(request.details))
    }

    async fn sleep(&self, request: SleepRequest, _cx: &Context) -> Result<(), Status> {
        let mut guard = SleepGuard::start(&self.state, request.tag);
        if request.blocking {
            eprintln!(
                "echo-worker: sleep {:?} blocks its thread for {} ms",
                guard.tag, request.ms
            );
            std::thread::sleep(Duration::from_millis(request.ms));
        } else {
            tokio::time::sleep(Duration::from_millis(request.ms)).await;
        }
        guard.finished = true;
        Ok(())
    }

    async fn observe(&self, request: ObserveRequest, _cx: &Context) -> Result<(), Status> {
        let wanted = request.state();
        self.wait_for(&request.tag, wanted).await;
        Ok(())
    }

    async fn panic(&self, request: PanicRequest, _cx: &Context) -> Result<(), Status> {
        panic!("{}", request.message)
    }

    async fn flaky(&self, request: FlakyRequest, cx: &Context) -> Result<FlakyReply, Status> {
        if cx.attempt() < request.succeed_on {
            return Err(Status::unavailable(format!(
                "attempt {} fails",
                cx.attempt()
            )));
        }
        Ok(FlakyReply {
            attempt: cx.attempt(),
        })
    }

    async fn now(&self, _request: (), _cx: &Context) -> Result<prost_types::Timestamp, Status> {
        Ok(SystemTime::now().into())
    }

    async fn page(&self, request: Page, _cx: &Context) -> Result<Page, Status> {
        Ok(request)
    }

    async fn exit(&self, request: ExitRequest, _cx: &Context) -> Result<(), Status> {
        if !self.may_exit {
            return Err(Status::failed_precondition(
                "this worker is not a process of its own",
            ));
        }
        std::process::exit(request.code)
    }

    async fn trace(&self, _request: (), cx: &Context) -> Result<TraceReply, Status> {
        let current = workerbus::TraceContext::current();
        Ok(TraceReply {
            traced: current.is_some(),
            trace_id_high: current.map_or(0, |trace| (trace.trace_id() >> 64) as u64),
            trace_id_low: current.map_or(0, |trace| trace.trace_id() as u64),
            span_id: current.map_or(0, |trace| trace.span_id()),
            has_parent: cx.trace().is_some(),
            parent_span_id: cx.trace().map_or(0, |trace| trace.span_id()),
        })
    }

    async fn headers(&self, request: HeadersRequest, cx: &Context) -> Result<HeadersReply, Status> {
        let mut reply = workerbus::Metadata::new();
        for header in request.reply {
            reply
                .insert(&header.key, &header.value)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
        }
        cx.set_response_metadata(reply);
        if request.fail_code != 0 {
            return Err(Status::new(
                Code::from_u32(request.fail_code),
                "asked to fail",
            ));
        }
        if cx.attempt() < request.succeed_on {
            return Err(Status::unavailable(format!(
                "attempt {} fails",
                cx.attempt()
            )));
        }
        let seen = cx
            .metadata()
            .iter()
            .map(|(key, value)| Header {
                key: key.to_owned(),
                value: value.to_vec().into(),
            })
            .collect();
        Ok(HeadersReply {
            seen,
            attempt: cx.attempt(),
        })
    }

    async fn count(
        &self,
        request: CountRequest,
        responses: StreamSender<CountReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        // Streams answer with the metadata they were sent.
        cx.set_response_metadata(cx.metadata().clone());
        let mut guard = SleepGuard::start(&self.state, request.tag);
        let padding = bytes::Bytes::from(vec![0x5a; request.padding as usize]);
        for value in (request.from..).take(request.count as usize) {
            if request.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
            }
            let padding = padding.clone();
            responses.send(CountReply { value, padding }).await?;
            self.state.advance(&guard.tag);
        }
        guard.finished = true;
        match request.fail_code {
            0 => Ok(()),
            code => Err(Status::new(
                Code::from_u32(code),
                format!("failed after {} messages", request.count),
            )),
        }
    }

    async fn progress(
        &self,
        request: ProgressRequest,
        _cx: &Context,
    ) -> Result<ProgressReply, Status> {
        let messages = self.state.progressed(&request.tag, request.at_least).await;
        Ok(ProgressReply { messages })
    }

    async fn sum(
        &self,
        mut requests: Incoming<SumRequest>,
        cx: &Context,
    ) -> Result<SumReply, Status> {
        cx.set_response_metadata(cx.metadata().clone());
        let mut reply = SumReply::default();
        let mut guard = None;
        while let Some(request) = requests.message().await? {
            let guard = guard.get_or_insert_with(|| SleepGuard::start(&self.state, request.tag));
            reply.sum += request.value;
            reply.messages += 1;
            self.state.advance(&guard.tag);
            if request.stop {
                break;
            }
            if request.hold_after > 0 && reply.messages >= u64::from(request.hold_after) {
                // Read no more: the caller must wait for room, until it
                // gives up and cancels the call.
                std::future::pending::<()>().await;
            }
        }
        if let Some(guard) = &mut guard {
            guard.finished = true;
        }
        Ok(reply)
    }

    async fn chat(
        &self,
        mut requests: Incoming<EchoRequest>,
        responses: StreamSender<EchoReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        cx.set_response_metadata(cx.metadata().clone());
        while let Some(request) = requests.message().await? {
            responses
                .send(EchoReply {
                    text: request.text,
                    data: request.data,
                })
                .await?;
        }
        Ok(())
    }

    async fn note(&self, mut request: NoteRequest, cx: &Context) -> Result<(), Status> {
        let tag = request.tag.clone();
        // A note may carry its text in metadata instead.
        if let Some(text) = cx.metadata().get_str("note-text") {
            request.text = text.to_owned();
        }
        let result = if request.fail {
            Err(Status::invalid_argument(format!(
                "note {:?} asked to fail",
                request.text
            )))
        } else {
            EchoEmitter::from_context(cx).noted(request).await
        };
        // Counted once its event is queued: a host that has seen the count
        // has been sent the event.
        self.state.advance(&tag);
        result
    }

    async fn announce(
        &self,
        request: AnnounceRequest,
        cx: &Context,
    ) -> Result<AnnounceReply, Status> {
        let events = EchoEmitter::from_context(cx);
        let padding = bytes::Bytes::from(vec![0x5a; request.padding as usize]);
        for value in 0..request.count {
            events
                .tick(TickEvent {
                    tag: request.tag.clone(),
                    value,
                    padding: padding.clone(),
                })
                .await?;
            self.state.advance(&request.tag);
        }
        Ok(AnnounceReply {
            sent: request.count,
        })
    }

    async fn hand_off(&self, request: HandOffRequest, cx: &Context) -> Result<(), Status> {
        Err(self.state.hand_off(request, cx).await)
    }

    async fn hand_off_stream(
        &self,
        request: HandOffRequest,
        _responses: StreamSender<CountReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        Err(self.state.hand_off(request, cx).await)
    }

    async fn stats(&self, _request: (), _cx: &Context) -> Result<StatsReply, Status> {
        Ok(StatsReply {
            peak_concurrency: self.state.peak.load(Ordering::SeqCst),
            sleeps_cancelled: self.state.cancelled.load(Ordering::SeqCst),
            pid: std::process::id(),
        })
    }
}
