//! Writes the hand-made seeds of each target into `fuzz/corpus/<target>/`,
//! named `seed-*`: valid frames of every kind, a truncated frame, a frame
//! announcing 4 GiB, both halves of a valid handshake and ways each can be
//! wrong, and peers of a named socket that greet in every way. Run it from `fuzz/` with the fuzzing cfg, which the handshake
//! seeds need (see `fuzz/README.md`):
//!
//! ```text
//! RUSTFLAGS="--cfg fuzzing" cargo run --example seeds
//! ```

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::Encoder;
use workerbus::fuzzing::{hello_for, welcome_for};
use workerbus::{
    Code, Frame, FrameCodec, MethodKind, MethodName, PROTOCOL_VERSION, Status, TraceContext,
};
use workerbus_fuzz::named_peer::{PeerConfig, raw_prefix};
use workerbus_fuzz::server::Config;
use workerbus_tests::pb::echo::{
    CountRequest, EchoRequest, PanicRequest, SumRequest, echo_service, missing_service,
};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in [
        ("frame_decoder", frame_decoder()),
        ("handshake", handshake()),
        ("server_dispatch", server_dispatch()),
        ("named_peer", named_peer()),
        ("shared_memory", shared_memory()),
    ] {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

fn encode(frames: impl IntoIterator<Item = Frame>) -> Vec<u8> {
    let mut codec = FrameCodec::new();
    let mut out = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut out).expect("a seed frame encodes");
    }
    out.to_vec()
}

fn request(id: u64, method: &'static str, payload: Vec<u8>) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        None,
        1,
        Bytes::from(payload),
    )
}

/// One of each kind, with every request flag somewhere.
fn every_kind() -> Vec<Frame> {
    vec![
        Frame::request(
            1,
            MethodName::from_static("worker.stats"),
            Some(Duration::from_millis(250)),
            1,
            Bytes::from_static(&[0x08, 0x01]),
        ),
        request(2, "w.s", vec![])
            .with_kind(MethodKind::BidiStreaming)
            .with_trace(TraceContext::from_parts(7 << 64 | 9, 3)),
        request(3, "w.n", vec![]).with_kind(MethodKind::OneWay),
        Frame::Response {
            id: 1,
            payload: Bytes::from_static(&[0x08, 0x01]).into(),
        },
        Frame::Status {
            id: 1,
            status: Status::new(Code::NotFound, "gone").with_details(Bytes::from_static(b"d")),
        },
        Frame::Cancel { id: 1 },
        Frame::Shutdown,
        Frame::Item {
            id: 2,
            payload: Bytes::from_static(&[0x08, 0x2a]),
        },
        Frame::End { id: 2 },
        Frame::Credit {
            id: 2,
            count: 16,
            bytes: 1 << 20,
        },
        Frame::Credit {
            id: 0,
            count: 1,
            bytes: 0,
        },
        Frame::Event {
            method: MethodName::from_static("w.e"),
            payload: Bytes::from_static(&[0x08, 0x01]),
        },
    ]
}

