//! What the fuzz targets share: a checker of the invariants every `DatagramSession` keeps,
//! whatever it is fed, and small helpers.

#![allow(dead_code)] // each target uses its own subset

pub mod machine;
pub mod tcp;
pub mod udp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::exchange::RequestError;
use coap_keepalive::proto::wire::options;
use coap_keepalive::proto::wire::udp::{classify, Datagram};
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::NackReason;
use coap_keepalive::Status;

/// Message types of RFC 7252 (the two bits after the version).
pub const CON: u8 = 0;
/// Non-confirmable.
pub const NON: u8 = 1;
/// Acknowledgement.
pub const ACK: u8 = 2;
/// Reset.
pub const RST: u8 = 3;

/// Reads fuzz input a field at a time; past its end every read yields zeros, so any input is a
/// complete one.
pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        let head = self.take(8);
        bytes[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(bytes)
    }

    /// A value below `bound` (> 0) from as few bytes as it needs.
    pub fn below(&mut self, bound: u64) -> u64 {
        let width = (64 - (bound - 1).leading_zeros()).div_ceil(8) as usize;
        let mut value = 0u64;
        for &b in self.take(width) {
            value = (value << 8) | u64::from(b);
        }
        value % bound
    }

    pub fn bool(&mut self) -> bool {
        self.take(1).first().is_some_and(|b| b & 1 == 1)
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The message type of an encoded datagram (it has at least the first byte).
pub fn message_type(bytes: &[u8]) -> Option<u8> {
    bytes.first().map(|b| (b >> 4) & 0x03)
}

/// The Message ID of an encoded datagram.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]))
}

/// The worst case below which no Confirmable message may be given up:
/// `ack_timeout * (2^(n+1) - 1)` for `n` retransmissions (the random factor only adds), less
/// the rounding of `Duration::mul_f64` (a nanosecond in the first timeout, doubled with it).
pub fn give_up_lower_bound(ack_timeout: Duration, max_retransmit: u32) -> Duration {
    let factor = (1u32 << (max_retransmit + 1)) - 1;
    (ack_timeout * factor).saturating_sub(Duration::from_nanos(u64::from(factor)))
}

/// Tracks what a `DatagramSession` sent and reported and asserts the invariants that hold by
/// design, after every input:
/// - once finished (failed or closed) it sends nothing and schedules nothing, and reports
///   nothing but the `SessionEnded` failure of a request made after the end;
/// - it fails at most once, and a failure or a close ends it (at most one of the two);
/// - no Confirmable message (ping, request, separate response) is sent more than
///   1 + MAX_RETRANSMIT times;
/// - an RST or ACK from the peer is never answered with an RST or ACK;
/// - no request carrying a critical option the stack does not recognise is handed up, and no
///   response carrying one is delivered (RFC 7252 §5.4.1);
/// - a `TooManyRetries` failure follows the full retransmission schedule of a message the peer
///   never acknowledged, no sooner than ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1) - 1) after its
///   first transmission.
pub struct DatagramChecker {
    pub ack_timeout: Duration,
    pub max_retransmit: u32,
    /// Confirmable Message IDs we sent: (transmissions, first sent at).
    pub confirmables: HashMap<u16, (u32, Instant)>,
    /// Message IDs the peer acknowledged or reset.
    pub answered: std::collections::HashSet<u16>,
    pub failures: u32,
    pub closes: u32,
    pub transmits: Vec<Vec<u8>>,
    pub events: Vec<ProtocolEvent>,
    /// Whether the session was finished after the previous input.
    finished: bool,
    /// The next input is an explicit `fail(reason)`: its reason proves nothing.
    pub external_failure: bool,
}

impl DatagramChecker {
    pub fn new(ack_timeout: Duration, max_retransmit: u32) -> Self {
        DatagramChecker {
            ack_timeout,
            max_retransmit,
            confirmables: HashMap::new(),
            answered: Default::default(),
            failures: 0,
            closes: 0,
            transmits: Vec::new(),
            events: Vec::new(),
            finished: false,
            external_failure: false,
        }
    }

    /// Records a datagram about to be fed to the session (before `handle_datagram`).
    pub fn incoming(&mut self, bytes: &[u8]) {
        if bytes.len() == 4 && bytes[0] >> 6 == 1 && bytes[1] == 0 {
            if let (Some(ACK | RST), Some(id)) = (message_type(bytes), message_id(bytes)) {
                self.answered.insert(id);
            }
        }
        if bytes.len() >= 4 && bytes[0] >> 6 == 1 && message_type(bytes) == Some(ACK) {
            // A piggybacked response acknowledges too (when it matches).
            if let Some(id) = message_id(bytes) {
                self.answered.insert(id);
            }
        }
    }

