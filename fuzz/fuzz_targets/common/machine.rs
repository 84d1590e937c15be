//! The model behind the `keepalive_machine` fuzz target (and the property tests in
//! `tests/properties.rs`): the sans-IO keepalive machine (`keepalive::Keepalive`, datagram and stream style) and the
//! datagram session around it (`protocol::datagram::DatagramSession`), driven by an arbitrary
//! sequence of events at arbitrary non-decreasing times (a base `Instant` plus fuzzed offsets).
//!
//! Invariants of the machine, which hold by design (see `Keepalive`'s docs and docs/ARCHITECTURE.md):
//! - at most one `Failed` event; once failed or closed nothing is sent or reported and
//!   `poll_timeout` is `None`; a closed machine never reports a failure;
//! - a retransmission repeats the outstanding ping's Message ID, at most MAX_RETRANSMIT times;
//! - a `Pong` answers an outstanding ping and its RTT is measured from its last transmission;
//! - a datagram ping counts as unanswered only after MAX_RETRANSMIT retransmissions, no sooner
//!   than ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1) - 1) after the first, and never when the peer was
//!   heard from after the ping went out (incoming traffic proves liveness); a stream ping after
//!   its pong timeout, likewise unheard;
//! - on any transport `TooManyRetries` comes only with the `max_unanswered`-th consecutive
//!   unanswered ping (a stream machine reports that one as `Unanswered` too, a datagram machine
//!   only the failure); below that the next ping goes out at once (over datagrams, unless a
//!   Confirmable request in flight stands in for it);
//! - a ping that the schedule (not `ping_now`) sends needs keepalive on, an established session
//!   and no request in flight;
//! - no stall: with keepalive on, established, no request in flight and not finished, a deadline
//!   is scheduled, no later than an interval after the last activity;
//! - deadlines may be reported early (lazily) but `handle_timeout` settles in a few rounds;
//! - the counters agree with what was sent and reported.
use std::time::{Duration, Instant};

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::exchange::RequestError;
use coap_keepalive::proto::keepalive::{Keepalive, KeepaliveEvent, PingStyle, PingTransmit};
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::wire::udp;
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::NackReason;
use coap_keepalive::Request;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};

use super::{give_up_lower_bound, message_id, message_type, ms, settle, DatagramChecker, CON};

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Input {
    pub machine: Machine,
    pub seed: u64,
    pub config: ConfigInput,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Machine {
    Datagram,
    Stream,
    Session,
}

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct ConfigInput {
    pub interval: Option<Interval>,
    pub jitter_percent: u8,
    pub ack_timeout_ms: u16,
    pub random_factor_percent: u8,
    pub max_retransmit: u8,
    pub pong_timeout_ms: Option<u32>,
    pub max_unanswered: u8,
}

/// An idle interval as the API takes it: milliseconds, or whole seconds
/// (`Session::set_keepalive(secs: u64)`, `-K SECS`).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Interval {
    Millis(u32),
    Secs(u64),
}

impl Interval {
    fn duration(self) -> Duration {
        match self {
            Interval::Millis(n) => ms(u64::from(n)),
            Interval::Secs(n) => Duration::from_secs(n),
        }
    }
}

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Time passes (milliseconds).
    Advance(u32),
    /// Time jumps to the next deadline, and the machine is woken as a driver would.
    Deadline,
    /// The machine is woken now, whether due or not.
    Timeout,
    Activity,
    MarkActive,
    Established,
    PeerPing,
    /// An RST / empty ACK: for the outstanding ping when `matching`, else for `other`.
    DatagramAnswer {
        matching: bool,
        other: u16,
        ack: bool,
    },
    /// A 7.03 Pong: the outstanding ping's token, an empty one, or these bytes.
    Pong {
        kind: u8,
        other: Vec<u8>,
    },
    SetInterval(Option<Interval>),
    SetRequestInFlight(bool),
    PingNow,
    Fail(u8),
    Close,
    /// Session mode: a request of ours (Confirmable or not), with a timeout in milliseconds.
    SendRequest {
        confirmable: bool,
        timeout_ms: u16,
    },
    /// Session mode: the peer answers our latest request, piggybacked on an ACK, with one more
    /// option of that number when given (an unrecognised critical one must keep the response
    /// from being delivered).
    AnswerRequest {
        option: Option<u16>,
    },
    /// Session mode: we give up our latest request.
    Cancel,
    /// Session mode: any datagram from the peer.
    Datagram(Vec<u8>),
}

