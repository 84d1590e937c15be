//! A virtual-time pair: two sans-IO protocol cores joined in memory by a link that can drop,
//! delay and reorder what crosses it, with time advanced by hand. Keepalive scenarios are
//! written here first: every instant is exact, nothing sleeps, and a scenario of minutes runs in
//! microseconds. Real sockets are for what sockets add (drivers, hostile bytes, interop).
//!
//! The pair plays both drivers: it feeds each core what arrives, fires its timers, carries its
//! transmissions over the link and records its events with their instants. As the real drivers
//! do, it has the core answer a peer's ping (`answer_ping`) unless that end was told to stay
//! silent ([`End::answer_pings`]).
//!
//! ```ignore
//! let mut pair = Pair::datagram(keepalive_every(1), KeepaliveConfig::default(), 7);
//! pair.link.delay = ms(10);
//! pair.run_for(secs(3));
//! assert_eq!(pair.a.pongs(), [(start + secs(1) + ms(20), ms(20)), ...]);
//! ```

use std::time::{Duration, Instant};

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::stream::StreamSession;
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::KeepaliveConfig;
use coap_keepalive::{NackReason, PeerPing};

/// Max-Message-Size both stream ends announce.
const STREAM_MAX_MESSAGE_SIZE: u32 = 65_536;

/// What the pair needs of a protocol core: bytes and time in, transmissions, events and the
/// next deadline out.
pub trait Core {
    /// What arrived from the peer (a datagram, or a chunk of the byte stream).
    fn receive(&mut self, now: Instant, bytes: &[u8]);
    /// Fires the timers due at `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The next thing to send.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// The next event.
    fn poll_event(&mut self) -> Option<ProtocolEvent>;
    /// When [`Core::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Queues the answer to the peer's ping (the ping handler's `Answer`).
    fn answer_ping(&mut self, ping: &PeerPing);
}

impl Core for DatagramSession {
    fn receive(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_datagram(now, bytes);
    }
    fn handle_timeout(&mut self, now: Instant) {
        DatagramSession::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        DatagramSession::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ProtocolEvent> {
        DatagramSession::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        DatagramSession::poll_timeout(self)
    }
    fn answer_ping(&mut self, ping: &PeerPing) {
        let _ = DatagramSession::answer_ping(self, ping);
    }
}

impl Core for StreamSession {
    fn receive(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_bytes(now, bytes);
    }
    fn handle_timeout(&mut self, now: Instant) {
        StreamSession::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        StreamSession::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ProtocolEvent> {
        StreamSession::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        StreamSession::poll_timeout(self)
    }
    fn answer_ping(&mut self, ping: &PeerPing) {
        let _ = StreamSession::answer_ping(self, ping);
    }
}

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first end (by convention the client).
    A,
    /// The second end (by convention the server).
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Decides which transmissions a [`Link`] loses: `(from, bytes) -> lost`.
pub type DropFilter = Box<dyn FnMut(Side, &[u8]) -> bool>;

/// The link between the ends. Every transmission is delivered after `delay` plus a uniform
/// random `0..=jitter` (a jitter wider than the gap between two transmissions reorders them),
/// unless the link is `down`, `loss` drops it, or `drop_if` says so. A stream pair must keep
/// `jitter` and `loss` at zero: TCP delivers in order or not at all (use `down` for a dead path).
pub struct Link {
    /// One-way delay of every transmission.
    pub delay: Duration,
    /// Extra random delay, 0 to this, per transmission.
    pub jitter: Duration,
    /// Probability (0.0 to 1.0) that a transmission is lost, each way.
    pub loss: f64,
    /// Everything is lost while this is set (a dead peer, a NAT that forgot the binding).
    pub down: bool,
    /// Drops the transmissions it returns true for: `(from, bytes)`.
    pub drop_if: Option<DropFilter>,
    rng: Rng,
}

impl Link {
    fn new(seed: u64) -> Link {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            down: false,
            drop_if: None,
            rng: Rng::seeded(seed),
        }
    }

