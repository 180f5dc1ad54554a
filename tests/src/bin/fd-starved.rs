//! Starts a worker in a process whose file descriptors are all in use, and
//! prints the error on stdout: to show the error names the system's cause.
//! The process holds every descriptor its limit allows (run it under a low
//! `ulimit -n`), so it runs apart from the tests, which it would starve.
//!
//! Usage: `fd-starved thread` (a thread worker, whose runtime cannot be
//! built), or `fd-starved process <program>` (a process worker, whose
//! socket pair cannot be made: one descriptor is left free, for the
//! secret's random bytes).
//!
//! Exit code 0 when the spawn failed as it should, 1 when it started.

use std::fs::File;

use workerbus::{ProcessDriver, ThreadDriver};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::EchoServer;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let driver = args.next().expect("fd-starved <thread|process> [program]");
    let mut held = Vec::new();
    let exhausted = loop {
        match File::open("/dev/null") {
            Ok(file) => held.push(file),
            Err(error) => break error,
        }
    };
    assert_eq!(
        exhausted.raw_os_error(),
        Some(24),
        "opening files stopped with {exhausted}, not EMFILE"
    );
    let result = match driver.as_str() {
        "thread" => ThreadDriver::new()
            .name("starved")
            .spawn(EchoServer::new(EchoWorker::new()))
            .await
            .map(drop),
        "process" => {
            held.pop();
            let program = args.next().expect("fd-starved process <program>");
            ProcessDriver::new(program).spawn().await.map(drop)
        }
        other => panic!("fd-starved: unknown driver {other}"),
    };
    drop(held);
    match result {
        Err(error) => println!("{error}"),
        Ok(()) => {
            println!("the worker started");
            std::process::exit(1);
        }
    }
}
