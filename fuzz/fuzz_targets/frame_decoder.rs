//! Fuzz target `frame_decoder`: see `workerbus_fuzz::decoder` for what an input means and what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| workerbus_fuzz::decoder::check(data));
