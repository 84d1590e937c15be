//! The sans-IO keepalive machine and the datagram session around it, driven by arbitrary
//! sequences of events at arbitrary non-decreasing times; the invariants are listed in
//! `common/machine.rs`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: common::machine::Input| common::machine::run(&input));
