//! The `server_dispatch` target: the serve loop ([`serve_transport`]) of the
//! test suite's `Echo` service, fed arbitrary input by a host that then
//! closes the connection.
//!
//! An input is a [`Config`] (how many calls run and wait, the maximum frame
//! length) followed either by raw bytes, written as they are, or by a
//! sequence of [`Op`]s: frames built to be valid (requests under the
//! service's real message names and the control names, with well-formed
//! request messages; cancels, stream items, ends and credits for the ids in
//! use; frames a host must not send), encoded and written in order, so that
//! mutations reach dispatch rather than stop at the decoder.
//!
//! The serve loop runs on a current-thread runtime whose clock is paused:
//! handlers' sleeps and deadlines pass at once when nothing else can run.
//! The host writes the input (a structured input may pause between frames,
//! [`Op::Wait`]), waits [`SETTLE`] so that the calls it made can run and
//! answer, then closes its end, and reads all the while.
//!
//! Checked, for every input:
//!
//! - nothing in the runtime panics (handler panics are the handler's: the
//!   runtime turns them into a status, see [`install_panic_hook`]);
//! - the serve ends once the host has closed its end, within an hour of the
//!   paused clock (`the serve did not end`); a serve loop that spins
//!   without letting the clock move is caught by libFuzzer's `-timeout`;
//! - what the worker wrote is a whole sequence of valid frames, of the kinds
//!   a worker sends, about requests the host made (or id 0 for events).

use std::collections::HashSet;
use std::panic::PanicHookInfo;
use std::sync::Once;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, Framed};
use workerbus::{
    Context, DEFAULT_MAX_FRAME_LENGTH, Frame, FrameCodec, Incoming, MIN_FRAME_LENGTH, Metadata,
    MethodKind, MethodName, ServeOptions, Status, StreamSender, TraceContext, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::common::Page;
use workerbus_tests::pb::echo::{
    AnnounceReply, AnnounceRequest, CountReply, CountRequest, EchoHandler, EchoReply, EchoRequest,
    EchoServer, ExitRequest, FailRequest, FlakyReply, FlakyRequest, HandOffRequest, HeadersReply,
    HeadersRequest, NoteRequest, ObserveRequest, PanicRequest, ProgressReply, ProgressRequest,
    SleepRequest, StatsReply, SumReply, SumRequest, TraceReply, echo_service,
};

/// How long, on the paused clock, the serve may take after the host closed
/// its end.
pub(crate) const BOUND: Duration = Duration::from_secs(3600);

/// How long, on the paused clock, the host waits after its input before it
/// closes its end: long enough for handlers' short delays and deadlines.
pub(crate) const SETTLE: Duration = Duration::from_secs(60);

/// The most a structured input's pauses add up to, on the paused clock.
const MAX_WAITS: Duration = Duration::from_secs(600);

/// What the host writes: bytes, and pauses between them.
#[derive(Debug)]
pub(crate) enum Step {
    Write(Vec<u8>),
    Wait(Duration),
}

/// Runs the `server_dispatch` checks on one input.
pub fn check(data: &[u8]) {
    install_panic_hook();
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else {
        return;
    };
    let raw = u.arbitrary::<bool>().unwrap_or(true);
    let steps = if raw {
        vec![Step::Write(u.take_rest().to_vec())]
    } else {
        let Ok(ops) = Vec::<Op>::arbitrary_take_rest(u) else {
            return;
        };
        steps(&ops, config.max_frame_length())
    };
    serve(&config, steps);
}

/// What an input means, for reading a crash: its configuration and either
/// the frames of a raw input (up to the first the decoder refuses) or the
/// structured steps.
pub fn describe(data: &[u8]) -> String {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else {
        return "too short for a configuration".into();
    };
    format!("{config:?}\n") + &describe_rest(u, config.max_frame_length())
}

/// What the rest of an input means, after its configuration: its raw frames
/// (up to the first the decoder refuses) or its structured steps.
pub(crate) fn describe_rest(mut u: Unstructured<'_>, limit: usize) -> String {
    let mut out = String::new();
    if u.arbitrary::<bool>().unwrap_or(true) {
        let mut codec = FrameCodec::new().max_frame_length(limit);
        let mut buf = BytesMut::from(u.take_rest());
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out += &format!("raw frame: {frame:?}\n"),
                Ok(None) => break,
                Err(error) => {
                    out += &format!("raw: refused: {error}\n");
                    break;
                }
            }
        }
        if !buf.is_empty() {
            out += &format!("raw: {} bytes left\n", buf.len());
        }
    } else {
        match Vec::<Op>::arbitrary_take_rest(u) {
            Ok(ops) => {
                for op in ops {
                    out += &format!("{op:?}\n");
                }
            }
            Err(error) => out += &format!("not a sequence of steps: {error}\n"),
        }
    }
    out
}

