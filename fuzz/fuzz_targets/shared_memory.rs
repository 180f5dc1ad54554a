//! Fuzz target `shared_memory`: see `workerbus_fuzz::shared` for what an input means and what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| workerbus_fuzz::shared::check(data));
