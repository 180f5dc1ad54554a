//! Tries a worker's named socket as a stranger would: connects, presents a
//! wrong secret, and says what happened, by its output and exit code.
//!
//! - `connect: <error>`, exit 13: the connection was refused with
//!   "permission denied" (1 for any other error);
//! - `closed by the worker`, exit 3: connected, but the worker closed the
//!   connection without answering;
//! - `connected`, exit 0: the worker answered the greeting (with a refusal).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;
use workerbus::{Frame, FrameCodec, MethodName};

fn main() {
    let address = std::env::args()
        .nth(1)
        .expect("connect-probe <socket path>");
    let mut socket = match UnixStream::connect(&address) {
        Ok(socket) => socket,
        Err(error) => {
            println!("connect: {error}");
            let denied = error.kind() == std::io::ErrorKind::PermissionDenied;
            std::process::exit(if denied { 13 } else { 1 });
        }
    };
    // `$workerbus.hello` with protocol 1 and a secret of 32 zero bytes.
    let mut hello = vec![0x08, workerbus::PROTOCOL_VERSION as u8, 0x12, 32];
    hello.extend_from_slice(&[0; 32]);
    let frame = Frame::request(
        1,
        MethodName::from_static("$workerbus.hello"),
        None,
        1,
        Bytes::from(hello),
    );
    let mut bytes = BytesMut::new();
    FrameCodec::new()
        .encode(frame, &mut bytes)
        .expect("encode the greeting");
    let mut answer = Vec::new();
    let answered = socket.write_all(&bytes).is_ok()
        && socket.read_to_end(&mut answer).is_ok()
        && !answer.is_empty();
    if answered {
        println!("connected");
    } else {
        println!("closed by the worker");
        std::process::exit(3);
    }
}