/// The serve options an input chooses.
#[derive(Arbitrary, Debug)]
pub struct Config {
    /// Calls running at once: 1 to 4, or the default (0).
    concurrent: u8,
    /// Calls waiting: 0 to 3, or the default (4 and above).
    queued: u8,
    /// The maximum frame length: the default, the smallest, or 1 KiB.
    limit: u8,
}

impl Config {
    /// The configuration the seeds use: every default.
    pub const DEFAULT: Config = Config {
        concurrent: 0,
        queued: 4,
        limit: 0,
    };

    pub(crate) fn max_frame_length(&self) -> usize {
        match self.limit % 3 {
            0 => DEFAULT_MAX_FRAME_LENGTH,
            1 => MIN_FRAME_LENGTH,
            _ => 1024,
        }
    }

    pub(crate) fn options(&self) -> ServeOptions {
        let mut options = ServeOptions::new().max_frame_length(self.max_frame_length());
        match self.concurrent % 5 {
            0 => {}
            running => options = options.max_concurrent_calls(usize::from(running)),
        }
        if self.queued % 8 < 4 {
            options = options.max_queued_calls(usize::from(self.queued % 8));
        }
        options
    }

    /// The bytes that make `arbitrary` read this configuration, then raw
    /// input: what a seed of raw frames starts with.
    pub fn raw_prefix(&self) -> [u8; 4] {
        // `bool` is read as a byte's lowest bit.
        [self.concurrent, self.queued, self.limit, 1]
    }
}

/// Serves the `Echo` service on a byte transport while a host writes the
/// steps into it, closes its end and reads everything the worker writes.
fn serve(config: &Config, steps: Vec<Step>) {
    let limit = config.max_frame_length();
    let sent = request_ids(&written(&steps), limit);
    let run = host(steps, |worker| {
        let transport = Framed::new(worker, FrameCodec::new().max_frame_length(limit));
        let service = EchoServer::new(Guarded(EchoWorker::new()));
        serve_transport(transport, service, config.options())
    });
    check_output(&run.output, &sent, run.served.is_ok());
}

/// Everything the steps write, in order.
pub(crate) fn written(steps: &[Step]) -> Vec<u8> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Write(bytes) => Some(&bytes[..]),
            Step::Wait(_) => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

/// How a connection served while a host wrote into it went.
pub(crate) struct Run<O> {
    /// Everything the worker wrote.
    pub(crate) output: Vec<u8>,
    /// What the serve returned.
    pub(crate) served: O,
    /// When it returned, from the start, on the paused clock.
    pub(crate) ended: Duration,
}

/// Runs the serve that `serve` makes of the worker's end of a connection,
/// on a current-thread runtime whose clock is paused, while a host writes
/// the steps into the other end, waits [`SETTLE`], closes its end, and reads
/// all the while. Panics if the serve has not ended [`BOUND`] after the
/// host closed.
pub(crate) fn host<F, S>(steps: Vec<Step>, serve: F) -> Run<S::Output>
where
    F: FnOnce(tokio::io::DuplexStream) -> S,
    S: Future,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let waits: Duration = steps
        .iter()
        .map(|step| match step {
            Step::Write(_) => Duration::ZERO,
            Step::Wait(pause) => *pause,
        })
        .sum();
    runtime.block_on(async {
        let started = tokio::time::Instant::now();
        let (host, worker) = tokio::io::duplex(64 * 1024);
        let serving = serve(worker);
        let (mut from_worker, mut to_worker) = tokio::io::split(host);
        let write = async move {
            for step in steps {
                match step {
                    // The worker may end the connection first (a frame it
                    // refuses, a shutdown): then the rest has nowhere to go.
                    Step::Write(bytes) => {
                        let _ = to_worker.write_all(&bytes).await;
                    }
                    Step::Wait(pause) => tokio::time::sleep(pause).await,
                }
            }
            tokio::time::sleep(SETTLE).await;
            let _ = to_worker.shutdown().await;
        };
        let read = async move {
            let mut output = Vec::new();
            let _ = from_worker.read_to_end(&mut output).await;
            output
        };
        let serve = async {
            let served = serving.await;
            (served, started.elapsed())
        };
        let all = async {
            let ((served, ended), (), output) = tokio::join!(serve, write, read);
            Run {
                output,
                served,
                ended,
            }
        };
        match tokio::time::timeout(waits + SETTLE + BOUND, all).await {
            Ok(run) => run,
            Err(_) => panic!("the serve did not end within {BOUND:?} after the host closed"),
        }
    })
}