    /// When a transmission sent at `now` arrives, or `None` if it is lost.
    fn carry(&mut self, now: Instant, from: Side, bytes: &[u8]) -> Option<Instant> {
        if self.down {
            return None;
        }
        if let Some(drop_if) = self.drop_if.as_mut() {
            if drop_if(from, bytes) {
                return None;
            }
        }
        if self.loss > 0.0 && self.rng.next_f64() < self.loss {
            return None;
        }
        let jitter = self.jitter.mul_f64(self.rng.next_f64());
        Some(now + self.delay + jitter)
    }
}

/// One end: its core and what the pair saw it do.
pub struct End<C> {
    /// The protocol core.
    pub core: C,
    /// Whether this end's "driver" answers the peer's pings (a ping handler's `Answer`).
    pub answer_pings: bool,
    /// Every event the core reported, with its instant.
    pub events: Vec<(Instant, ProtocolEvent)>,
    /// Every transmission the core (or its driver, for ping answers) made, with its instant.
    pub sent: Vec<(Instant, Vec<u8>)>,
}

impl<C> End<C> {
    fn new(core: C) -> End<C> {
        End {
            core,
            answer_pings: true,
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// The pongs this end got: when, and their round-trip times.
    pub fn pongs(&self) -> Vec<(Instant, Duration)> {
        self.events
            .iter()
            .filter_map(|(at, event)| match event {
                ProtocolEvent::Pong { rtt } => Some((*at, *rtt)),
                _ => None,
            })
            .collect()
    }

    /// The pings the peer sent this end, by arrival.
    pub fn pings_received(&self) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|(at, event)| matches!(event, ProtocolEvent::PeerPing(_)).then_some(*at))
            .collect()
    }

    /// When this end failed, and why.
    pub fn failure(&self) -> Option<(Instant, NackReason)> {
        self.events.iter().find_map(|(at, event)| match event {
            ProtocolEvent::Failed(reason) => Some((*at, *reason)),
            _ => None,
        })
    }

    /// When this end became established, if it did.
    pub fn established(&self) -> Option<Instant> {
        self.events
            .iter()
            .find_map(|(at, event)| matches!(event, ProtocolEvent::Established).then_some(*at))
    }
}

/// Something on its way across the link.
struct InFlight {
    arrives: Instant,
    /// Order of sending, which breaks ties between equal arrival instants.
    seq: u64,
    to: Side,
    bytes: Vec<u8>,
}

/// Two cores and the link between them, at a virtual instant.
pub struct Pair<A, B> {
    /// The virtual clock: where the pair has run to.
    pub now: Instant,
    /// When the pair was made (every scenario's time zero).
    pub start: Instant,
    /// The first end.
    pub a: End<A>,
    /// The second end.
    pub b: End<B>,
    /// The link between them.
    pub link: Link,
    in_flight: Vec<InFlight>,
    seq: u64,
    /// Whether the cores' first transmissions (a CSM) were put on the link: not before the
    /// first step, so that a scenario sets up the link first.
    started: bool,
}

impl Pair<DatagramSession, DatagramSession> {
    /// Two UDP / DTLS sessions with these keepalive settings; `seed` drives both cores' and the
    /// link's randomness, so a scenario replays exactly.
    pub fn datagram(a: KeepaliveConfig, b: KeepaliveConfig, seed: u64) -> Self {
        let start = Instant::now();
        let mut rng = Rng::seeded(seed);
        Pair::new(
            start,
            DatagramSession::new(a, rng.fork(), start),
            DatagramSession::new(b, rng.fork(), start),
            rng.next_u64(),
        )
    }
}

impl Pair<StreamSession, StreamSession> {
    /// Two TCP / TLS sessions whose connection opened at the pair's start (each queues its CSM).
    pub fn stream(a: KeepaliveConfig, b: KeepaliveConfig, seed: u64) -> Self {
        let start = Instant::now();
        let mut rng = Rng::seeded(seed);
        Pair::new(
            start,
            StreamSession::new(a, rng.fork(), start, STREAM_MAX_MESSAGE_SIZE),
            StreamSession::new(b, rng.fork(), start, STREAM_MAX_MESSAGE_SIZE),
            rng.next_u64(),
        )
    }
}

impl<A: Core, B: Core> Pair<A, B> {
    fn new(start: Instant, a: A, b: B, link_seed: u64) -> Self {
        Pair {
            now: start,
            start,
            a: End::new(a),
            b: End::new(b),
            link: Link::new(link_seed),
            in_flight: Vec::new(),
            seq: 0,
            started: false,
        }
    }

