//! Peers that break the rules: hostile workers seen from the host, hostile
//! hosts seen from a worker process (`hostile`), and peers of a worker's
//! named socket that never greet it (`ungreeted`).

mod hostile;
#[cfg(target_os = "linux")]
mod memory_files;
mod ungreeted;

/// The test worker program, `tests/src/bin/echo-worker.rs`.
const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");