fn reason(n: u8) -> NackReason {
    match n % 5 {
        0 => NackReason::TooManyRetries,
        1 => NackReason::NotDeliverable,
        2 => NackReason::Rst,
        3 => NackReason::TlsFailed,
        _ => NackReason::ProtocolError,
    }
}

fn config(input: &ConfigInput) -> KeepaliveConfig {
    let params = TransmissionParams::default()
        .with_ack_timeout(ms(u64::from(input.ack_timeout_ms.max(1))))
        .with_ack_random_factor(1.0 + f64::from(input.random_factor_percent) / 100.0)
        .with_max_retransmit(u32::from(input.max_retransmit % 21));
    let mut config = KeepaliveConfig::default()
        .with_interval(input.interval.map(Interval::duration))
        .with_jitter(f64::from(input.jitter_percent.min(100)) / 100.0)
        .with_transmission(params)
        .with_max_unanswered(u32::from(input.max_unanswered % 5).max(1));
    if let Some(timeout) = input.pong_timeout_ms {
        config = config.with_pong_timeout(ms(u64::from(timeout.max(1))));
    }
    config
        .validate()
        .expect("the fuzzer only builds valid configurations");
    config
}

/// Runs one input and checks every invariant; panics on a violation.
pub fn run(input: &Input) {
    let config = config(&input.config);
    match input.machine {
        Machine::Datagram => run_machine(PingStyle::Datagram, config, input.seed, &input.ops),
        Machine::Stream => run_machine(PingStyle::Stream, config, input.seed, &input.ops),
        Machine::Session => run_session(config, input.seed, &input.ops),
    }
}

/// The harness's model of the machine: what it was told and what it sent.
struct Model {
    style: PingStyle,
    config: KeepaliveConfig,
    now: Instant,
    /// The last instant something was received (or reported active).
    last_activity: Instant,
    /// An activity input after the outstanding ping's first transmission.
    heard_since_ping: bool,
    established: bool,
    request_in_flight: bool,
    /// The outstanding ping: its id, first and last transmission, retransmissions.
    outstanding: Option<Outstanding>,
    /// Consecutive `Unanswered` events (any transport).
    unanswered: u32,
    finished: bool,
    closed: bool,
    failures: u64,
    pings: u64,
    retransmissions: u64,
    pongs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    transmit: PingTransmit,
    first: Instant,
    last: Instant,
    retransmits: u32,
}

impl Model {
    /// Whether the outstanding ping must be dropped quietly rather than count as unanswered:
    /// the peer was heard from since it went out, and keepalive is on (with it off every ping
    /// is the application's question and runs its whole schedule).
    fn spared_by_traffic(&self) -> bool {
        self.heard_since_ping && self.config.interval.is_some()
    }

    fn activity(&mut self) {
        if !self.finished {
            self.last_activity = self.now;
            // Heard from since the ping went out: strictly after it (a receipt at the very
            // instant it was sent does not count). Whether that spares the ping is decided
            // when it expires (`spared_by_traffic`), by the interval in force then.
            if self
                .outstanding
                .as_ref()
                .is_some_and(|out| self.now > out.first)
            {
                self.heard_since_ping = true;
            }
            self.unanswered = 0;
        }
    }

