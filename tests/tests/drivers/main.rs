//! The drivers end to end: the shared cases over each, and what only a
//! driver does (a thread worker's runtime; a worker process's start-up,
//! death, shutdown, detach and reconnect, and the options it is started
//! with).

mod process;
mod process_options;
#[cfg(target_os = "linux")]
mod shared_memory;
mod thread;

/// The test worker program, `tests/src/bin/echo-worker.rs`.
const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");
