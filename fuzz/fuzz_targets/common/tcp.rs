//! The `tcp_decoder` harness: `wire::tcp::FrameDecoder` fed an arbitrary byte stream in arbitrary chunkings, `Signal::parse`
//! on every frame, and a `StreamSession` fed the same chunks at arbitrary times.
//!
//! Checked:
//! - the chunking changes nothing: the frames and the error are those of one single push;
//! - memory held for an incomplete frame stays under the limit plus a header, whatever length a
//!   frame declares;
//! - every frame re-encodes to bytes that decode to the same frame, and every signal that parses
//!   round-trips through its encoding;
//! - the session answers as RFC 8323 says and, once done (Abort, Release, failure), sends,
//!   reports and schedules nothing.

use std::time::Instant;

use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::stream::StreamSession;
use coap_keepalive::proto::wire::options;
use coap_keepalive::proto::wire::signal::{self, Signal, SignalError};
use coap_keepalive::proto::wire::tcp::{Frame, FrameDecoder, FrameError};
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::KeepaliveConfig;
use coap_keepalive::NackReason;
use coap_keepalive::Response;

use super::{ms, Cursor};

/// Largest header before the token: Len/TKL, 4 extended length bytes, code.
const MAX_HEADER: usize = 6;

pub struct Setup<'a> {
    pub limit: u32,
    pub prepend_csm: bool,
    pub chunk_seed: u64,
    pub max_chunk: usize,
    pub rng_seed: u64,
    pub interval_ms: u64,
    pub stream: &'a [u8],
}

fn setup(data: &[u8]) -> Setup<'_> {
    let mut u = Cursor::new(data);
    let limit = match u.below(4) {
        0 => signal::BASE_MAX_MESSAGE_SIZE,
        1 => u.below(65) as u32,
        2 => u.below(70_001) as u32,
        _ => u32::MAX,
    };
    Setup {
        limit,
        prepend_csm: u.bool(),
        chunk_seed: u.u64(),
        max_chunk: 1 + u.below(64) as usize,
        rng_seed: u.u64(),
        interval_ms: u.below(5_001),
        stream: u.rest(),
    }
}

/// Runs one input: a few bytes of set-up, then the stream.
pub fn run(data: &[u8]) {
    check(&setup(data));
}

/// Decodes `setup.stream` whole and in chunks, checks every frame, and drives a session.
pub fn check(setup: &Setup<'_>) {
    let mut stream = Vec::new();
    if setup.prepend_csm {
        stream.extend(
            Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: false,
            }
            .encode(&[]),
        );
    }
    stream.extend_from_slice(setup.stream);
    let chunks = chunk(&stream, setup.chunk_seed, setup.max_chunk);

    let whole = decode(std::iter::once(stream.as_slice()), setup.limit);
    let pieces = decode(chunks.iter().copied(), setup.limit);
    assert_eq!(whole, pieces, "chunking changed the result");
    for frame in &whole.0 {
        check_frame(frame);
    }
    drive_session(setup, &chunks);
}

/// Cuts `bytes` into chunks of 1..=max bytes, the sizes drawn from `seed` (so mutating the
/// stream does not move the cuts).
fn chunk(bytes: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let mut rng = Rng::seeded(seed);
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = 1 + (rng.next_u64() as usize % max);
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

fn decode<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    limit: u32,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limit);
    let mut frames = Vec::new();
    for piece in chunks {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    assert!(decoder.is_failed());
                    assert_eq!(decoder.buffered(), 0, "a failed decoder holds nothing");
                    assert_eq!(
                        decoder.next_frame(),
                        Err(error.clone()),
                        "failure is sticky"
                    );
                    return (frames, Some(error));
                }
            }
        }
        let bound = (limit as usize).saturating_add(MAX_HEADER);
        assert!(
            decoder.buffered() <= bound,
            "holding {} bytes of an incomplete frame, limit {limit}",
            decoder.buffered()
        );
    }
    (frames, None)
}

fn check_frame(frame: &Frame) {
    assert!(frame.token.len() <= 8);
    let bytes = frame.encode();
    assert_eq!(frame.encoded_len(), bytes.len());
    let mut decoder = FrameDecoder::new(u32::MAX);
    decoder.push(&bytes);
    assert_eq!(
        decoder.next_frame().as_ref(),
        Ok(&Some(frame.clone())),
        "re-encoding"
    );
    assert_eq!(decoder.buffered(), 0);
    match Signal::parse(frame) {
        Ok(signal) => {
            assert!(frame.is_signal());
            // Every signalling option RFC 8323 defines is even: a signal that parsed carried
            // no odd (critical) option.
            assert!(
                frame.options.iter().all(|(n, _)| n % 2 == 0),
                "accepted a critical option: {frame:?}"
            );
            let again = signal.to_frame(&frame.token);
            assert_eq!(
                Signal::parse(&again),
                Ok(signal.clone()),
                "signal round trip"
            );
            assert_eq!(again.encoded_len(), again.encode().len());
        }
        Err(SignalError::NotSignal { .. }) => {
            // What the session does with a request or response frame must not panic either:
            // `drive_session` feeds it the same frames (and the crate's `prop_packet_round_trip`
            // converts arbitrary ones).
            assert!(!frame.is_signal());
        }
        Err(SignalError::UnknownCriticalOption { number, .. }) => {
            // RFC 7252 §5.4.6, applied to signalling options by RFC 8323 §5.2.
            assert_eq!(number % 2, 1, "only an odd option is critical");
            assert!(frame.options.iter().any(|(n, _)| *n == number));
        }
        Err(_) => assert!(frame.is_signal()),
    }
}

