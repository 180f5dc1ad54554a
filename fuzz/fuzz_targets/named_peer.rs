//! Fuzz target `named_peer`: see `workerbus_fuzz::named_peer` for what an input means and what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| workerbus_fuzz::named_peer::check(data));
