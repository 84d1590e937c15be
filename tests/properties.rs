//! Property tests over the sans-IO cores, run by the normal suite: the fuzz targets' harnesses
//! (`fuzz/fuzz_targets/common/`, shared so that both check the same invariants) fed inputs that
//! proptest generates and shrinks.
//!
//! - `DatagramSession` fed arbitrary datagram sequences at arbitrary times, and the keepalive
//!   machine (datagram and stream style) and the datagram session driven by arbitrary event
//!   sequences: no panic, at most one failure, nothing sent or scheduled once finished, at most
//!   MAX_RETRANSMIT retransmissions, no `TooManyRetries` before the full RFC 7252 schedule or
//!   while the peer was heard from, deadlines that settle.
//! - `StreamSession` and `FrameDecoder` fed arbitrary byte streams (random, and well-formed
//!   frames mixed with garbage) in arbitrary chunkings: the chunking changes nothing, memory
//!   stays bounded, every frame and signal round-trips, nothing is sent after the end.
//! - Both sessions: no request carrying an unrecognised critical option is handed up, no
//!   response carrying one delivered (RFC 7252 §5.4.1).
//!
//! Each property runs 256 cases and the whole file takes well under 5 s in a debug build.
// The shared model derives `Arbitrary` under cargo-fuzz's `--cfg fuzzing` only.
#![allow(unexpected_cfgs)]

#[path = "../fuzz/fuzz_targets/common/mod.rs"]
mod common;

use proptest::prelude::*;

use coap_keepalive::proto::wire::signal::Signal;
use coap_keepalive::proto::wire::tcp::Frame;

use common::machine::{ConfigInput, Input, Interval, Machine, Op};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

fn interval() -> impl Strategy<Value = Interval> {
    prop_oneof![
        8 => (1u32..120_000).prop_map(Interval::Millis),
        1 => (0u64..100).prop_map(Interval::Secs),
        1 => any::<u64>().prop_map(Interval::Secs),
    ]
}

fn config_input() -> impl Strategy<Value = ConfigInput> {
    (
        proptest::option::weighted(0.9, interval()),
        0u8..=100,
        (1u16..5_000, 0u8..=100, 0u8..8),
        proptest::option::of(1u32..60_000),
        1u8..4,
    )
        .prop_map(
            |(interval, jitter_percent, (ack, factor, retransmit), pong, unanswered)| ConfigInput {
                interval,
                jitter_percent,
                ack_timeout_ms: ack,
                random_factor_percent: factor,
                max_retransmit: retransmit,
                pong_timeout_ms: pong,
                max_unanswered: unanswered,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..20_000).prop_map(Op::Advance),
        8 => Just(Op::Deadline),
        1 => Just(Op::Timeout),
        2 => Just(Op::Activity),
        1 => Just(Op::MarkActive),
        2 => Just(Op::Established),
        1 => Just(Op::PeerPing),
        4 => (any::<bool>(), any::<u16>(), any::<bool>())
            .prop_map(|(matching, other, ack)| Op::DatagramAnswer { matching, other, ack }),
        3 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(kind, other)| Op::Pong { kind, other }),
        1 => proptest::option::of(interval()).prop_map(Op::SetInterval),
        1 => any::<bool>().prop_map(Op::SetRequestInFlight),
        1 => Just(Op::PingNow),
        1 => (0u8..5).prop_map(Op::Fail),
        1 => Just(Op::Close),
        2 => (any::<bool>(), 0u16..30_000)
            .prop_map(|(confirmable, timeout_ms)| Op::SendRequest { confirmable, timeout_ms }),
        2 => proptest::option::weighted(
            0.3,
            proptest::sample::select(vec![2u16, 12, 13, 23, 27, 60, 65_001]),
        )
        .prop_map(|option| Op::AnswerRequest { option }),
        1 => Just(Op::Cancel),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Op::Datagram),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop_oneof![
            Just(Machine::Datagram),
            Just(Machine::Stream),
            Just(Machine::Session)
        ],
        any::<u64>(),
        config_input(),
        proptest::collection::vec(op(), 0..80),
    )
        .prop_map(|(machine, seed, config, ops)| Input {
            machine,
            seed,
            config,
            ops,
        })
}