/// The ids of the requests in `input`, as the worker decodes it (up to the
/// first frame it refuses).
pub(crate) fn request_ids(input: &[u8], limit: usize) -> HashSet<u64> {
    let mut codec = FrameCodec::new().max_frame_length(limit);
    let mut buf = BytesMut::from(input);
    let mut ids = HashSet::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Frame::Request { id, .. } = frame {
            ids.insert(id);
        }
    }
    ids
}

/// What the worker wrote: valid frames, of a worker's kinds, about the host's
/// requests.
pub(crate) fn check_output(output: &[u8], sent: &HashSet<u64>, clean: bool) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(output);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => match &frame {
                Frame::Response { id, .. }
                | Frame::Status { id, .. }
                | Frame::Item { id, .. }
                | Frame::Credit { id, .. }
                | Frame::Metadata { id, .. } => assert!(
                    sent.contains(id),
                    "the worker wrote about request {id}, which the host never made: {frame:?}"
                ),
                Frame::Event { .. } => {}
                other => panic!("the worker wrote a frame only a host sends: {other:?}"),
            },
            Ok(None) => break,
            Err(error) => panic!("the worker wrote an invalid frame: {error}"),
        }
    }
    // A serve that ended with an error may have stopped inside a frame.
    if clean {
        assert!(
            buf.is_empty(),
            "the worker's output ends inside a frame ({} bytes left)",
            buf.len()
        );
    }
}

/// Lets the panics of `EchoWorker`'s own code unwind quietly, as the runtime
/// catches them and answers with a status (`echo.panic` panics on purpose,
/// and `echo.sum` overflows on sums that do); any other panic goes to the
/// hook libFuzzer installed, which reports a crash.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            let in_handler = info
                .location()
                .is_some_and(|location| location.file().ends_with("tests/src/lib.rs"));
            if !in_handler {
                fuzzer(info);
            }
        }));
    });
}

/// `EchoWorker`, without the requests whose effects are the test handler's
/// own and not the runtime's: a sleep or a hand-off that blocks a thread
/// (for real time, outside the paused clock), a status message repeated into
/// gigabytes, and a count past `u64::MAX`; and without requests for millions
/// of messages (below). Everything else is delegated.
///
/// `echo.count` and `echo.announce` are refused above [`MAX_MESSAGES`]
/// messages. The runtime bounds what it queues for a host however much
/// credit it grants (see `fuzz/README.md`, the finding this target made);
/// the bound here keeps each input fast and the harness's copy of the
/// worker's output small.
pub(crate) struct Guarded(pub(crate) EchoWorker);

/// The largest status message `echo.fail` may build.
const MAX_FAIL_MESSAGE: usize = 1 << 20;

/// The most messages `echo.count` or events `echo.announce` may send.
const MAX_MESSAGES: u32 = 4096;

impl EchoHandler for Guarded {
    async fn echo(&self, request: EchoRequest, cx: &Context) -> Result<EchoReply, Status> {
        self.0.echo(request, cx).await
    }