    /// Drains `k` after one input and checks every invariant. `scheduled`: the input was a
    /// timer (a new ping from it came from the schedule, not from `ping_now`).
    fn after(&mut self, k: &mut Keepalive, scheduled: bool) {
        let was_finished = self.finished;
        let was_awaiting = self.outstanding.is_some();
        let transmits: Vec<PingTransmit> = std::iter::from_fn(|| k.poll_transmit()).collect();
        let events: Vec<KeepaliveEvent> = std::iter::from_fn(|| k.poll_event()).collect();
        if was_finished {
            assert!(
                transmits.is_empty() && events.is_empty(),
                "output after the end"
            );
        }
        // Events first: a Pong or an Unanswered precedes the ping that follows it.
        for event in &events {
            match *event {
                KeepaliveEvent::Pong { rtt } => {
                    let out = self.outstanding.take().expect("a pong without a ping out");
                    assert_eq!(rtt, self.now - out.last, "RTT from the last transmission");
                    self.pongs += 1;
                    self.heard_since_ping = false;
                    // The answer is activity too.
                    self.last_activity = self.now;
                    self.unanswered = 0;
                }
                KeepaliveEvent::Unanswered { count } => {
                    assert!(self.outstanding.is_some(), "unanswered without a ping");
                    assert!(
                        !self.spared_by_traffic(),
                        "the peer was heard: not unanswered"
                    );
                    if self.style == PingStyle::Datagram {
                        self.check_schedule_exhausted();
                    }
                    self.outstanding = None;
                    self.unanswered += 1;
                    assert_eq!(count, self.unanswered);
                    if self.style == PingStyle::Datagram {
                        // The max_unanswered-th is reported as the failure alone.
                        assert!(count < self.config.max_unanswered, "{count} unanswered");
                    }
                }
                KeepaliveEvent::Failed(reason) => {
                    self.failures += 1;
                    assert_eq!(self.failures, 1, "failed twice");
                    assert!(!self.closed, "failed after close");
                    self.finished = true;
                    if reason == NackReason::TooManyRetries && scheduled {
                        self.check_give_up();
                    }
                    self.outstanding = None;
                }
            }
        }
        for transmit in &transmits {
            match (*transmit, self.style) {
                (
                    PingTransmit::Datagram {
                        message_id,
                        retransmission: true,
                    },
                    PingStyle::Datagram,
                ) => {
                    let out = self
                        .outstanding
                        .as_mut()
                        .expect("retransmission of nothing");
                    let PingTransmit::Datagram { message_id: id, .. } = out.transmit else {
                        unreachable!()
                    };
                    assert_eq!(message_id, id, "a retransmission keeps the Message ID");
                    out.retransmits += 1;
                    out.last = self.now;
                    assert!(out.retransmits <= self.config.transmission.max_retransmit);
                    self.retransmissions += 1;
                }
                (
                    PingTransmit::Datagram {
                        retransmission: false,
                        ..
                    },
                    PingStyle::Datagram,
                )
                | (PingTransmit::Stream { .. }, PingStyle::Stream) => {
                    // The ping that follows an unanswered one at once.
                    let follow_up = self.unanswered > 0 && was_awaiting;
                    if follow_up && self.style == PingStyle::Datagram {
                        assert!(
                            !self.request_in_flight,
                            "a follow-up ping beside a request in flight"
                        );
                    }
                    if scheduled && !was_awaiting && !follow_up {
                        assert!(self.config.interval.is_some(), "a ping with keepalive off");
                        assert!(self.established, "a ping before the session is established");
                        assert!(
                            !self.request_in_flight,
                            "a ping while a request is the probe"
                        );
                    }
                    assert!(self.outstanding.is_none(), "two pings out at once");
                    self.outstanding = Some(Outstanding {
                        transmit: *transmit,
                        first: self.now,
                        last: self.now,
                        retransmits: 0,
                    });
                    self.heard_since_ping = false;
                    self.pings += 1;
                }
                other => panic!("wrong ping style: {other:?}"),
            }
        }
        // The machine drops a probe quietly when the peer was heard from since it went out.
        if !k.is_awaiting_pong() {
            self.outstanding = None;
            self.heard_since_ping = false;
        }
        assert_eq!(k.is_awaiting_pong(), self.outstanding.is_some());
        assert_eq!(k.is_finished(), self.finished);
        let stats = k.stats();
        assert_eq!(stats.pings_sent, self.pings);
        assert_eq!(stats.retransmissions, self.retransmissions);
        assert_eq!(stats.pongs, self.pongs);
        assert_eq!(stats.failures, self.failures);
        if self.finished {
            assert_eq!(
                k.poll_timeout(),
                None,
                "a finished machine schedules nothing"
            );
        } else if self.outstanding.is_some() {
            assert!(k.poll_timeout().is_some(), "a ping out without a deadline");
        } else if let Some(interval) = self.config.interval {
            if self.established && !self.request_in_flight {
                let due = k
                    .poll_timeout()
                    .expect("keepalive on but nothing scheduled");
                let latest = self.last_activity.checked_add(interval);
                assert!(
                    latest.is_none_or(|latest| due <= latest),
                    "ping due later than an interval after the last activity"
                );
            }
        }
    }

    fn check_give_up(&self) {
        match self.style {
            PingStyle::Datagram => {
                assert!(!self.spared_by_traffic(), "gave up on a peer heard from");
                self.check_schedule_exhausted();
                assert_eq!(
                    self.unanswered + 1,
                    self.config.max_unanswered,
                    "gave up early"
                );
            }
            PingStyle::Stream => {
                assert_eq!(self.unanswered, self.config.max_unanswered, "gave up early");
            }
        }
    }

