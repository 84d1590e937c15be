//! `wire::tcp::FrameDecoder` fed an arbitrary byte stream in arbitrary chunkings, `Signal::parse`
//! on every frame, and a `StreamSession` fed the same chunks; the checks are listed in
//! `common/tcp.rs`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::tcp::run(data));