    async fn fail(&self, request: FailRequest, cx: &Context) -> Result<(), Status> {
        let len = request
            .message
            .len()
            .saturating_mul(request.repeat.max(1) as usize);
        if len > MAX_FAIL_MESSAGE {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: message too long",
            ));
        }
        self.0.fail(request, cx).await
    }

    async fn sleep(&self, request: SleepRequest, cx: &Context) -> Result<(), Status> {
        if request.blocking {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: blocking sleep",
            ));
        }
        self.0.sleep(request, cx).await
    }

    async fn observe(&self, request: ObserveRequest, cx: &Context) -> Result<(), Status> {
        self.0.observe(request, cx).await
    }

    async fn panic(&self, request: PanicRequest, cx: &Context) -> Result<(), Status> {
        self.0.panic(request, cx).await
    }

    async fn flaky(&self, request: FlakyRequest, cx: &Context) -> Result<FlakyReply, Status> {
        self.0.flaky(request, cx).await
    }

    async fn now(&self, request: (), cx: &Context) -> Result<prost_types::Timestamp, Status> {
        self.0.now(request, cx).await
    }

    async fn page(&self, request: Page, cx: &Context) -> Result<Page, Status> {
        self.0.page(request, cx).await
    }

    async fn stats(&self, request: (), cx: &Context) -> Result<StatsReply, Status> {
        self.0.stats(request, cx).await
    }

    async fn exit(&self, request: ExitRequest, cx: &Context) -> Result<(), Status> {
        // `EchoWorker::new()` is not a process of its own: it refuses.
        self.0.exit(request, cx).await
    }

    async fn trace(&self, request: (), cx: &Context) -> Result<TraceReply, Status> {
        self.0.trace(request, cx).await
    }

    async fn headers(&self, request: HeadersRequest, cx: &Context) -> Result<HeadersReply, Status> {
        self.0.headers(request, cx).await
    }

    async fn count(
        &self,
        request: CountRequest,
        responses: StreamSender<CountReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        if request.from.checked_add(u64::from(request.count)).is_none() {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: count overflows",
            ));
        }
        if request.count > MAX_MESSAGES {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: too many messages",
            ));
        }
        self.0.count(request, responses, cx).await
    }

    async fn progress(
        &self,
        request: ProgressRequest,
        cx: &Context,
    ) -> Result<ProgressReply, Status> {
        self.0.progress(request, cx).await
    }

    async fn sum(&self, requests: Incoming<SumRequest>, cx: &Context) -> Result<SumReply, Status> {
        self.0.sum(requests, cx).await
    }

    async fn chat(
        &self,
        requests: Incoming<EchoRequest>,
        responses: StreamSender<EchoReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        self.0.chat(requests, responses, cx).await
    }

    async fn note(&self, request: NoteRequest, cx: &Context) -> Result<(), Status> {
        self.0.note(request, cx).await
    }

    async fn announce(
        &self,
        request: AnnounceRequest,
        cx: &Context,
    ) -> Result<AnnounceReply, Status> {
        if request.count > MAX_MESSAGES {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: too many events",
            ));
        }
        self.0.announce(request, cx).await
    }

    async fn hand_off(&self, request: HandOffRequest, cx: &Context) -> Result<(), Status> {
        if request.blocking {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: blocking hand-off",
            ));
        }
        self.0.hand_off(request, cx).await
    }

    async fn hand_off_stream(
        &self,
        request: HandOffRequest,
        responses: StreamSender<CountReply>,
        cx: &Context,
    ) -> Result<(), Status> {
        if request.blocking {
            return Err(Status::invalid_argument(
                "refused by the fuzz target: blocking hand-off",
            ));
        }
        self.0.hand_off_stream(request, responses, cx).await
    }
}

/// One step of a structured input.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// A `REQUEST`.
    Request {
        id: Id,
        method: Method,
        timeout_ms: Option<u16>,
        attempt: u8,
        trace: Option<(u128, u64)>,
        /// Metadata entries; those that break the rules are left out (the
        /// raw inputs send those).
        metadata: Vec<(String, Vec<u8>)>,
        request_stream: bool,
        response_stream: bool,
        one_way: bool,
        payload: Payload,
    },
    /// Response metadata, which only a worker sends.
    Metadata { id: Id },
    /// A `CANCEL`.
    Cancel { id: Id },
    /// An `ITEM` of a request stream.
    Item { id: Id, payload: Payload },
    /// The `END` of a request stream.
    End { id: Id },
    /// `CREDIT` for a response stream (id 0: for events).
    Credit { id: Id, count: u32, bytes: u32 },
    /// `SHUTDOWN`.
    Shutdown,
    /// A frame only a worker sends: the worker must refuse it.
    Response { id: Id, payload: Vec<u8> },
    /// A `STATUS`, which only a worker sends.
    Status { id: Id, code: u32, message: String },
    /// An `EVENT`, which only a worker sends.
    Event { method: Method, payload: Vec<u8> },
    /// Bytes written as they are, between frames.
    Raw(Vec<u8>),
    /// The host pauses, on the paused clock, before it writes on.
    Wait { ms: u16 },
}

