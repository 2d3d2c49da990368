//! Fuzz target: `rustronaut_gateway::fuzzing::cookies` (see that function for the
//! invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rustronaut_gateway::fuzzing::cookies(data));
