//! Payloads in sealed memory files over a real socket pair: what crosses
//! that way, and what a hostile peer's descriptors and `SHARED` frames get.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;

use super::*;
use crate::driver::process::passing::MAX_WAITING_DESCRIPTORS;
use crate::frame::{FrameCodec, encode_shared};
use crate::name::MethodName;

/// Whether `ptr` points into a memory file this crate made, as the
/// process's mappings name it.
fn in_memory_file(ptr: *const u8) -> bool {
    let address = ptr as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|line| {
        let Some((range, rest)) = line.split_once(' ') else {
            return false;
        };
        let Some((start, end)) = range.split_once('-') else {
            return false;
        };
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        (start..end).contains(&address) && rest.contains("memfd:workerbus")
    })
}

/// Two transports over a socket pair, each sending payloads of at least
/// `from` bytes in memory files, as a handshake in which both took them
/// leaves them.
fn agreed_pair(
    from: usize,
) -> (
    SocketTransport<tokio::net::UnixStream>,
    SocketTransport<tokio::net::UnixStream>,
) {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let a = SocketTransport::unix(a, FrameCodec::new()).sharing_from(Some(from));
    let b = SocketTransport::unix(b, FrameCodec::new()).sharing_from(Some(from));
    for (this, peer) in [(&a, &b), (&b, &a)] {
        let takes = peer.passing().offer(Some(from));
        assert!(takes, "this system has sealed memory files");
        this.passing().peer_takes(takes);
    }
    (a, b)
}

async fn send_all(sender: &mut SocketTransport<tokio::net::UnixStream>, frames: Vec<Frame>) {
    for frame in frames {
        std::future::poll_fn(|cx| Pin::new(&mut *sender).poll_ready(cx))
            .await
            .unwrap();
        Pin::new(&mut *sender).start_send(frame).unwrap();
    }
    std::future::poll_fn(|cx| Pin::new(&mut *sender).poll_flush(cx))
        .await
        .unwrap();
}

async fn next(
    receiver: &mut SocketTransport<tokio::net::UnixStream>,
) -> Option<Result<Frame, FrameError>> {
    std::future::poll_fn(|cx| Pin::new(&mut *receiver).poll_next(cx)).await
}

fn bytes(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn large_payloads_cross_in_memory_files_and_arrive_mapped_uncopied() {
    let (mut sender, mut receiver) = agreed_pair(4096);
    let method = MethodName::from_static("bench.echo");
    let frames = vec![
        Frame::Response {
            id: 1,
            payload: bytes(1 << 20, 1).into(),
        },
        // A message value, encoded straight into its file.
        Frame::request(
            2,
            method.clone(),
            Some(Duration::from_secs(1)),
            1,
            Payload::message(bytes(300 << 10, 2)),
        ),
        Frame::Item {
            id: 3,
            payload: bytes(4096, 3),
        },
        Frame::Event {
            method: method.clone(),
            payload: bytes(8192, 4),
        },
        // Below the threshold, and a status: through the socket.
        Frame::Response {
            id: 5,
            payload: bytes(4095, 5).into(),
        },
        Frame::Status {
            id: 6,
            status: crate::Status::internal("big details").with_details(bytes(64 << 10, 6)),
        },
    ];
    let expected = frames.clone();
    let send = send_all(&mut sender, frames);
    let receive = async {
        let mut received = Vec::new();
        for _ in 0..expected.len() {
            received.push(next(&mut receiver).await.unwrap().unwrap());
        }
        received
    };
    let ((), received) = tokio::join!(send, receive);
    assert_eq!(received, expected);
    let payload_ptr = |frame: &Frame| match frame {
        Frame::Response { payload, .. } | Frame::Request { payload, .. } => {
            payload.clone().into_bytes().as_ptr()
        }
        Frame::Item { payload, .. } | Frame::Event { payload, .. } => payload.as_ptr(),
        Frame::Status { status, .. } => status.details().as_ptr(),
        other => panic!("no payload in {other:?}"),
    };
    let mapped: Vec<bool> = received
        .iter()
        .map(|frame| in_memory_file(payload_ptr(frame)))
        .collect();
    assert_eq!(mapped, [true, true, true, true, false, false]);
}

#[tokio::test]
async fn more_memory_files_than_one_write_carries_arrive_in_order() {
    let (mut sender, mut receiver) = agreed_pair(4096);
    let frames: Vec<Frame> = (1..=3 * DESCRIPTORS_PER_WRITE as u64 + 1)
        .map(|id| Frame::Response {
            id,
            payload: bytes(4096 + id as usize, id as u8).into(),
        })
        .collect();
    let expected = frames.clone();
    let send = send_all(&mut sender, frames);
    let receive = async {
        let mut received = Vec::new();
        for _ in 0..expected.len() {
            received.push(next(&mut receiver).await.unwrap().unwrap());
        }
        received
    };
    let ((), received) = tokio::join!(send, receive);
    assert_eq!(received, expected);
    assert!(sender.outgoing.is_empty());
    assert!(receiver.arrived.is_empty());
}

#[tokio::test]
async fn a_peer_that_does_not_take_memory_files_gets_every_payload_in_the_socket() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let mut sender = SocketTransport::unix(a, FrameCodec::new()).sharing_from(Some(4096));
    let mut receiver = SocketTransport::unix(b, FrameCodec::new());
    // The peer said it does not take them (or this side sends none).
    sender.passing().peer_takes(false);
    let frame = Frame::Response {
        id: 1,
        payload: bytes(1 << 20, 9).into(),
    };
    let send = send_all(&mut sender, vec![frame.clone()]);
    let ((), received) = tokio::join!(send, next(&mut receiver));
    let received = received.unwrap().unwrap();
    assert_eq!(received, frame);
    let Frame::Response { payload, .. } = received else {
        unreachable!()
    };
    assert!(!in_memory_file(payload.into_bytes().as_ptr()));
}

