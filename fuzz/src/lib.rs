//! The checks behind the fuzz targets in `fuzz_targets/`: each target is one
//! call into this crate, so the seed generator (`examples/seeds.rs`) and the
//! targets agree on what an input means.
//!
//! Every check must hold for any input; a failed check panics, which
//! libFuzzer reports as a crash.

pub mod decoder;
pub mod handshake;
pub mod named_peer;
pub mod server;
pub mod shared;