/// A request id: mostly a few small ones, so that frames meet the calls
/// they name.
#[derive(Arbitrary, Debug)]
pub enum Id {
    Small(u8),
    Any(u64),
}

impl Id {
    fn get(&self) -> u64 {
        match self {
            Id::Small(id) => u64::from(id % 8),
            Id::Any(id) => *id,
        }
    }
}

/// A message name: one of the service's, a control exchange's, or any.
#[derive(Arbitrary, Debug)]
pub enum Method {
    Echo(u8),
    Control(u8),
    Any(String),
}

impl Method {
    fn name(&self) -> MethodName {
        match self {
            Method::Echo(index) => {
                let methods = echo_service::SCHEMA.methods();
                let method = &methods[usize::from(*index) % methods.len()];
                MethodName::from(method.name().to_owned())
            }
            Method::Control(index) => {
                const NAMES: [&str; 4] = [
                    "$workerbus.health",
                    "$workerbus.hello",
                    "$workerbus.detach",
                    "$workerbus.unknown",
                ];
                MethodName::from_static(NAMES[usize::from(*index) % NAMES.len()])
            }
            Method::Any(name) => MethodName::from(name.clone()),
        }
    }
}

/// A request or stream message: one of the service's, well-formed, or any
/// bytes.
#[derive(Arbitrary, Debug)]
pub enum Payload {
    Raw(Vec<u8>),
    Echo {
        text: String,
        data: Vec<u8>,
        delay_ms: u16,
    },
    Fail {
        code: u8,
        message: String,
        repeat: u8,
    },
    Sleep {
        tag: u8,
        ms: u32,
        blocking: bool,
    },
    Observe {
        tag: u8,
        state: u8,
    },
    Panic {
        message: String,
    },
    Flaky {
        succeed_on: u8,
    },
    Count {
        tag: u8,
        from: u64,
        count: u8,
        delay_ms: u16,
        fail_code: u8,
    },
    Progress {
        tag: u8,
        at_least: u8,
    },
    Sum {
        tag: u8,
        value: i64,
        stop: bool,
        hold_after: u8,
    },
    Note {
        tag: u8,
        text: String,
        fail: bool,
    },
    Announce {
        tag: u8,
        count: u8,
    },
    Page {
        limit: u32,
        cursor: String,
    },
}

impl Payload {
    fn encode(&self) -> Bytes {
        let tag = |tag: &u8| format!("t{}", tag % 4);
        let bytes = match self {
            Payload::Raw(bytes) => bytes.clone(),
            Payload::Echo {
                text,
                data,
                delay_ms,
            } => EchoRequest {
                text: text.clone(),
                data: Bytes::copy_from_slice(data),
                delay_ms: u32::from(*delay_ms),
            }
            .encode_to_vec(),
            Payload::Fail {
                code,
                message,
                repeat,
            } => FailRequest {
                code: u32::from(*code),
                message: message.clone(),
                details: Bytes::new(),
                repeat: u32::from(*repeat),
            }
            .encode_to_vec(),
            Payload::Sleep {
                tag: t,
                ms,
                blocking,
            } => SleepRequest {
                tag: tag(t),
                ms: u64::from(*ms),
                blocking: *blocking,
            }
            .encode_to_vec(),
            Payload::Observe { tag: t, state } => ObserveRequest {
                tag: tag(t),
                state: i32::from(state % 4),
            }
            .encode_to_vec(),
            Payload::Panic { message } => PanicRequest {
                message: message.clone(),
            }
            .encode_to_vec(),
            Payload::Flaky { succeed_on } => FlakyRequest {
                succeed_on: u32::from(*succeed_on),
            }
            .encode_to_vec(),
            Payload::Count {
                tag: t,
                from,
                count,
                delay_ms,
                fail_code,
            } => CountRequest {
                tag: tag(t),
                from: *from,
                count: u32::from(*count),
                delay_ms: u32::from(*delay_ms),
                fail_code: u32::from(*fail_code),
                padding: 0,
            }
            .encode_to_vec(),
            Payload::Progress { tag: t, at_least } => ProgressRequest {
                tag: tag(t),
                at_least: u64::from(*at_least),
            }
            .encode_to_vec(),
            Payload::Sum {
                tag: t,
                value,
                stop,
                hold_after,
            } => SumRequest {
                tag: tag(t),
                value: *value,
                stop: *stop,
                hold_after: u32::from(*hold_after),
                padding: Bytes::new(),
            }
            .encode_to_vec(),
            Payload::Note { tag: t, text, fail } => NoteRequest {
                tag: tag(t),
                text: text.clone(),
                fail: *fail,
            }
            .encode_to_vec(),
            Payload::Announce { tag: t, count } => AnnounceRequest {
                tag: tag(t),
                count: u32::from(*count),
                padding: 0,
            }
            .encode_to_vec(),
            Payload::Page { limit, cursor } => Page {
                limit: *limit,
                cursor: cursor.clone(),
                order: 0,
            }
            .encode_to_vec(),
        };
        Bytes::from(bytes)
    }
}