    /// The outstanding datagram ping went through its whole retransmission schedule.
    fn check_schedule_exhausted(&self) {
        let out = self.outstanding.expect("gave up on no ping");
        let params = &self.config.transmission;
        assert_eq!(out.retransmits, params.max_retransmit, "gave up early");
        let bound = give_up_lower_bound(params.ack_timeout, params.max_retransmit);
        assert!(
            self.now - out.first >= bound,
            "gave up after {:?} < {bound:?}",
            self.now - out.first
        );
    }
}

fn run_machine(style: PingStyle, config: KeepaliveConfig, seed: u64, ops: &[Op]) {
    let t0 = Instant::now();
    let mut k = Keepalive::new(style, config, Rng::seeded(seed), t0);
    let mut m = Model {
        style,
        config,
        now: t0,
        last_activity: t0,
        heard_since_ping: false,
        established: style == PingStyle::Datagram,
        request_in_flight: false,
        outstanding: None,
        unanswered: 0,
        finished: false,
        closed: false,
        failures: 0,
        pings: 0,
        retransmissions: 0,
        pongs: 0,
    };
    m.after(&mut k, false);
    for op in ops {
        let mut scheduled = false;
        match op {
            Op::Advance(n) => m.now += ms(u64::from(*n)),
            Op::Deadline => {
                if let Some(at) = k.poll_timeout() {
                    m.now = m.now.max(at);
                }
                let now = m.now;
                settle(
                    &mut k,
                    now,
                    Keepalive::poll_timeout,
                    Keepalive::handle_timeout,
                    |k| m.after(k, true),
                );
                continue;
            }
            Op::Timeout => {
                k.handle_timeout(m.now);
                scheduled = true;
            }
            Op::Activity | Op::Datagram(_) => {
                k.handle_activity(m.now);
                m.activity();
            }
            Op::MarkActive => {
                k.mark_active(m.now);
                m.activity();
            }
            Op::Established => {
                k.handle_established(m.now);
                m.activity();
                m.established = true;
            }
            Op::PeerPing => {
                k.note_peer_ping(m.now);
                m.activity();
            }
            Op::DatagramAnswer {
                matching, other, ..
            } => {
                let id = match m.outstanding.map(|o| o.transmit) {
                    Some(PingTransmit::Datagram { message_id, .. }) if *matching => message_id,
                    _ => *other,
                };
                let matched = k.handle_datagram_answer(m.now, id);
                let expected = matches!(m.outstanding.map(|o| o.transmit),
                    Some(PingTransmit::Datagram { message_id, .. }) if message_id == id);
                assert_eq!(matched, expected && !m.finished);
                if !matched {
                    m.activity();
                }
            }
            Op::Pong { kind, other } => {
                let token = match (kind % 3, m.outstanding.map(|o| o.transmit)) {
                    (0, Some(PingTransmit::Stream { token })) => token.to_vec(),
                    (1, _) => Vec::new(),
                    _ => other.clone(),
                };
                let matched = k.handle_pong(m.now, &token);
                let expected = matches!(m.outstanding.map(|o| o.transmit),
                    Some(PingTransmit::Stream { token: t }) if token.is_empty() || token == t);
                assert_eq!(matched, expected && !m.finished);
                if !matched {
                    m.activity();
                }
            }
            Op::SetInterval(interval) => {
                let interval = interval.map(Interval::duration);
                k.set_interval(interval);
                m.config.interval = interval.filter(|d| !d.is_zero());
            }
            Op::SetRequestInFlight(in_flight) => {
                k.set_request_in_flight(m.now, *in_flight);
                m.request_in_flight = *in_flight;
            }
            Op::PingNow => k.ping_now(m.now),
            Op::Fail(n) => {
                k.fail(reason(*n));
            }
            Op::Close => {
                k.close();
                if !m.finished {
                    m.finished = true;
                    m.closed = true;
                    m.outstanding = None;
                }
            }
            Op::SendRequest { .. } | Op::AnswerRequest { .. } | Op::Cancel => continue,
        }
        // A matched answer is activity too, recorded after the check of its Pong.
        let answer = matches!(op, Op::DatagramAnswer { .. } | Op::Pong { .. });
        m.after(&mut k, scheduled);
        if answer {
            m.activity();
        }
    }
}