/// What a hostile peer writes: frame bytes, and descriptors with them.
struct Hostile {
    what: &'static str,
    bytes: BytesMut,
    descriptors: Vec<OwnedFd>,
}

fn shared(id: u64, len: u32) -> BytesMut {
    let mut bytes = BytesMut::new();
    encode_shared(&mut bytes, id, len);
    bytes
}

fn then(mut bytes: BytesMut, frame: &Frame) -> BytesMut {
    frame.encode(&mut bytes);
    bytes
}

fn empty_response(id: u64) -> Frame {
    Frame::Response {
        id,
        payload: Bytes::new().into(),
    }
}

fn sealed_file(len: usize) -> OwnedFd {
    memfd::sealed(len, &mut [IoSlice::new(&vec![7; len])]).unwrap()
}

/// Sends `hostile` to a transport that takes memory files and returns the
/// error it reads; it must read one.
async fn refused(hostile: Hostile) -> String {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw: Vec<_> = hostile.descriptors.iter().map(AsRawFd::as_raw_fd).collect();
    if raw.is_empty() {
        (&a).write_all(&hostile.bytes).unwrap();
    } else {
        let sent = memfd::send(a.as_raw_fd(), &[IoSlice::new(&hostile.bytes)], &raw).unwrap();
        assert_eq!(sent, hostile.bytes.len());
    }
    drop(hostile.descriptors);
    drop(a);
    b.set_nonblocking(true).unwrap();
    let b = tokio::net::UnixStream::from_std(b).unwrap();
    let mut receiver =
        SocketTransport::unix(b, FrameCodec::new().max_frame_length(1 << 20)).sharing_from(None);
    receiver.passing().offer(Some(4096));
    loop {
        match next(&mut receiver).await {
            Some(Ok(frame)) => continue_or_fail(hostile.what, frame),
            Some(Err(error)) => return error.to_string(),
            None => panic!("{}: the connection ended without an error", hostile.what),
        }
    }
}

fn continue_or_fail(what: &str, frame: Frame) {
    // Only a frame written before the hostile part may arrive.
    assert_eq!(frame.id(), 99, "{what}: {frame:?} arrived");
}