    /// Drains the session after one input given at `now` and checks every invariant.
    /// `incoming`: the datagram that input fed, if any.
    pub fn after(&mut self, session: &mut DatagramSession, now: Instant, incoming: Option<&[u8]>) {
        let was_finished = self.finished;
        self.finished = session.is_finished();
        self.transmits.clear();
        self.events.clear();
        while let Some(bytes) = session.poll_transmit() {
            self.transmits.push(bytes);
        }
        while let Some(event) = session.poll_event() {
            self.events.push(event);
        }
        if was_finished {
            assert!(
                self.transmits.is_empty(),
                "sent {:02x?} after finishing",
                self.transmits
            );
            // A request made after the end ends at once, typed; nothing else is reported.
            assert!(
                self.events.iter().all(is_session_ended),
                "reported {:?} after finishing",
                self.events
            );
        } else {
            assert!(
                !self.events.iter().any(is_session_ended),
                "SessionEnded before the session ended: {:?}",
                self.events
            );
        }
        if session.is_finished() {
            assert_eq!(
                session.poll_timeout(),
                None,
                "a finished session schedules nothing"
            );
        }
        let answer_to_answer = incoming.is_some_and(|b| {
            b.first().is_some_and(|first| first >> 6 == 1)
                && matches!(message_type(b), Some(ACK | RST))
        });
        for bytes in &self.transmits {
            assert!(bytes.len() >= 4, "short datagram sent: {bytes:02x?}");
            assert_eq!(bytes[0] >> 6, 1, "version 1");
            let kind = message_type(bytes).unwrap();
            let id = message_id(bytes).unwrap();
            if answer_to_answer {
                assert!(
                    kind == CON || kind == NON,
                    "answered an ACK/RST with {bytes:02x?}"
                );
            }
            if kind == CON {
                let entry = self.confirmables.entry(id).or_insert((0, now));
                entry.0 += 1;
                assert!(
                    entry.0 <= 1 + self.max_retransmit,
                    "MID {id:#06x} sent {} times, MAX_RETRANSMIT {}",
                    entry.0,
                    self.max_retransmit
                );
            }
        }
        check_option_rules(incoming, &self.events);
        for event in &self.events {
            match event {
                ProtocolEvent::Failed(reason) => {
                    self.failures += 1;
                    if *reason == NackReason::TooManyRetries && !self.external_failure {
                        self.check_give_up(now);
                    }
                }
                ProtocolEvent::Closed => self.closes += 1,
                _ => {}
            }
        }
        self.external_failure = false;
        assert!(
            self.failures + self.closes <= 1,
            "failed {} and closed {} times",
            self.failures,
            self.closes
        );
        if self.failures + self.closes == 1 {
            assert!(session.is_finished(), "failed or closed but not finished");
        }
    }

    /// Some unanswered Confirmable message went through its whole schedule, long enough ago.
    fn check_give_up(&self, now: Instant) {
        let bound = give_up_lower_bound(self.ack_timeout, self.max_retransmit);
        let given_up = self.confirmables.iter().any(|(id, (count, first))| {
            *count == 1 + self.max_retransmit
                && !self.answered.contains(id)
                && now.duration_since(*first) >= bound
        });
        assert!(
            given_up,
            "TooManyRetries without an unanswered message through its full schedule: {:?}",
            self.confirmables
        );
    }
}

/// RFC 7252 §5.4.1: a request handed up carries no unrecognised critical option (whatever
/// input led to it), and a response that carries one is not delivered.
pub fn check_option_rules(incoming: Option<&[u8]>, events: &[ProtocolEvent]) {
    for event in events {
        if let ProtocolEvent::Request(request) = event {
            assert_eq!(
                options::check_request(request.options()),
                Ok(()),
                "handed up a request the stack must refuse: {request:?}"
            );
        }
    }
    let Some(Ok(Datagram::Message(message))) = incoming.map(classify) else {
        return;
    };
    if Status::from_code(message.code()).is_some()
        && options::check_response(message.options()).is_err()
    {
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ProtocolEvent::Response { .. })),
            "delivered a response the stack must reject: {message:?}"
        );
    }
}

/// The typed end of a request made on a session that had already ended.
fn is_session_ended(event: &ProtocolEvent) -> bool {
    matches!(
        event,
        ProtocolEvent::RequestFailed {
            error: RequestError::SessionEnded,
            ..
        }
    )
}

/// Calls `handle_timeout(now)` the way a driver does — again while the deadline is not in the
/// future — and asserts that this settles within a few rounds (deadlines may be reported early,
/// lazily, but the machine never spins).
pub fn settle<S>(
    session: &mut S,
    now: Instant,
    poll_timeout: impl Fn(&S) -> Option<Instant>,
    mut handle_timeout: impl FnMut(&mut S, Instant),
    mut after_each: impl FnMut(&mut S),
) {
    for _ in 0..4 {
        match poll_timeout(session) {
            Some(at) if at <= now => {
                handle_timeout(session, now);
                after_each(session);
            }
            _ => return,
        }
    }
    panic!(
        "deadline still at or before now after 4 rounds: {:?}",
        poll_timeout(session).map(|at| now.saturating_duration_since(at))
    );
}