/// Well-formed frames (CSM first or not), bare requests, and garbage, concatenated.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(Signal::Ping { custody: false }.encode(&[1, 2])),
        Just(Signal::Pong { custody: true }.encode(&[])),
        Just(
            Signal::Csm {
                max_message_size: Some(2048),
                block_wise_transfer: true
            }
            .encode(&[])
        ),
        (
            0u8..=0xFF,
            proptest::collection::vec(any::<u8>(), 0..9),
            // Elective, unrecognised critical (13, Block2, Block1) and proxy options.
            proptest::sample::select(vec![
                None,
                Some(12u16),
                Some(13),
                Some(23),
                Some(27),
                Some(35)
            ]),
        )
            .prop_map(|(code, token, extra)| {
                let mut frame = Frame::new(code);
                frame.token = token;
                frame.options = vec![(11, b"x".to_vec())];
                frame
                    .options
                    .extend(extra.map(|number| (number, vec![0x0a])));
                frame.payload = b"body".to_vec();
                frame.encode()
            }),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Input for `common::udp::drive_session` that feeds well-formed CON / NON requests and
/// responses, some with options the stack must refuse, each followed by the harness's answer.
/// Each piece is the harness's "datagram" step (op 0, a 16-bit time step, a length, the bytes)
/// and then op 3 (answer the last request handed up).
fn requests_with_options() -> impl Strategy<Value = Vec<u8>> {
    let datagram = (
        prop_oneof![Just(0x41u8), Just(0x51), Just(0x61)], // CON / NON / ACK, TKL 1
        prop_oneof![Just(0x01u8), Just(0x03), Just(0x45)], // GET / PUT / 2.05
        any::<u16>(),
        proptest::sample::select(vec![
            None,
            Some(2u16),
            Some(13),
            Some(23),
            Some(27),
            Some(35),
        ]),
    )
        .prop_map(|(first, code, mid, extra)| {
            let mut frame = Frame::new(code);
            frame.options = vec![(11, b"x".to_vec())];
            frame
                .options
                .extend(extra.map(|number| (number, vec![0x0a])));
            frame.payload = b"p".to_vec();
            // The same options and payload behind a datagram header with token 0x99 (they take
            // at most 12 bytes, so the frame's own header is its first two).
            let stream = frame.encode();
            let mut bytes = vec![first, code, (mid >> 8) as u8, mid as u8, 0x99];
            bytes.extend_from_slice(&stream[2..]);
            let mut piece = vec![0x00, 0x00, 0x10, bytes.len() as u8];
            piece.extend(bytes);
            piece.push(0x03);
            piece
        });
    // The harness reads its settings first: ACK_TIMEOUT 2000 ms, MAX_RETRANSMIT 4, random
    // factor 1.5, keepalive off, seed 0, no idle timeout.
    let settings = [0x07, 0xd0, 0x04, 0x32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    proptest::collection::vec(datagram, 0..12)
        .prop_map(move |pieces| [settings.to_vec(), pieces.concat()].concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn datagram_session_refuses_unrecognised_critical_options(data in requests_with_options()) {
        common::udp::drive_session(&data);
    }

    #[test]
    fn keepalive_machine_and_datagram_session_keep_their_invariants(input in input()) {
        common::machine::run(&input);
    }

    #[test]
    fn datagram_session_survives_arbitrary_datagrams(
        data in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        common::udp::check_classify(&data);
        common::udp::drive_session(&data);
    }

    #[test]
    fn stream_session_survives_arbitrary_chunkings(
        limit in prop_oneof![Just(1152u32), 0u32..64, Just(u32::MAX)],
        prepend_csm in any::<bool>(),
        chunk_seed in any::<u64>(),
        max_chunk in 1usize..32,
        rng_seed in any::<u64>(),
        interval_ms in 0u64..5_000,
        stream in prop_oneof![stream_bytes(), proptest::collection::vec(any::<u8>(), 0..300)],
    ) {
        common::tcp::check(&common::tcp::Setup {
            limit,
            prepend_csm,
            chunk_seed,
            max_chunk,
            rng_seed,
            interval_ms,
            stream: &stream,
        });
    }
}
