//! Fuzz target `server_dispatch`: see `workerbus_fuzz::server` for what an input means and what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| workerbus_fuzz::server::check(data));
