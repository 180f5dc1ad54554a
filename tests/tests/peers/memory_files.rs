//! Hosts that send a worker process bad memory files (PROTOCOL.md 5.13):
//! peers of its named socket that greet it with the secret, say they take
//! memory files, and then announce payloads with descriptors that are not
//! sealed memory files of the size announced, or none, or too many. Each is
//! disconnected without an answer; every descriptor it sent is closed in
//! the worker; the worker serves the next host, and takes a good memory
//! file from it.

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::net::UnixStream;
use tokio_util::codec::{Encoder, Framed};
use workerbus::{DetachedWorker, Frame, FrameCodec, MethodName, ProcessDriver};
use workerbus_tests::pb::echo::{EchoReply, EchoRequest};
use workerbus_tests::support::{KillOnDrop, secret_bytes};

use crate::ECHO_WORKER;

/// A peer of the worker's named socket that greeted it with the secret and
/// said it takes memory files, as a blocking socket.
async fn greeted_taking_memory_files(worker: &DetachedWorker) -> std::os::unix::net::UnixStream {
    let socket = UnixStream::connect(worker.address())
        .await
        .expect("connect");
    let mut peer = Framed::new(socket, FrameCodec::new());
    // Hello { protocol, secret, shared_memory: true }
    let mut hello = vec![0x08, workerbus::PROTOCOL_VERSION as u8, 0x12, 32];
    hello.extend_from_slice(&secret_bytes(worker.secret()));
    hello.extend_from_slice(&[0x18, 0x01]);
    let method = MethodName::from_static("$workerbus.hello");
    peer.send(Frame::request(1, method, None, 1, Bytes::from(hello)))
        .await
        .expect("greet");
    match peer.next().await {
        Some(Ok(Frame::Response { id: 1, payload })) => {
            // Welcome's field 4: the worker takes memory files.
            assert!(
                payload.into_bytes().ends_with(&[0x20, 0x01]),
                "the worker does not take memory files"
            );
        }
        other => panic!("the worker did not welcome us: {other:?}"),
    }
    let socket = peer.into_inner().into_std().expect("a std socket");
    socket.set_nonblocking(false).expect("a blocking socket");
    socket
}

/// A memory file holding `bytes`, with `seals`.
fn memory_file(bytes: &[u8], seals: SealFlags) -> OwnedFd {
    let file = rustix::fs::memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    let mut std_file = std::fs::File::from(file);
    std_file.write_all(bytes).expect("fill the memory file");
    let file = OwnedFd::from(std_file);
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&file, seals).expect("seal");
    }
    file
}

fn sealed(bytes: &[u8]) -> OwnedFd {
    memory_file(
        bytes,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW,
    )
}

/// A `SHARED` frame announcing `len` bytes for the frame with `id`.
fn shared(id: u64, len: u32) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 14, 0x0b, 0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

/// An `echo.echo` `REQUEST` with id `id` and no payload of its own.
fn empty_echo(id: u64) -> Vec<u8> {
    let frame = Frame::request(
        id,
        MethodName::from_static("echo.echo"),
        None,
        1,
        Bytes::new(),
    );
    let mut bytes = BytesMut::new();
    FrameCodec::new().encode(frame, &mut bytes).unwrap();
    bytes.to_vec()
}

/// Writes `bytes` with `files` riding on them.
fn send_with(socket: &std::os::unix::net::UnixStream, bytes: &[u8], files: &[OwnedFd]) {
    let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len());
}

/// The memory files named `hostile` and the pipes the process `pid` has
/// open (its own, and any a host sent it), sorted.
fn sent_descriptors(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the worker's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("/memfd:hostile") || target.starts_with("pipe:"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_worker_refuses_bad_memory_files_closes_every_descriptor_and_serves_the_next_host() {
    let spawned = ProcessDriver::new(ECHO_WORKER)
        .arg("--shared-memory-from=4096")
        .spawn()
        .await
        .expect("spawn");
    let worker = spawned.detach().await.expect("detach");
    let pid = worker.pid().unwrap();
    let _kill = KillOnDrop(pid);
    let idle = sent_descriptors(pid);

    let announce = |len: u32| [shared(2, len), empty_echo(2)].concat();
    let pipe = || {
        let (reader, _writer) = rustix::pipe::pipe().expect("a pipe");
        reader
    };
    let cases: Vec<(&str, Vec<u8>, Vec<OwnedFd>)> = vec![
        ("no descriptor", announce(4096), vec![]),
        (
            "an unsealed file",
            announce(4096),
            vec![memory_file(&[1; 4096], SealFlags::empty())],
        ),
        (
            "a file sealed against writing only",
            announce(4096),
            vec![memory_file(&[1; 4096], SealFlags::WRITE)],
        ),
        (
            "a file of another size",
            announce(4096),
            vec![sealed(&[1; 4000])],
        ),
        ("a pipe", announce(4096), vec![pipe()]),
        (
            "a payload over the maximum frame length",
            announce(16 << 20),
            vec![sealed(&[1; 4096])],
        ),
        (
            "nine descriptors on one write",
            announce(4096),
            (0..9).map(|_| sealed(&[1; 4096])).collect(),
        ),
        (
            "a descriptor ahead of no frame, then a cancel after the SHARED frame",
            [
                shared(2, 4096),
                vec![0, 0, 0, 10, 4, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            ]
            .concat(),
            vec![sealed(&[1; 4096])],
        ),
    ];
    for (what, bytes, files) in cases {
        let mut peer = greeted_taking_memory_files(&worker).await;
        let peer_end = tokio::task::spawn_blocking(move || {
            send_with(&peer, &bytes, &files);
            drop(files);
            let mut rest = Vec::new();
            let read = peer.read_to_end(&mut rest);
            (read.map_err(|error| error.to_string()), rest)
        });
        let (read, rest) = peer_end.await.unwrap();
        assert!(
            read.is_ok() && rest.is_empty(),
            "{what}: the worker answered {rest:02x?} ({read:?})"
        );
    }
    // Every descriptor those hosts sent is closed once the worker has
    // dropped it, just after it closed the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent_descriptors(pid) != idle && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        sent_descriptors(pid),
        idle,
        "descriptors the hosts sent are open in the worker"
    );

    // A good memory file is taken, and the echo answered through the socket
    // (its payload is below the worker's threshold).
    let data = Bytes::from(vec![7u8; 1000]);
    let request = EchoRequest {
        text: "from a memory file".into(),
        data: data.clone(),
        ..EchoRequest::default()
    }
    .encode_to_vec();
    let mut peer = greeted_taking_memory_files(&worker).await;
    let answer = tokio::task::spawn_blocking(move || {
        send_with(&peer, &announce(request.len() as u32), &[sealed(&request)]);
        let mut read = BytesMut::new();
        let mut buf = [0u8; 4096];
        let mut codec = FrameCodec::new();
        loop {
            if let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, &mut read).unwrap()
            {
                return frame;
            }
            let n = peer.read(&mut buf).expect("read the answer");
            assert!(n > 0, "the worker closed the connection");
            read.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    match answer {
        Frame::Response { id: 2, payload } => {
            let reply = EchoReply::decode(payload.into_bytes()).unwrap();
            assert_eq!(
                (reply.text.as_str(), reply.data),
                ("from a memory file", data)
            );
        }
        other => panic!("expected the echo's answer, got {other:?}"),
    }
}