fn run_session(config: KeepaliveConfig, seed: u64, ops: &[Op]) {
    let t0 = Instant::now();
    let params = config.transmission;
    let mut session = DatagramSession::new(config, Rng::seeded(seed), t0);
    let mut checker = DatagramChecker::new(params.ack_timeout, params.max_retransmit);
    let mut now = t0;
    let mut last_ping = None;
    // Our latest request: its token and the Message ID it went out with.
    let mut last_request: Option<(Vec<u8>, Option<u16>)> = None;
    let mut peer_id: u16 = 0;
    checker.after(&mut session, now, None);
    for op in ops {
        let mut incoming: Option<Vec<u8>> = None;
        // Every op is applied to a finished session too: an application-driven loop may call
        // anything at any time, and the checker asserts that nothing goes out then.
        let was_finished = session.is_finished();
        let mut requested = None;
        match op {
            Op::Advance(n) => now += ms(u64::from(*n)),
            Op::Deadline => {
                if let Some(at) = session.poll_timeout() {
                    now = now.max(at);
                }
                settle(
                    &mut session,
                    now,
                    DatagramSession::poll_timeout,
                    DatagramSession::handle_timeout,
                    |s| checker.after(s, now, None),
                );
            }
            Op::Timeout => session.handle_timeout(now),
            Op::Activity | Op::MarkActive | Op::Established => {
                session.keepalive_mut().mark_active(now)
            }
            Op::PeerPing => {
                peer_id = peer_id.wrapping_add(1);
                incoming = Some(udp::ping(peer_id).to_vec());
            }
            Op::DatagramAnswer {
                matching,
                other,
                ack,
            } => {
                let id = if *matching {
                    last_ping.unwrap_or(*other)
                } else {
                    *other
                };
                incoming = Some(
                    if *ack {
                        udp::empty_ack(id)
                    } else {
                        udp::reset(id)
                    }
                    .to_vec(),
                );
            }
            Op::Pong { .. } => {}
            Op::SetInterval(interval) => session
                .keepalive_mut()
                .set_interval(interval.map(Interval::duration)),
            Op::SetRequestInFlight(_) => {}
            Op::PingNow => session.ping_now(now),
            Op::Fail(n) => {
                checker.external_failure = true;
                session.fail(reason(*n));
            }
            Op::Close => session.close(),
            Op::SendRequest {
                confirmable,
                timeout_ms,
            } => {
                let mut request = Request::get("/x");
                if !confirmable {
                    request = request.non_confirmable();
                }
                let timeout = ms(u64::from(*timeout_ms));
                let token = session.send_request(now, &request, timeout);
                requested = Some(token.clone());
                last_request = Some((token, None));
            }
            Op::AnswerRequest { option } => {
                if let Some((token, Some(id))) = &last_request {
                    // 2.05 Content, text/plain, "hi", piggybacked.
                    let mut ack = coap_lite::Packet::new();
                    ack.header.code =
                        coap_lite::MessageClass::Response(coap_lite::ResponseType::Content);
                    ack.add_option(coap_lite::CoapOption::ContentFormat, vec![]);
                    ack.payload = b"hi".to_vec();
                    ack.header.set_type(coap_lite::MessageType::Acknowledgement);
                    ack.header.message_id = *id;
                    ack.set_token(token.clone());
                    if let Some(number) = option {
                        ack.add_option(coap_lite::CoapOption::from(*number), vec![0x0a]);
                    }
                    incoming = ack.to_bytes().ok();
                }
            }
            Op::Cancel => {
                if let Some((token, _)) = &last_request {
                    session.cancel(now, token);
                }
            }
            Op::Datagram(bytes) => incoming = Some(bytes.clone()),
        }
        if let Some(bytes) = &incoming {
            checker.incoming(bytes);
            session.handle_datagram(now, bytes);
        }
        checker.after(&mut session, now, incoming.as_deref());
        if let (true, Some(token)) = (was_finished, requested) {
            assert_eq!(
                checker.events,
                [ProtocolEvent::RequestFailed {
                    token,
                    error: RequestError::SessionEnded,
                }],
                "a request on an ended session ends at once, typed"
            );
        }
        for bytes in &checker.transmits {
            let (Some(kind), Some(id)) = (message_type(bytes), message_id(bytes)) else {
                continue;
            };
            if kind == CON && bytes.len() == 4 {
                last_ping = Some(id);
            } else if bytes.len() > 4 {
                // One of our requests goes out: remember its Message ID for the answer.
                if let Some((token, sent_id)) = last_request.as_mut() {
                    let tkl = usize::from(bytes[0] & 0x0F);
                    if bytes.get(4..4 + tkl) == Some(token.as_slice()) {
                        *sent_id = Some(id);
                    }
                }
            }
        }
        for event in &checker.events {
            if let ProtocolEvent::Pong { .. } = event {
                last_ping = None;
            }
        }
    }
}