    fn start_once(&mut self) {
        if !self.started {
            self.started = true;
            self.flush();
        }
    }

    /// The instant `offset` after the pair's start.
    pub fn at(&self, offset: Duration) -> Instant {
        self.start + offset
    }

    /// The next instant anything happens: a delivery or either core's deadline.
    pub fn next_instant(&self) -> Option<Instant> {
        let delivery = self.in_flight.iter().map(|f| f.arrives).min();
        [
            delivery,
            self.a.core.poll_timeout(),
            self.b.core.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs to the next instant anything happens and handles everything due then; false when
    /// nothing is scheduled at all.
    pub fn step(&mut self) -> bool {
        self.start_once();
        let Some(next) = self.next_instant() else {
            return false;
        };
        self.now = self.now.max(next);
        self.deliver_due();
        let now = self.now;
        if self.a.core.poll_timeout().is_some_and(|t| t <= now) {
            self.a.core.handle_timeout(now);
        }
        if self.b.core.poll_timeout().is_some_and(|t| t <= now) {
            self.b.core.handle_timeout(now);
        }
        self.flush();
        true
    }

    /// Runs until `until`, handling everything due up to and including it.
    pub fn run_until(&mut self, until: Instant) {
        self.start_once();
        while self.next_instant().is_some_and(|next| next <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until `done` holds (checked after every step) or `limit` of virtual time passed;
    /// returns whether it held.
    pub fn run_until_that(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        self.start_once();
        let until = self.now + limit;
        while !done(self) {
            match self.next_instant() {
                Some(next) if next <= until => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(until);
                    return done(self);
                }
            }
        }
        true
    }

    fn deliver_due(&mut self) {
        loop {
            let now = self.now;
            let due = self
                .in_flight
                .iter()
                .enumerate()
                .filter(|(_, f)| f.arrives <= now)
                .min_by_key(|(_, f)| (f.arrives, f.seq))
                .map(|(index, _)| index);
            let Some(index) = due else { break };
            let flight = self.in_flight.swap_remove(index);
            match flight.to {
                Side::A => self.a.core.receive(now, &flight.bytes),
                Side::B => self.b.core.receive(now, &flight.bytes),
            }
            self.flush();
        }
    }

    /// Moves every transmission onto the link and every event into its end's record, answering
    /// pings as a driver would, until neither core has anything more to say.
    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            for side in [Side::A, Side::B] {
                let now = self.now;
                let transmits = match side {
                    Side::A => drain(&mut self.a, now),
                    Side::B => drain(&mut self.b, now),
                };
                progressed |= !transmits.is_empty();
                for bytes in transmits {
                    self.send(side, bytes);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn send(&mut self, from: Side, bytes: Vec<u8>) {
        let now = self.now;
        match from {
            Side::A => self.a.sent.push((now, bytes.clone())),
            Side::B => self.b.sent.push((now, bytes.clone())),
        }
        if let Some(arrives) = self.link.carry(now, from, &bytes) {
            self.seq += 1;
            self.in_flight.push(InFlight {
                arrives,
                seq: self.seq,
                to: from.other(),
                bytes,
            });
        }
    }
}

/// One end's pending transmissions, its ping answers among them (queued by the core when the
/// end's "driver" answers the events it reported); the events are recorded.
fn drain<C: Core>(end: &mut End<C>, now: Instant) -> Vec<Vec<u8>> {
    let mut transmits = Vec::new();
    loop {
        while let Some(bytes) = end.core.poll_transmit() {
            transmits.push(bytes);
        }
        let Some(event) = end.core.poll_event() else {
            return transmits;
        };
        if let ProtocolEvent::PeerPing(ping) = &event {
            if end.answer_pings {
                end.core.answer_ping(ping);
            }
        }
        end.events.push((now, event));
    }
}

/// A keepalive configuration pinging after `secs` idle seconds, with the RFC 7252 transmission
/// parameters but an ACK random factor of 1.0, so that retransmission instants are exact.
pub fn keepalive_every(secs: u64) -> KeepaliveConfig {
    let mut config = KeepaliveConfig::default().with_interval_secs(secs);
    config.transmission = config.transmission.with_ack_random_factor(1.0);
    config
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
