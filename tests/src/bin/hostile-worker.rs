//! A worker process that breaks the protocol on purpose, one way per mode
//! (`--mode=<mode>`), to show what a host does with a broken or hostile
//! worker. It speaks the wire format by hand from `docs/PROTOCOL.md`, as a
//! third-party peer would: the inherited socket is descriptor 3, the host
//! greets first, and everything after the greeting is up to the mode.
//!
//! Modes: `garbage`, `truncated`, `huge`, `unknown-kind`, `unknown-id`,
//! `duplicate`, `stops-reading`, `wrong-protocol`, `bad-welcome`,
//! `unexpected-request`, and `claim-pid`: answers the host's detach with a
//! socket of its own at `--listen=<path>`, and welcomes every host there
//! with the process id `--pid=<n>`, not its own.

use std::os::fd::FromRawFd;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use workerbus::{Frame, FrameCodec, MethodName};
use workerbus_tests::pb::echo::{EchoReply, EchoRequest};

/// The worker's half of the handshake, as `docs/PROTOCOL.md` section 9.2
/// lays it out (the services are left out: the host checks none).
#[derive(Clone, PartialEq, prost::Message)]
struct Welcome {
    #[prost(uint32, tag = "1")]
    protocol: u32,
    #[prost(uint32, tag = "2")]
    pid: u32,
}

/// The answer to `$workerbus.detach` (section 9.1).
#[derive(Clone, PartialEq, prost::Message)]
struct Detached {
    #[prost(string, tag = "1")]
    address: String,
}

type Peer = Framed<UnixStream, FrameCodec>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = std::env::args()
        .find_map(|arg| arg.strip_prefix("--mode=").map(str::to_owned))
        .expect("hostile-worker needs --mode=<mode>");
    let Some(startup) = workerbus::startup_data() else {
        eprintln!("hostile-worker: not started by a workerbus host");
        std::process::exit(2);
    };
    tokio::spawn(exit_with_host(startup.host_pid()));
    // SAFETY: a workerbus host starts its workers with their end of the
    // socket as descriptor 3 (PROTOCOL.md section 9.3), and nothing else in
    // this process owns it.
    #[allow(unsafe_code)]
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(3) };
    socket.set_nonblocking(true).expect("nonblocking socket");
    let socket = UnixStream::from_std(socket).expect("a tokio socket");
    let mut peer = Framed::new(socket, FrameCodec::new());

    let protocol = if mode == "wrong-protocol" {
        workerbus::PROTOCOL_VERSION + 1
    } else {
        workerbus::PROTOCOL_VERSION
    };
    let hello = next_request(&mut peer).await;
    let welcome = if mode == "bad-welcome" {
        Bytes::from_static(&[0xff, 0xff, 0xff])
    } else {
        Bytes::from(
            Welcome {
                protocol,
                pid: std::process::id(),
            }
            .encode_to_vec(),
        )
    };
    send(
        &mut peer,
        Frame::Response {
            id: hello,
            payload: welcome.into(),
        },
    )
    .await;

    match mode.as_str() {
        "garbage" => {
            next_request(&mut peer).await;
            raw(&mut peer, &[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04]).await;
        }
        "truncated" => {
            next_request(&mut peer).await;
            // A RESPONSE announcing 100 bytes, of which 12 arrive.
            raw(&mut peer, &[0, 0, 0, 100, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2]).await;
            peer.get_mut()
                .shutdown()
                .await
                .expect("shut the socket for writing");
        }
        "huge" => {
            next_request(&mut peer).await;
            // A frame announcing 4 GiB - 1 bytes, and a little of it.
            raw(
                &mut peer,
                &[0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            )
            .await;
        }
        "unknown-kind" => {
            next_request(&mut peer).await;
            raw(&mut peer, &[0, 0, 0, 10, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 2]).await;
        }
        "unexpected-request" => {
            next_request(&mut peer).await;
            let request = Frame::request(
                1,
                MethodName::from_static("echo.echo"),
                None,
                1,
                Bytes::new(),
            );
            send(&mut peer, request).await;
        }
        "unknown-id" => {
            let id = next_request(&mut peer).await;
            let payload = Bytes::from(echo_reply("for nobody"));
            send(
                &mut peer,
                Frame::Response {
                    id: id + 1000,
                    payload: payload.into(),
                },
            )
            .await;
        }
        "duplicate" => answer_twice(&mut peer).await,
        "claim-pid" => claim_pid(&mut peer).await,
        // Greeted, then never reads again: whatever the host writes fills the
        // socket's buffers.
        "stops-reading" => {}
        // Refused or broken handshakes: the host ends the connection.
        "wrong-protocol" | "bad-welcome" => {}
        other => panic!("hostile-worker: unknown mode {other}"),
    }
    // Stay alive, so that what the host reports is the broken protocol and
    // not this process's exit, until the host kills us or ends.
    let _peer = peer;
    std::future::pending::<()>().await;
}

