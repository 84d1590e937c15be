//! `wire::udp::classify` on arbitrary bytes, then a `DatagramSession` fed arbitrary datagrams
//! at arbitrary times; the checks are listed in `common/udp.rs`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::udp::check_classify(data);
    common::udp::drive_session(data);
});