fn drive_session(setup: &Setup<'_>, chunks: &[&[u8]]) {
    let t0 = Instant::now();
    let config = KeepaliveConfig::default().with_interval(Some(ms(setup.interval_ms)));
    let limit = setup.limit.max(signal::BASE_MAX_MESSAGE_SIZE);
    let mut session = StreamSession::new(config, Rng::seeded(setup.rng_seed), t0, limit);
    session.set_input_timeout(ms(2_000));
    let our_csm = session.poll_transmit().expect("our CSM goes out at once");
    assert_eq!(our_csm.get(1), Some(&signal::CSM));
    let mut times = Rng::seeded(setup.chunk_seed ^ 0x5EED);
    let mut now = t0;
    let mut seen = Seen::default();
    for piece in chunks {
        now += ms(times.next_u64() % 1_500);
        if session.poll_timeout().is_some_and(|at| at <= now) {
            // A driver woken late: the deadline passed while the bytes were on their way.
            session.handle_timeout(now);
            seen.check_after_input(&mut session, limit);
        }
        // Input keeps coming after the end (a keepalive failure included): the session must
        // ignore it, whatever a driver does.
        session.handle_bytes(now, piece);
        seen.check_after_input(&mut session, limit);
    }
}

/// What the session reported so far.
#[derive(Default)]
struct Seen {
    established: bool,
    finished: bool,
    /// The Failed / Closed events seen (one at most).
    ends: Vec<ProtocolEvent>,
}

impl Seen {
    /// [`Seen::check_outputs`], then what holds after every input: one end at most, nothing
    /// scheduled after it, and no more buffered than a frame under the limit.
    fn check_after_input(&mut self, session: &mut StreamSession, limit: u32) {
        self.check_outputs(session);
        assert!(
            self.ends.len() <= 1,
            "the session ended twice: {:?}",
            self.ends
        );
        if self.finished {
            assert_eq!(
                session.poll_timeout(),
                None,
                "a finished session schedules nothing"
            );
        }
        assert!(session.buffered() <= (limit as usize).saturating_add(MAX_HEADER));
    }

    /// Drains the session, checks what came out, and answers the requests it handed up.
    fn check_outputs(&mut self, session: &mut StreamSession) {
        let transmits: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit()).collect();
        let events: Vec<ProtocolEvent> = std::iter::from_fn(|| session.poll_event()).collect();
        let was_finished = self.finished;
        self.finished = session.is_done();
        if was_finished {
            assert!(transmits.is_empty(), "sent {transmits:02x?} after the end");
            assert!(events.is_empty(), "reported {events:?} after the end");
            return;
        }
        let mut requests = Vec::new();
        for event in &events {
            match event {
                ProtocolEvent::Established => {
                    assert!(!self.established, "established twice");
                    self.established = true;
                }
                ProtocolEvent::Failed(reason) => {
                    self.ends.push(event.clone());
                    if *reason == NackReason::ProtocolError {
                        let abort = transmits.last().expect("an Abort before a protocol error");
                        let mut decoder = FrameDecoder::new(u32::MAX);
                        decoder.push(abort);
                        let frame = decoder.next_frame().unwrap().unwrap();
                        assert_eq!(frame.code, signal::ABORT);
                    }
                }
                ProtocolEvent::Closed => self.ends.push(event.clone()),
                ProtocolEvent::PeerPing(ping) => {
                    assert!(self.established, "a Ping before the CSM is answered");
                    session.answer_ping(ping);
                    let Some(answer) = session.poll_transmit() else {
                        assert!(session.is_done(), "a ping left unanswered");
                        continue;
                    };
                    let mut decoder = FrameDecoder::new(u32::MAX);
                    decoder.push(&answer);
                    let pong = decoder.next_frame().unwrap().unwrap();
                    assert_eq!(pong.code, signal::PONG);
                }
                ProtocolEvent::Request(request) => {
                    assert!(self.established, "a request before the CSM is handed up");
                    // RFC 7252 §5.4.1: one with an unrecognised critical option gets 4.02.
                    assert_eq!(
                        options::check_request(request.options()),
                        Ok(()),
                        "handed up a request the stack must refuse: {request:?}"
                    );
                    requests.push(request.clone());
                }
                _ => {}
            }
        }
        for request in requests {
            session.respond(&request, &Response::content_text("ok"));
            let answer = session.poll_transmit();
            assert_eq!(answer.is_some(), !session.is_done());
        }
    }
}