/// `[limit, split, stream...]`: see `workerbus_fuzz::decoder`.
fn frame_decoder() -> Vec<(&'static str, Vec<u8>)> {
    let with = |limit: u8, split: u8, stream: &[u8]| [&[limit, split][..], stream].concat();
    let all = encode(every_kind());
    let request = encode([every_kind().remove(0)]);
    let mut unknown_code = encode([Frame::Status {
        id: 9,
        status: Status::new(Code::NotFound, "gone"),
    }]);
    unknown_code[4 + workerbus::HEADER_LEN + 3] = 99;
    vec![
        ("empty", with(0, 0, &[])),
        ("request", with(0, 0, &request)),
        ("every-kind", with(0, 7, &all)),
        ("every-kind-bytewise", with(0, 0, &all)),
        ("truncated", with(0, 3, &request[..request.len() - 5])),
        (
            "announces-4gib",
            with(0, 1, &[0xff, 0xff, 0xff, 0xff, 0x01]),
        ),
        // One byte over the smallest maximum (`limit` 1: 256 bytes).
        ("over-limit", with(1, 1, &[0, 0, 1, 1, 0x02])),
        (
            "unknown-kind",
            with(0, 2, &[0, 0, 0, 10, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
        (
            "bad-utf8-method",
            with(
                0,
                2,
                &[0, 0, 0, 13, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            ),
        ),
        ("unknown-status-code", with(0, 5, &unknown_code)),
        // The greeting's decoder (bit 2 of `limit`).
        ("greeting-every-kind", with(4, 7, &all)),
        (
            "greeting-announces-16mib",
            with(4, 1, &[0x01, 0x00, 0x00, 0x00, 0x01]),
        ),
        ("greeting-over-limit", with(5, 1, &[0, 0, 1, 1, 0x02])),
    ]
}

/// `[side, payload...]`: see `workerbus_fuzz::handshake`.
fn handshake() -> Vec<(&'static str, Vec<u8>)> {
    let hello = |payload: Vec<u8>| [vec![0], payload].concat();
    let welcome = |payload: Vec<u8>| [vec![1], payload].concat();
    let echo = welcome_for(&[echo_service::SCHEMA], 42);
    let mut other_version = echo.clone();
    // Field 1 (protocol), a varint: 0x08 then the value.
    assert_eq!(other_version[..2], [0x08, PROTOCOL_VERSION as u8]);
    other_version[1] = PROTOCOL_VERSION as u8 + 1;
    vec![
        ("hello", hello(hello_for(PROTOCOL_VERSION, &[7; 32]))),
        (
            "hello-other-version",
            hello(hello_for(PROTOCOL_VERSION + 1, &[7; 32])),
        ),
        (
            "hello-short-secret",
            hello(hello_for(PROTOCOL_VERSION, &[7; 31])),
        ),
        ("hello-empty", hello(vec![])),
        ("hello-garbage", hello(vec![0xff, 0xff, 0xff])),
        ("welcome-echo", welcome(echo.clone())),
        ("welcome-nothing", welcome(welcome_for(&[], 42))),
        (
            "welcome-missing",
            welcome(welcome_for(&[missing_service::SCHEMA], 42)),
        ),
        (
            "welcome-both",
            welcome(welcome_for(
                &[echo_service::SCHEMA, missing_service::SCHEMA],
                42,
            )),
        ),
        ("welcome-other-version", welcome(other_version)),
        (
            "welcome-truncated",
            welcome(echo[..echo.len() / 2].to_vec()),
        ),
    ]
}

/// Raw inputs: `Config::raw_prefix()` then the bytes a host writes; see
/// `workerbus_fuzz::server`.
fn server_dispatch() -> Vec<(&'static str, Vec<u8>)> {
    let raw = |frames: Vec<Frame>| [&Config::DEFAULT.raw_prefix()[..], &encode(frames)].concat();
    let echo = EchoRequest {
        text: "hi".into(),
        data: Bytes::from_static(b"\x01"),
        delay_ms: 5,
    }
    .encode_to_vec();
    let sum = |value, stop| {
        SumRequest {
            tag: "t".into(),
            value,
            stop,
            hold_after: 0,
            padding: Default::default(),
        }
        .encode_to_vec()
    };
    let count = CountRequest {
        tag: "t".into(),
        from: 1,
        count: 40,
        delay_ms: 0,
        fail_code: 0,
        padding: 0,
    }
    .encode_to_vec();
    let mut truncated = raw(vec![request(1, echo_service::ECHO, echo.clone())]);
    truncated.truncate(truncated.len() - 3);
    vec![
        (
            "echo",
            raw(vec![request(1, echo_service::ECHO, echo.clone())]),
        ),
        (
            "echo-then-cancel",
            raw(vec![
                request(1, echo_service::ECHO, echo.clone()),
                Frame::Cancel { id: 1 },
            ]),
        ),
        (
            "panic",
            raw(vec![request(
                1,
                echo_service::PANIC,
                PanicRequest {
                    message: "boom".into(),
                }
                .encode_to_vec(),
            )]),
        ),
        (
            "sum-stream",
            raw(vec![
                request(4, echo_service::SUM, vec![]).with_kind(MethodKind::ClientStreaming),
                Frame::Item {
                    id: 4,
                    payload: Bytes::from(sum(2, false)),
                },
                Frame::Item {
                    id: 4,
                    payload: Bytes::from(sum(3, false)),
                },
                Frame::End { id: 4 },
            ]),
        ),
        (
            "count-with-credit",
            raw(vec![
                request(5, echo_service::COUNT, count).with_kind(MethodKind::ServerStreaming),
                Frame::Credit {
                    id: 5,
                    count: 8,
                    bytes: 0,
                },
            ]),
        ),
        (
            "chat",
            raw(vec![
                request(6, echo_service::CHAT, vec![]).with_kind(MethodKind::BidiStreaming),
                Frame::Item {
                    id: 6,
                    payload: Bytes::from(echo.clone()),
                },
                Frame::End { id: 6 },
            ]),
        ),
        (
            "controls",
            raw(vec![
                request(7, "$workerbus.health", vec![]),
                request(8, "$workerbus.hello", hello_for(PROTOCOL_VERSION, &[7; 32])),
                request(9, "$workerbus.detach", vec![]),
            ]),
        ),
        (
            "unknown-method",
            raw(vec![
                request(1, "missing.nothing", vec![]).with_kind(MethodKind::OneWay),
            ]),
        ),
        (
            "duplicate-id",
            raw(vec![
                request(1, echo_service::SLEEP, vec![0x10, 0x64]),
                request(1, echo_service::ECHO, echo.clone()),
            ]),
        ),
        (
            "shutdown",
            raw(vec![
                request(1, echo_service::ECHO, echo.clone()),
                Frame::Shutdown,
                request(2, echo_service::ECHO, echo),
            ]),
        ),
        (
            "response-from-host",
            raw(vec![Frame::Response {
                id: 1,
                payload: Bytes::new().into(),
            }]),
        ),
        ("truncated", truncated),
        (
            "announces-4gib",
            [
                &Config::DEFAULT.raw_prefix()[..],
                &[0xff, 0xff, 0xff, 0xff, 0x01],
            ]
            .concat(),
        ),
    ]
}

/// `PeerConfig` then raw bytes; see `workerbus_fuzz::named_peer`.
fn named_peer() -> Vec<(&'static str, Vec<u8>)> {
    let peer = |greeting_limit: u8, first: u8, cut: u8, frames: Vec<Frame>| {
        let config = PeerConfig {
            serve: Config::DEFAULT,
            greeting_limit,
            first,
            cut,
        };
        [raw_prefix(&config), encode(frames)].concat()
    };
    let echo = |id, size: usize| {
        let payload = EchoRequest {
            text: "hi".into(),
            data: Bytes::from(vec![7; size]),
            delay_ms: 0,
        }
        .encode_to_vec();
        request(id, echo_service::ECHO, payload)
    };
    vec![
        ("silent", peer(0, 0, 0, vec![])),
        ("call-before-greeting", peer(0, 0, 0, vec![echo(2, 1)])),
        ("greeting-then-echo", peer(0, 1, 0, vec![echo(2, 1)])),
        (
            "greeting-then-controls",
            peer(
                0,
                1,
                0,
                vec![
                    request(2, "$workerbus.health", vec![]),
                    request(
                        3,
                        "$workerbus.hello",
                        hello_for(PROTOCOL_VERSION, &[0x5e; 32]),
                    ),
                    request(4, "$workerbus.detach", vec![]),
                    Frame::Shutdown,
                ],
            ),
        ),
        // 8 KiB: over the greeting's limit, allowed once greeted.
        (
            "greeting-then-large-echo",
            peer(0, 1, 0, vec![echo(2, 8192)]),
        ),
        ("wrong-secret", peer(0, 2, 0, vec![echo(2, 1)])),
        ("partial-greeting", peer(0, 3, 30, vec![])),
        ("slow-greeting", peer(0, 4, 50, vec![echo(2, 1)])),
        ("too-slow-greeting", peer(0, 4, 120, vec![echo(2, 1)])),
        ("announces-over-limit", peer(0, 5, 100, vec![])),
        ("announces-over-smallest-limit", peer(1, 5, 5, vec![])),
        ("announces-within-limit", peer(0, 5, 2, vec![echo(2, 1)])),
    ]
}

/// A peer of a connection that takes memory files: well-formed
/// announcements, each kind of descriptor a `SHARED` frame may come with,
/// too many descriptors on one write, raw bytes between (see
/// `workerbus_fuzz::shared` for the ops).
fn shared_memory() -> Vec<(&'static str, Vec<u8>)> {
    let well_formed = |id: u8, size: u16| {
        let [high, low] = size.to_be_bytes();
        vec![1, id, high, low]
    };
    let hostile = |kind: u8, len: u16, raw: &[u8]| {
        let [high, low] = len.to_be_bytes();
        let mut op = vec![2, kind, high, low, raw.len() as u8];
        op.extend_from_slice(raw);
        op
    };
    let mut seeds = vec![
        ("well-formed", [vec![0], well_formed(1, 0), well_formed(2, 60_000)].concat()),
        ("over-the-limit", [vec![2], well_formed(1, 8_000)].concat()),
        ("too-many-descriptors", vec![0, 3, 11]),
        ("raw-bytes", [vec![0, 0, 3], b"abc".to_vec(), well_formed(1, 1)].concat()),
    ];
    let kinds = [
        "sealed-file",
        "file-of-another-size",
        "unsealed-file",
        "pipe",
        "socket",
        "dev-null",
        "no-descriptor",
    ];
    for (kind, name) in kinds.into_iter().enumerate() {
        seeds.push((name, [vec![0], hostile(kind as u8, 4096, &[])].concat()));
    }
    seeds.push((
        "sealed-file-then-a-cancel",
        [vec![0], hostile(0, 4096, &encode([Frame::Cancel { id: 1 }]))].concat(),
    ));
    seeds
}