/// What a host writes for `ops`: frames encoded, in order, with the pauses
/// between them (up to [`MAX_WAITS`] in all). A frame the encoder refuses
/// (an empty or too long name, too long a frame) is left out, as a host
/// could not send it either.
pub(crate) fn steps(ops: &[Op], limit: usize) -> Vec<Step> {
    let mut codec = FrameCodec::new().max_frame_length(limit);
    let mut steps = Vec::new();
    let mut out = BytesMut::new();
    let mut waited = Duration::ZERO;
    for op in ops {
        let frame = match op {
            Op::Request {
                id,
                method,
                timeout_ms,
                attempt,
                trace,
                metadata,
                request_stream,
                response_stream,
                one_way,
                payload,
            } => {
                let metadata = metadata
                    .iter()
                    .fold(Metadata::new(), |mut all, (key, value)| {
                        // Entries that break the rules are refused here.
                        let _ = all.insert(key, value);
                        all
                    });
                // A one-way message cannot stream: the decoder refuses it,
                // which the raw inputs cover.
                let kind = match (*one_way, *request_stream, *response_stream) {
                    (true, _, _) => MethodKind::OneWay,
                    (false, false, false) => MethodKind::Unary,
                    (false, false, true) => MethodKind::ServerStreaming,
                    (false, true, false) => MethodKind::ClientStreaming,
                    (false, true, true) => MethodKind::BidiStreaming,
                };
                Frame::request(
                    id.get(),
                    method.name(),
                    timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
                    u32::from(*attempt),
                    payload.encode(),
                )
                .with_trace(trace.and_then(|(trace, span)| TraceContext::from_parts(trace, span)))
                .with_kind(kind)
                .with_metadata(metadata)
            }
            Op::Cancel { id } => Frame::Cancel { id: id.get() },
            Op::Item { id, payload } => Frame::Item {
                id: id.get(),
                payload: payload.encode(),
            },
            Op::End { id } => Frame::End { id: id.get() },
            Op::Credit { id, count, bytes } => Frame::Credit {
                id: id.get(),
                count: *count,
                bytes: *bytes,
            },
            Op::Shutdown => Frame::Shutdown,
            Op::Response { id, payload } => Frame::Response {
                id: id.get(),
                payload: Bytes::copy_from_slice(payload).into(),
            },
            Op::Metadata { id } => Frame::Metadata {
                id: id.get(),
                metadata: Metadata::new().with("from-host", "x").unwrap_or_default(),
            },
            Op::Status { id, code, message } => Frame::Status {
                id: id.get(),
                status: Status::new(workerbus::Code::from_u32(*code), message.clone()),
            },
            Op::Event { method, payload } => Frame::Event {
                method: method.name(),
                payload: Bytes::copy_from_slice(payload),
            },
            Op::Raw(bytes) => {
                out.extend_from_slice(bytes);
                continue;
            }
            Op::Wait { ms } => {
                let pause = Duration::from_millis(u64::from(*ms)).min(MAX_WAITS - waited);
                waited += pause;
                steps.push(Step::Write(out.split().to_vec()));
                steps.push(Step::Wait(pause));
                continue;
            }
        };
        // Refused frames are skipped: `encode` writes nothing for them.
        let _ = codec.encode(frame, &mut out);
    }
    steps.push(Step::Write(out.to_vec()));
    steps
}