#[tokio::test]
async fn a_hostile_peers_shared_frames_and_descriptors_are_refused_with_the_reason() {
    let response = |id| then(shared(id, 4096), &empty_response(id));
    let cases = vec![
        (
            Hostile {
                what: "no descriptor",
                bytes: response(1),
                descriptors: vec![],
            },
            "malformed SHARED frame: no descriptor came with it",
        ),
        (
            Hostile {
                what: "a socket, not a memory file",
                bytes: response(1),
                descriptors: vec![std::os::unix::net::UnixStream::pair().unwrap().0.into()],
            },
            "malformed SHARED frame: the descriptor is not a sealed memory file (Invalid argument (os error 22))",
        ),
        (
            Hostile {
                what: "an unsealed memory file",
                bytes: response(1),
                descriptors: vec![memfd::unsealed(4096)],
            },
            "malformed SHARED frame: the memory file is not sealed against writing, shrinking and growing (seals 0x0)",
        ),
        (
            Hostile {
                what: "a file of another size",
                bytes: response(1),
                descriptors: vec![sealed_file(4000)],
            },
            "malformed SHARED frame: the memory file holds 4000 bytes, its frame says 4096",
        ),
        (
            Hostile {
                what: "a payload over the maximum frame length",
                bytes: then(shared(1, 1 << 20), &empty_response(1)),
                descriptors: vec![sealed_file(1 << 20)],
            },
            "frame of 1048586 bytes exceeds the maximum frame length of 1048576 bytes",
        ),
        (
            Hostile {
                what: "a payload of 0 bytes",
                bytes: then(shared(1, 0), &empty_response(1)),
                descriptors: vec![sealed_file(1)],
            },
            "malformed SHARED frame: a payload of 0 bytes",
        ),
        (
            Hostile {
                what: "a frame that carries no payload after it",
                bytes: then(shared(1, 4096), &Frame::Cancel { id: 1 }),
                descriptors: vec![sealed_file(4096)],
            },
            "malformed SHARED frame: it is followed by a CANCEL frame, which carries no payload",
        ),
        (
            Hostile {
                what: "a frame with a payload of its own after it",
                bytes: then(
                    shared(1, 4096),
                    &Frame::Response {
                        id: 1,
                        payload: Bytes::from_static(b"own").into(),
                    },
                ),
                descriptors: vec![sealed_file(4096)],
            },
            "malformed SHARED frame: the RESPONSE frame after it carries a payload of its own",
        ),
        (
            Hostile {
                what: "another id after it",
                bytes: then(shared(1, 4096), &empty_response(2)),
                descriptors: vec![sealed_file(4096)],
            },
            "malformed SHARED frame: it announces a payload for id 1, the RESPONSE frame after it has id 2",
        ),
        (
            Hostile {
                what: "two in a row",
                bytes: {
                    let mut bytes = shared(1, 4096);
                    bytes.extend_from_slice(&shared(1, 4096));
                    bytes
                },
                descriptors: vec![sealed_file(4096), sealed_file(4096)],
            },
            "malformed SHARED frame: it follows another SHARED frame, not the frame that one announced",
        ),
        (
            Hostile {
                what: "the connection ends after it",
                bytes: shared(1, 4096),
                descriptors: vec![sealed_file(4096)],
            },
            "malformed SHARED frame: the connection closed before the frame it announces",
        ),
        (
            Hostile {
                what: "a SHARED frame of another length",
                bytes: {
                    let mut bytes = BytesMut::new();
                    bytes.extend_from_slice(&15u32.to_be_bytes());
                    bytes.extend_from_slice(&[0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0]);
                    bytes
                },
                descriptors: vec![],
            },
            "malformed SHARED frame: 15 bytes (must be 14)",
        ),
        (
            Hostile {
                what: "a SHARED frame with flags",
                bytes: {
                    let mut bytes = shared(1, 4096);
                    bytes[5] = 0x01;
                    then(bytes, &empty_response(1))
                },
                descriptors: vec![sealed_file(4096)],
            },
            "malformed SHARED frame: unknown flags 0x01",
        ),
        (
            Hostile {
                what: "more than one write carries",
                bytes: response(1),
                descriptors: (0..DESCRIPTORS_PER_WRITE + 1)
                    .map(|_| sealed_file(4096))
                    .collect(),
            },
            "i/o error: the peer sent more than 8 descriptors with one write",
        ),
    ];
    for (hostile, expected) in cases {
        let what = hostile.what;
        assert_eq!(refused(hostile).await, expected, "{what}");
    }
}

#[tokio::test]
async fn descriptors_ahead_of_their_frames_are_bounded() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    // Writes of one byte of a frame each, two descriptors on each, until
    // more wait than a connection holds: the frame never completes.
    let head = then(BytesMut::new(), &empty_response(99));
    for byte in head.iter().take(MAX_WAITING_DESCRIPTORS / 2 + 1) {
        let files = [sealed_file(1), sealed_file(1)];
        let raw = [files[0].as_raw_fd(), files[1].as_raw_fd()];
        memfd::send(a.as_raw_fd(), &[IoSlice::new(&[*byte])], &raw).unwrap();
    }
    b.set_nonblocking(true).unwrap();
    let b = tokio::net::UnixStream::from_std(b).unwrap();
    let mut receiver = SocketTransport::unix(b, FrameCodec::new());
    receiver.passing().offer(Some(4096));
    let error = next(&mut receiver).await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "i/o error: the peer sent more than 16 descriptors ahead of the frames that take them"
    );
    assert!(receiver.arrived.is_empty());
}

