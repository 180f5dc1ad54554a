//! The `named_peer` target: what a worker's accept loop runs for each peer
//! of its named socket ([`serve_named_peer`]: the greeting's frame limit and
//! timeout, then the serve loop of the test suite's `Echo` service), fed by
//! a host that greets with the secret, with another, partly, slowly or not
//! at all, and then writes a `server_dispatch` input.
//!
//! An input is a [`PeerConfig`] (`server_dispatch`'s serve options, the
//! greeting's frame limit, what the host sends first), then, as in
//! `server_dispatch`, either raw bytes or a sequence of
//! [`Op`](crate::server::Op)s. The host writes its first bytes, then the
//! input, waits 60 s (paused) and closes its end, reading all the while.
//!
//! Checked, besides what `server_dispatch` checks (nothing panics, the serve
//! ends, the worker writes valid frames about requests the host made):
//!
//! - a host that greets first with the secret, within the greeting timeout,
//!   is welcomed: the worker's first frame answers its greeting;
//! - a host that does not is never answered but with a `STATUS` (the
//!   refusal of a greeting): nothing it sends reaches the service;
//! - a connection that was not welcomed ends no later than the greeting
//!   timeout after it began, whatever the host writes or however long it
//!   waits;
//! - a frame announced over the greeting's limit before a welcome ends the
//!   connection with `GreetingTooLong`, naming the limit configured; after a
//!   welcome, the full maximum applies.

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use workerbus::fuzzing::{PeerEnd, hello_for, serve_named_peer};
use workerbus::{
    DEFAULT_GREETING_TIMEOUT, DEFAULT_MAX_GREETING_FRAME_LENGTH, Frame, FrameCodec, FrameError,
    MIN_FRAME_LENGTH, MethodName, Secret,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::EchoServer;

use crate::server::{
    Config, Guarded, Op, Step, check_output, describe_rest, host, install_panic_hook, request_ids,
    steps, written,
};

/// The worker's secret, and the one a wrong greeting presents.
const SECRET: [u8; 32] = [0x5e; 32];
const WRONG: [u8; 32] = [0x11; 32];

/// The id of the host's greeting.
const GREETING_ID: u64 = 1;

/// What the host sends before its input, and the limit it is read with.
#[derive(Arbitrary, Debug)]
pub struct PeerConfig {
    /// `server_dispatch`'s serve options.
    pub serve: Config,
    /// The greeting's frame limit: the default (even) or the smallest (odd).
    pub greeting_limit: u8,
    /// What the host sends first: 0, nothing; 1, a greeting with the
    /// secret; 2, one with another secret; 3, a greeting with the secret cut
    /// after `cut` bytes; 4, a greeting with the secret in two parts,
    /// `cut` × 100 ms apart; 5, a length prefix announcing `cut` × 64 bytes.
    pub first: u8,
    pub cut: u8,
}

impl PeerConfig {
    /// The greeting's limit as the worker applies it: never above the
    /// maximum frame length.
    fn greeting_limit(&self) -> usize {
        let limit = if self.greeting_limit.is_multiple_of(2) {
            DEFAULT_MAX_GREETING_FRAME_LENGTH
        } else {
            MIN_FRAME_LENGTH
        };
        limit.min(self.serve.max_frame_length())
    }

    /// What the host writes first, and whether that is a greeting with the
    /// secret that arrives in time.
    fn first_steps(&self) -> (Vec<Step>, bool) {
        let greeting = |secret: &[u8]| {
            let method = MethodName::from_static("$workerbus.hello");
            let payload = Bytes::from(hello_for(workerbus::PROTOCOL_VERSION, secret));
            let frame = Frame::request(GREETING_ID, method, None, 1, payload);
            let mut out = BytesMut::new();
            FrameCodec::new()
                .encode(frame, &mut out)
                .expect("a greeting encodes");
            out.to_vec()
        };
        let cut = usize::from(self.cut);
        match self.first % 6 {
            1 => (vec![Step::Write(greeting(&SECRET))], true),
            2 => (vec![Step::Write(greeting(&WRONG))], false),
            3 => {
                let mut bytes = greeting(&SECRET);
                bytes.truncate(cut.min(bytes.len() - 1));
                (vec![Step::Write(bytes)], false)
            }
            4 => {
                let mut first = greeting(&SECRET);
                let second = first.split_off(cut.min(first.len()));
                let pause = Duration::from_millis(100) * u32::from(self.cut);
                // On the paused clock, a pause ending at the deadline may
                // come before or after it.
                let in_time = pause < DEFAULT_GREETING_TIMEOUT - Duration::from_millis(100);
                let steps = vec![Step::Write(first), Step::Wait(pause), Step::Write(second)];
                (steps, in_time)
            }
            5 => {
                let len = u32::from(self.cut) * 64;
                (vec![Step::Write(len.to_be_bytes().to_vec())], false)
            }
            _ => (Vec::new(), false),
        }
    }
}

/// Runs the `named_peer` checks on one input.
pub fn check(data: &[u8]) {
    install_panic_hook();
    let mut u = Unstructured::new(data);
    let Ok(config) = PeerConfig::arbitrary(&mut u) else {
        return;
    };
    let limit = config.serve.max_frame_length();
    let raw = u.arbitrary::<bool>().unwrap_or(true);
    let input = if raw {
        vec![Step::Write(u.take_rest().to_vec())]
    } else {
        let Ok(ops) = Vec::<Op>::arbitrary_take_rest(u) else {
            return;
        };
        steps(&ops, limit)
    };
    let (mut all, greets) = config.first_steps();
    all.extend(input);
    let sent = request_ids(&written(&all), limit);
    let steps_written = written(&all);
    let greeting_limit = config.greeting_limit();
    let options = config
        .serve
        .options()
        .max_greeting_frame_length(greeting_limit);
    let secret = Secret::from_hex(&"5e".repeat(32)).expect("64 hex digits");
    let run = host(all, |worker| {
        let service = EchoServer::new(Guarded(EchoWorker::new()));
        serve_named_peer(worker, service, options, secret)
    });

    let frames = decode(&run.output);
    let welcomed = matches!(
        frames.first(),
        Some(Frame::Response {
            id: GREETING_ID,
            ..
        })
    );
    if greets {
        // Unless what followed the greeting broke the connection before
        // the welcome was written.
        let broken = matches!(
            &run.served,
            PeerEnd::Error(error) if !matches!(error, FrameError::GreetingTooLong { .. } | FrameError::Refused { .. })
        );
        assert!(
            welcomed || broken,
            "a host greeting with the secret in time was not welcomed: {:?} ({:?})",
            frames.first(),
            run.served
        );
    }
    // A host that never sent the secret's bytes cannot have presented it.
    if !steps_written
        .windows(SECRET.len())
        .any(|window| window == SECRET)
    {
        if let Some(frame) = frames
            .iter()
            .find(|frame| !matches!(frame, Frame::Status { .. }))
        {
            panic!("a host without the secret was answered {frame:?}");
        }
        assert!(
            run.ended <= DEFAULT_GREETING_TIMEOUT,
            "a connection without the secret ended after {:?} ({:?})",
            run.ended,
            run.served
        );
    }
    if let PeerEnd::Error(FrameError::GreetingTooLong { len, max }) = &run.served {
        if let Some(frame) = frames
            .iter()
            .find(|frame| !matches!(frame, Frame::Status { .. }))
        {
            panic!("a frame of {len} bytes was refused as a greeting after {frame:?}");
        }
        assert_eq!(*max, greeting_limit, "the greeting's limit");
    }
    if config.first % 6 == 5 {
        let len = usize::from(config.cut) * 64;
        if len > greeting_limit {
            assert!(
                matches!(
                    &run.served,
                    PeerEnd::Error(FrameError::GreetingTooLong { len: l, max })
                        if *l == len && *max == greeting_limit
                ),
                "a first frame of {len} bytes, over the greeting's limit of {greeting_limit}, \
                 ended {:?}",
                run.served
            );
        }
    }
    let clean = matches!(run.served, PeerEnd::Closed | PeerEnd::Shutdown);
    check_output(&run.output, &sent, clean);
}

/// The frames the worker wrote, up to the first that does not decode
/// (`check_output` reports that).
fn decode(output: &[u8]) -> Vec<Frame> {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(output);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        frames.push(frame);
    }
    frames
}

/// The bytes that make `arbitrary` read `config`, then raw input: what a
/// seed of raw frames starts with.
pub fn raw_prefix(config: &PeerConfig) -> Vec<u8> {
    let serve = config.serve.raw_prefix();
    // `raw_prefix` ends with the byte read as "raw"; the peer's own fields
    // come before it.
    [
        &serve[..3],
        &[config.greeting_limit, config.first, config.cut, serve[3]],
    ]
    .concat()
}

/// What an input means, for reading a crash: its configuration, then its
/// raw frames or structured steps (after what the host sends first).
pub fn describe(data: &[u8]) -> String {
    let mut u = Unstructured::new(data);
    let Ok(config) = PeerConfig::arbitrary(&mut u) else {
        return "too short for a configuration".into();
    };
    let (first, greets) = config.first_steps();
    let mut out = format!("{config:?}\nfirst: {first:?} (greets in time: {greets})\n");
    out += &describe_rest(u, config.serve.max_frame_length());
    out
}