/// Ends this process once its host has ended, as a real worker does: some
/// modes never read the socket, so they would not see it close.
async fn exit_with_host(host: u32) {
    let host = format!("/proc/{host}");
    while std::path::Path::new(&host).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::process::exit(0);
}

/// Echoes every call and answers each twice, the second time with a
/// different text.
async fn answer_twice(peer: &mut Peer) {
    while let Some(frame) = peer.next().await {
        let Ok(Frame::Request { id, payload, .. }) = frame else {
            continue;
        };
        let text = EchoRequest::decode(payload.into_bytes())
            .expect("an EchoRequest")
            .text;
        let first = Bytes::from(echo_reply(&text));
        send(
            peer,
            Frame::Response {
                id,
                payload: first.into(),
            },
        )
        .await;
        let second = Bytes::from(echo_reply("a second answer"));
        send(
            peer,
            Frame::Response {
                id,
                payload: second.into(),
            },
        )
        .await;
    }
    std::process::exit(0);
}

/// The value of the argument `--<name>=<value>`.
fn arg(name: &str) -> String {
    let prefix = format!("--{name}=");
    std::env::args()
        .find_map(|arg| arg.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("hostile-worker needs {prefix}<value>"))
}

/// Answers the host's `$workerbus.detach` with a socket of its own, where
/// it welcomes every host with a process id that is not its own, and then
/// leaves the connection open and unanswered.
async fn claim_pid(peer: &mut Peer) {
    let address = arg("listen");
    let claimed: u32 = arg("pid").parse().expect("--pid=<process id>");
    let detach = next_request(peer).await;
    let listener = tokio::net::UnixListener::bind(&address).expect("bind --listen");
    let answer = Detached {
        address: address.clone(),
    };
    send(
        peer,
        Frame::Response {
            id: detach,
            payload: Bytes::from(answer.encode_to_vec()).into(),
        },
    )
    .await;
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let mut host = Framed::new(stream, FrameCodec::new());
            let Some(Ok(Frame::Request { id, .. })) = host.next().await else {
                return;
            };
            let welcome = Welcome {
                protocol: workerbus::PROTOCOL_VERSION,
                pid: claimed,
            };
            let payload = Bytes::from(welcome.encode_to_vec());
            if host
                .send(Frame::Response {
                    id,
                    payload: payload.into(),
                })
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(_)) = host.next().await {}
        });
    }
}

fn echo_reply(text: &str) -> Vec<u8> {
    EchoReply {
        text: text.into(),
        data: Bytes::new(),
    }
    .encode_to_vec()
}

/// Waits for the next `REQUEST` and returns its id.
async fn next_request(peer: &mut Peer) -> u64 {
    loop {
        match peer.next().await {
            Some(Ok(Frame::Request { id, .. })) => return id,
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("hostile-worker: {error}"),
            None => std::process::exit(0),
        }
    }
}

async fn send(peer: &mut Peer, frame: Frame) {
    peer.send(frame).await.expect("send a frame");
}

/// Writes bytes that are not a well-formed frame.
async fn raw(peer: &mut Peer, bytes: &[u8]) {
    let socket = peer.get_mut();
    socket.write_all(bytes).await.expect("write");
    socket.flush().await.expect("flush");
}