#[tokio::test]
async fn a_connection_that_takes_no_memory_files_refuses_a_shared_frame_and_keeps_no_descriptor() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let file = sealed_file(4096);
    let bytes = then(shared(1, 4096), &empty_response(1));
    memfd::send(a.as_raw_fd(), &[IoSlice::new(&bytes)], &[file.as_raw_fd()]).unwrap();
    b.set_nonblocking(true).unwrap();
    let b = tokio::net::UnixStream::from_std(b).unwrap();
    // Never offered: read as any peer's bytes, the kernel keeping the
    // descriptor out of this process.
    let mut receiver = SocketTransport::unix(b, FrameCodec::new());
    let error = next(&mut receiver).await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "malformed SHARED frame: this connection takes no payloads in shared memory"
    );
    assert!(receiver.arrived.is_empty());
}

#[tokio::test]
async fn no_more_memory_files_are_queued_while_eight_are_not_all_written() {
    let (mut sender, mut receiver) = agreed_pair(4096);
    // A peer that reads nothing for now, behind a small send buffer: the
    // writes stop part of the way.
    sys::set_send_buffer(sender.io.as_raw_fd(), 4096).unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let frames: Vec<Frame> = (1..=40)
        .map(|id| Frame::Item {
            id,
            payload: bytes(4096, id as u8),
        })
        .collect();
    // Ahead of them, a frame through the socket larger than its buffer.
    let status = Frame::Status {
        id: 99,
        status: crate::Status::internal("large details").with_details(bytes(64 << 10, 0)),
    };
    Pin::new(&mut sender).start_send(status.clone()).unwrap();
    let mut queued = vec![status];
    // As a writer woken again and again does: asks, and on `Pending` asks
    // again, a few times.
    let mut refusals = 0;
    for frame in &frames {
        loop {
            match Pin::new(&mut sender).poll_ready(&mut cx) {
                Poll::Ready(result) => break result.unwrap(),
                Poll::Pending if refusals < 3 => refusals += 1,
                Poll::Pending => break,
            }
        }
        if refusals == 3 {
            break;
        }
        Pin::new(&mut sender).start_send(frame.clone()).unwrap();
        queued.push(frame.clone());
    }
    // Eight, then a flush that cannot finish: a write that took the
    // descriptors, leaving their frames' bytes unwritten, is no reason to
    // queue more.
    assert_eq!(queued.len(), 1 + DESCRIPTORS_PER_WRITE);
    let send = async {
        std::future::poll_fn(|cx| Pin::new(&mut sender).poll_flush(cx))
            .await
            .unwrap();
    };
    let receive = async {
        let mut received = Vec::new();
        for _ in 0..queued.len() {
            received.push(next(&mut receiver).await.unwrap().unwrap());
        }
        received
    };
    let ((), received) = tokio::join!(send, receive);
    assert_eq!(received, queued);
}

#[tokio::test]
async fn requests_in_memory_files_the_socket_never_took_come_back_with_the_error() {
    let (mut sender, receiver) = agreed_pair(4096);
    let request = |id| {
        Frame::request(
            id,
            MethodName::from_static("echo.echo"),
            None,
            1,
            bytes(8192, id as u8),
        )
    };
    drop(receiver);
    // Both went in memory files: their SHARED frames and the frames after
    // them are what the socket never took.
    let requests = super::tests::unwritten_after_the_peer_left(&mut sender, request).await;
    // No byte was taken, so neither were their descriptors.
    assert_eq!(
        sender.outgoing.len(),
        2,
        "the requests went in memory files"
    );
    let ids: Vec<u64> = requests.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(requests[0].1, Payload::from(bytes(8192, 2)));
}

#[tokio::test]
async fn a_request_that_opens_a_stream_takes_no_memory_file() {
    let stream_request = Frame::request(
        1,
        MethodName::from_static("echo.collect"),
        None,
        1,
        Bytes::new(),
    )
    .with_kind(crate::MethodKind::ClientStreaming);
    let error = refused(Hostile {
        what: "a request stream's opening",
        bytes: then(shared(1, 4096), &stream_request),
        descriptors: vec![sealed_file(4096)],
    })
    .await;
    assert_eq!(
        error,
        "malformed SHARED frame: it is followed by a REQUEST that opens a request stream, which carries no payload"
    );
}
