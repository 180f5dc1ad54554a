//! Holds many silent connections to a worker's named socket, in a process
//! of its own, so that a test's own descriptors stay few.
//!
//! Usage: `silent-peers <socket path> <count>`. It connects `count` times,
//! writes nothing, and prints `ready` once every connection is made. Each
//! line then read from standard input makes it print how many of the
//! connections the worker still holds open (the others read as ended); it
//! exits when its input ends.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: silent-peers <socket path> <count>");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("a number of connections");
    let peers: Vec<UnixStream> = (0..count)
        .map(|n| {
            let peer = UnixStream::connect(&address)
                .unwrap_or_else(|error| panic!("connection {n} to {address}: {error}"));
            peer.set_nonblocking(true).expect("a non-blocking socket");
            peer
        })
        .collect();
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .expect("stdout");
    for line in std::io::stdin().lock().lines() {
        line.expect("stdin");
        let open = peers
            .iter()
            .filter(|peer| {
                // `Read` for `&UnixStream`: a read of nothing waiting.
                let mut peer: &UnixStream = peer;
                matches!(peer.read(&mut [0]), Err(error) if error.kind() == ErrorKind::WouldBlock)
            })
            .count();
        writeln!(out, "{open}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}
