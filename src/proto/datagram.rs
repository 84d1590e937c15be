//! One UDP or DTLS session: RFC 7252 messages in, answers, pings, requests and notifications out.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, MessageType, Packet};

use crate::proto::blockwise::{
    self, config_or_default as block_config, Blockwise, BlockwiseConfig, ClientStep, Limits,
    ServerStep,
};
use crate::proto::config::{IcmpPolicy, KeepaliveConfig};
use crate::proto::error::NackReason;
use crate::proto::exchange::{Exchanges, Notified, Pending, PendingKind, RequestError, Retransmit};
use crate::proto::keepalive::{Keepalive, Outbox, PingStyle};
use crate::proto::lazy_state::{LazyState, Transient};
use crate::proto::message::{Request, Response};
use crate::proto::rng::Rng;
use crate::proto::wire::options::{self, OptionProblem};
use crate::proto::wire::udp::{self, Datagram};
use crate::proto::PeerPing;
use crate::proto::{
    is_unknown_method, is_unknown_response, method_not_allowed, option_rejection, IncomingRequest,
    ProtocolEvent, QueuedEvent,
};

/// Message IDs of received requests remembered per session for deduplication.
const DEDUP_CAPACITY: usize = 64;
/// Notifications whose Message ID is remembered, so that an RST to one cancels its observation.
const NOTIFICATION_MEMORY: usize = 8;

/// The sans-IO protocol state of one datagram session.
#[derive(Debug)]
pub struct DatagramSession {
    keepalive: Keepalive,
    /// Requests both ways and notifications: allocated by the first one, dropped by a timeout once
    /// nothing is pending, queued, observed or remembered (the IDs of the last notifications sent
    /// are remembered for good, so a server that notified keeps it).
    requests: Requests,
    /// Forget the session after this long without hearing from the peer, when keepalive is off.
    /// In milliseconds (8 bytes, not an `Option<Duration>`'s 16).
    idle_timeout_ms: Option<NonZeroU64>,
    /// Block sizes and limits (RFC 7959); `None`: the defaults.
    blockwise: Option<Arc<BlockwiseConfig>>,
    /// The datagrams to send and the events to report: usually empty or one item each, held
    /// inline, not in a buffer per session. A datagram is held as a boxed slice (two words, a
    /// `Vec`'s three) and handed out as the `Vec` it was; its spare capacity, if any, is given
    /// back when it is queued (the pings and RSTs of idle sessions have none). The inline event
    /// is a [`QueuedEvent`] (16 bytes, a `ProtocolEvent`'s 40).
    outbox: Outbox<Box<[u8]>, ProtocolEvent, QueuedEvent>,
}

/// The request / response state of a session. Most sessions only ping, so it lives behind
/// [`Requests`], which costs one word until a request or a notification needs it.
#[derive(Debug, Default)]
struct RequestState {
    exchanges: Exchanges,
    /// Confirmable requests waiting for NSTART, with their tokens.
    queued: VecDeque<(Vec<u8>, Packet)>,
    dedup: Dedup,
    notifications: VecDeque<(u16, Vec<u8>)>,
    /// Bodies moving in blocks, both roles.
    blockwise: Blockwise,
    /// This session serves an observation of ours (it must not expire while idle). Only a
    /// session that answered a request has it, so it is kept here, not in every session.
    observed: bool,
}

impl Transient for RequestState {
    /// Nothing pending, queued, remembered or observed: the state can be dropped.
    fn is_empty(&self) -> bool {
        self.exchanges.pending.is_empty()
            && self.exchanges.observations.is_empty()
            && self.queued.is_empty()
            && self.dedup.order.is_empty()
            && self.notifications.is_empty()
            && self.blockwise.is_empty()
            && !self.observed
    }

    fn empty() -> &'static Self {
        static EMPTY: std::sync::OnceLock<RequestState> = std::sync::OnceLock::new();
        EMPTY.get_or_init(RequestState::default)
    }
}

/// The request state, allocated by the first request or notification (see [`LazyState`]).
type Requests = LazyState<RequestState>;

/// Received Confirmable / Non-confirmable requests by Message ID, with the answer sent, so a
/// duplicate is answered from here instead of being processed again (RFC 7252 §4.5).
#[derive(Debug, Default)]
struct Dedup {
    entries: HashMap<u16, Option<Vec<u8>>>,
    order: VecDeque<(Instant, u16)>,
}

impl Dedup {
    /// Records a new Message ID; returns the remembered answer state when it is a duplicate.
    fn check(
        &mut self,
        now: Instant,
        lifetime: Duration,
        message_id: u16,
    ) -> Option<Option<&[u8]>> {
        self.expire(now, lifetime, DEDUP_CAPACITY - 1);
        if self.entries.contains_key(&message_id) {
            return self.entries.get(&message_id).map(|a| a.as_deref());
        }
        self.entries.insert(message_id, None);
        self.order.push_back((now, message_id));
        None
    }

    /// Forgets the entries older than `lifetime`, and the oldest beyond `keep`.
    fn expire(&mut self, now: Instant, lifetime: Duration, keep: usize) {
        while let Some(&(at, id)) = self.order.front() {
            if at + lifetime > now && self.order.len() <= keep {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&id);
        }
    }

    fn store(&mut self, message_id: u16, answer: &[u8]) {
        if let Some(slot) = self.entries.get_mut(&message_id) {
            *slot = Some(answer.to_vec());
        }
    }
}

/// What an endpoint does with a datagram from a peer it has no session with: the decision
/// [`DatagramSession::screen`] makes, so that only a peer that sent CoAP gets a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stranger {
    /// A well-formed Confirmable or Non-confirmable request, or an empty CON (a ping): open a
    /// session for the peer and give it the datagram with [`DatagramSession::handle_first`].
    Open(FirstDatagram),
    /// Send this RST and open no session: a CON whose header parsed but that has a format error
    /// (RFC 7252 §4.2), a CON / NON response, which answers nothing of ours, or an empty NON.
    Reject {
        /// The RST, echoing the datagram's Message ID.
        rst: [u8; 4],
        /// Why, for logs.
        why: StrangerReason,
    },
    /// Drop it silently and open no session: not CoAP at all (too short, unknown version), a NON
    /// with a format error (RFC 7252 §4.3 lets it be ignored), or an ACK or RST, which are never
    /// answered and answer nothing of ours.
    Ignore {
        /// Why, for logs.
        why: StrangerReason,
    },
}

/// Why a stranger's datagram opens no session. It is formatted only when it is logged: a flood
/// of junk costs no allocation per datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StrangerReason {
    /// Not a well-formed CoAP message.
    #[error("datagram from a stranger: {0}")]
    Malformed(udp::DatagramError),
    /// An ACK or RST: never answered, and it answers nothing of ours.
    #[error("ACK or RST from a stranger answers nothing")]
    AckOrReset,
    /// An empty NON, which RFC 7252 §4.1 forbids: answered with an RST as a ping is (libcoap
    /// pings that way), but it is no message and opens no session.
    #[error("empty NON from a stranger")]
    EmptyNon,
    /// A CON or NON response: it matches no request of ours.
    #[error("response from a stranger matches no request")]
    UnmatchedResponse,
    /// A code with no meaning in a UDP message of its type (a signalling code, a request in
    /// an ACK, ...).
    #[error("unexpected code {}.{:02} from a stranger", code >> 5, code & 0x1f)]
    UnexpectedCode {
        /// The code byte.
        code: u8,
    },
}

/// A datagram [`DatagramSession::screen`] found well-formed, already classified, for the session
/// it opens (so that it is not parsed twice).
#[derive(Debug)]
pub struct FirstDatagram(Datagram);

impl DatagramSession {
    /// Decides what a datagram from a peer without a session gets (RFC 7252 §4.2, §4.3): a
    /// session only for a well-formed CON or NON request or an empty CON (a ping); an RST for a
    /// rejected CON, an empty NON and a response that answers nothing; nothing for everything
    /// else. The sessions' hot path (a known peer's datagram) never comes here.
    pub fn screen(bytes: &[u8]) -> Stranger {
        let datagram = match udp::classify(bytes) {
            Ok(datagram) => datagram,
            Err(error) => {
                return match error.rejection() {
                    Some(rst) => Stranger::Reject {
                        rst,
                        why: StrangerReason::Malformed(error),
                    },
                    None => Stranger::Ignore {
                        why: StrangerReason::Malformed(error),
                    },
                };
            }
        };
        let packet = match &datagram {
            Datagram::Ping { .. } => return Stranger::Open(FirstDatagram(datagram)),
            Datagram::EmptyNon { message_id } => {
                return Stranger::Reject {
                    rst: udp::reset(*message_id),
                    why: StrangerReason::EmptyNon,
                }
            }
            Datagram::EmptyAck { .. } | Datagram::Reset { .. } => {
                return Stranger::Ignore {
                    why: StrangerReason::AckOrReset,
                }
            }
            Datagram::Message(message) => message.packet(),
        };
        let message_type = packet.header.get_type();
        let incoming = matches!(
            message_type,
            MessageType::Confirmable | MessageType::NonConfirmable
        );
        let unexpected = StrangerReason::UnexpectedCode {
            code: u8::from(packet.header.code),
        };
        match packet.header.code {
            MessageClass::Request(_) if incoming => Stranger::Open(FirstDatagram(datagram)),
            // A request with a method we do not know: a session answers it 4.05 (§5.8).
            MessageClass::Reserved(code) if incoming && is_unknown_method(code) => {
                Stranger::Open(FirstDatagram(datagram))
            }
            MessageClass::Response(_) if incoming => Stranger::Reject {
                rst: udp::reset(packet.header.message_id),
                why: StrangerReason::UnmatchedResponse,
            },
            _ if message_type == MessageType::Confirmable => Stranger::Reject {
                rst: udp::reset(packet.header.message_id),
                why: unexpected,
            },
            _ => Stranger::Ignore { why: unexpected },
        }
    }

    /// A session that starts at `now` (datagram sessions are established at once).
    pub fn new(config: impl Into<Arc<KeepaliveConfig>>, rng: Rng, now: Instant) -> Self {
        DatagramSession {
            keepalive: Keepalive::new(PingStyle::Datagram, config, rng, now),
            requests: Requests::default(),
            idle_timeout_ms: None,
            blockwise: None,
            outbox: Outbox::default(),
        }
    }

    /// Forgets the session (a graceful close, no nack) once the peer has been silent this long
    /// while keepalive is off and nothing is pending or observed. Off by default; servers set it.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        // Rounded up to whole milliseconds (at least one).
        self.idle_timeout_ms = timeout.map(|t| {
            let ms = t
                .as_nanos()
                .div_ceil(1_000_000)
                .clamp(1, u128::from(u64::MAX));
            NonZeroU64::new(ms as u64).unwrap_or(NonZeroU64::MIN)
        });
    }

    /// Sets the block-wise settings (block size, maximum body size, the memory budget shared
    /// with the endpoint's other sessions). Default [`BlockwiseConfig::default`].
    pub fn set_blockwise(&mut self, config: Arc<BlockwiseConfig>) {
        self.blockwise = Some(config);
    }

    /// True once the peer showed it is real: heard from twice, or answered one of our pings.
    /// Sessions that are not are the first to be evicted from a full table.
    pub fn is_proven(&self) -> bool {
        self.keepalive.messages_counted() >= 2 || self.keepalive.stats().pongs > 0
    }

    fn expiry(&self) -> Option<Instant> {
        let timeout = Duration::from_millis(self.idle_timeout_ms?.get());
        let idle_allowed = self.keepalive.config().interval.is_none()
            && !self.requests.observed
            && self.requests.exchanges.pending.is_empty()
            && self.requests.exchanges.observations.is_empty();
        idle_allowed.then(|| self.keepalive.last_activity() + timeout)
    }

    /// The keepalive machine (read-only).
    pub fn keepalive(&self) -> &Keepalive {
        &self.keepalive
    }

    /// The keepalive machine, for commands (interval, `mark_active`, `ping_now`).
    pub fn keepalive_mut(&mut self) -> &mut Keepalive {
        &mut self.keepalive
    }

    /// Requests of ours still waiting for a response (a shutdown lets them finish).
    pub fn pending_requests(&self) -> usize {
        self.requests.exchanges.pending.len()
    }

    /// Observations of ours still receiving notifications.
    pub fn observations(&self) -> usize {
        self.requests.exchanges.observations.len()
    }

    /// One datagram from the peer.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if self.keepalive.is_finished() {
            return;
        }
        self.handle_classified(now, udp::classify(bytes));
    }

    /// The datagram that opened this session ([`Stranger::Open`]).
    pub fn handle_first(&mut self, now: Instant, first: FirstDatagram) {
        if self.keepalive.is_finished() {
            return;
        }
        self.handle_classified(now, Ok(first.0));
    }

    fn handle_classified(
        &mut self,
        now: Instant,
        classified: Result<Datagram, udp::DatagramError>,
    ) {
        if classified.is_ok() {
            // Only well-formed messages count towards proving the peer real.
            self.keepalive.count_message();
        }
        match classified {
            Err(error) => {
                if let Some(rst) = error.rejection() {
                    // A well-formed header from the peer still shows it is there.
                    self.keepalive.handle_activity(now);
                    self.outbox.push_transmit(rst.to_vec());
                }
                self.outbox
                    .push_event(ProtocolEvent::Rejected(format!("datagram: {error}")));
            }
            Ok(Datagram::Ping { message_id }) | Ok(Datagram::EmptyNon { message_id }) => {
                self.keepalive.note_peer_ping(now);
                self.outbox.push_event(QueuedEvent::PeerPing { message_id });
            }
            Ok(Datagram::EmptyAck { message_id }) => {
                // Never answered (RFC 7252 §4.2).
                if !self.handle_ack(now, message_id) {
                    self.keepalive.handle_datagram_answer(now, message_id);
                }
            }
            Ok(Datagram::Reset { message_id }) => {
                // Never answered (RFC 7252 §4.3).
                if !self.handle_reset(now, message_id) {
                    self.keepalive.handle_datagram_answer(now, message_id);
                }
            }
            Ok(Datagram::Message(message)) => {
                let packet = message.into_packet();
                self.keepalive.handle_activity(now);
                if !self.answers_our_ping(now, &packet) {
                    self.handle_message(now, packet);
                }
            }
        }
        self.pump();
    }

    /// An ACK with our outstanding ping's Message ID answers the ping whatever it carries: it
    /// acknowledges that CON (RFC 7252 §4.2), and node-coap answers an empty CON with a
    /// piggybacked 2.05 (`60 45 MM MM ...`). A request of ours with that ID takes precedence.
    fn answers_our_ping(&mut self, now: Instant, packet: &Packet) -> bool {
        let message_id = packet.header.message_id;
        packet.header.get_type() == MessageType::Acknowledgement
            && self.requests.exchanges.by_message_id(message_id).is_none()
            && self.keepalive.handle_datagram_answer(now, message_id)
    }

    /// An empty ACK: acknowledges one of our Confirmable messages, or our ping.
    fn handle_ack(&mut self, now: Instant, message_id: u16) -> bool {
        let Some(index) = self.requests.exchanges.by_message_id(message_id) else {
            return false;
        };
        self.keepalive.handle_activity(now);
        let pending = &mut self.requests.exchanges.pending[index];
        pending.retransmit = None;
        pending.acknowledged = true;
        if pending.kind == PendingKind::SeparateResponse {
            self.requests.exchanges.pending.remove(index);
        }
        self.confirmable_done(now);
        true
    }

    /// An RST: rejects one of our messages (request, separate response, notification), or
    /// answers our ping.
    fn handle_reset(&mut self, now: Instant, message_id: u16) -> bool {
        if let Some(at) = self
            .requests
            .notifications
            .iter()
            .position(|(id, _)| *id == message_id)
        {
            self.keepalive.handle_activity(now);
            if let Some((_, token)) = self.requests.notifications.remove(at) {
                self.outbox
                    .push_event(ProtocolEvent::ObserverGone { token });
            }
            return true;
        }
        let Some(index) = self.requests.exchanges.by_message_id(message_id) else {
            return false;
        };
        self.keepalive.handle_activity(now);
        let pending = self.requests.exchanges.pending.remove(index);
        if pending.kind == PendingKind::Request {
            if let Some(token) = self.requests.exchanges.failure_token(pending) {
                self.outbox.push_event(ProtocolEvent::RequestFailed {
                    token,
                    error: RequestError::Reset,
                });
            }
            self.fail(NackReason::Rst);
        } else {
            self.confirmable_done(now);
        }
        true
    }

    fn handle_message(&mut self, now: Instant, packet: Packet) {
        let message_type = packet.header.get_type();
        let message_id = packet.header.message_id;
        match packet.header.code {
            MessageClass::Request(_) => match message_type {
                MessageType::Confirmable | MessageType::NonConfirmable => {
                    let lifetime = self.keepalive.config().transmission.exchange_lifetime();
                    match self.requests.dedup.check(now, lifetime, message_id) {
                        Some(Some(answer)) => {
                            let answer = answer.to_vec();
                            self.outbox.push_transmit(answer);
                            self.outbox
                                .push_event(ProtocolEvent::Rejected("duplicate request".into()));
                        }
                        Some(None) => self
                            .outbox
                            .push_event(ProtocolEvent::Rejected("duplicate request".into())),
                        None => match options::check_request(options::packet_options(&packet)) {
                            Ok(()) => self.handle_request(now, packet),
                            Err(problem) => self.refuse_request(&packet, problem),
                        },
                    }
                }
                // A request in an ACK or RST is malformed; ignore it.
                _ => {}
            },
            MessageClass::Response(_) => self.handle_response(now, packet),
            // RFC 7252 §5.9: a response code we do not know (4.17, 2.10 ...) is a response of
            // its class all the same, handed up with its code.
            MessageClass::Reserved(code) if is_unknown_response(code) => {
                self.handle_response(now, packet)
            }
            MessageClass::Reserved(code)
                if is_unknown_method(code)
                    && matches!(
                        message_type,
                        MessageType::Confirmable | MessageType::NonConfirmable
                    ) =>
            {
                // RFC 7252 §5.8: a request with a method we do not know gets 4.05 (on the ACK
                // of a CON); kept for its duplicates like any answer.
                self.answer(&packet, method_not_allowed());
                self.outbox.push_event(ProtocolEvent::Rejected(format!(
                    "request with unknown method {} answered 4.05",
                    packet.header.code
                )));
            }
            _ => {
                if message_type == MessageType::Confirmable {
                    self.outbox.push_transmit(udp::reset(message_id).to_vec());
                }
                self.outbox.push_event(ProtocolEvent::Rejected(format!(
                    "unexpected code {} over UDP",
                    packet.header.code
                )));
            }
        }
    }

    /// A new request with acceptable options: a block of a larger body is reassembled (and
    /// answered 2.31, 4.08, 4.13 ...) or a later block of a stored representation served; the
    /// rest reaches the application.
    fn handle_request(&mut self, now: Instant, packet: Packet) {
        let config = block_config(&self.blockwise);
        let step = self
            .requests
            .blockwise
            .server_request(config, now, &packet, limits(config));
        match step {
            ServerStep::HandUp(whole) => {
                let event = match IncomingRequest::new(whole.unwrap_or(packet)) {
                    Some(request) => ProtocolEvent::Request(Box::new(request)),
                    // Cannot happen for a request code; said rather than dropped.
                    None => ProtocolEvent::Rejected("unparsable request".into()),
                };
                self.outbox.push_event(event);
            }
            ServerStep::Answer(answer) => self.answer(&packet, answer),
        }
    }

    /// A new request whose options stop it (RFC 7252 §5.4.1): it never reaches a handler.
    fn refuse_request(&mut self, request: &Packet, problem: OptionProblem) {
        let message_id = request.header.message_id;
        let non_confirmable = request.header.get_type() == MessageType::NonConfirmable;
        if non_confirmable && matches!(problem, OptionProblem::UnrecognisedCritical { .. }) {
            // §5.4.1: a NON with an unrecognised critical option is rejected; §4.3 lets the
            // rejection be an RST, which we send (as libcoap does) so the peer learns at once
            // instead of waiting for a response that never comes. Duplicates get it again.
            let rst = udp::reset(message_id);
            self.requests.dedup.store(message_id, &rst);
            self.outbox.push_transmit(rst.to_vec());
        } else {
            // 4.02 Bad Option piggybacked on the ACK of a CON; 5.05 to a proxy request of
            // either type (§5.10.2 asks for a response, and the option was recognised).
            self.answer(request, option_rejection(problem));
        }
        self.outbox.push_event(ProtocolEvent::Rejected(format!(
            "request refused: {problem}"
        )));
    }

    fn handle_response(&mut self, now: Instant, packet: Packet) {
        let message_type = packet.header.get_type();
        let message_id = packet.header.message_id;
        let token = packet.get_token().to_vec();
        let Some(response) = Response::from_packet(&packet) else {
            return;
        };
        if let Err(problem) = options::check_response(options::packet_options(&packet)) {
            self.reject_response(now, &packet, problem);
            return;
        }
        if message_type == MessageType::Acknowledgement {
            // Piggybacked: must match both the Message ID and the token of our request.
            match self.requests.exchanges.by_message_id(message_id) {
                Some(index)
                    if self.requests.exchanges.pending[index].token == token
                        && self.requests.exchanges.pending[index].kind == PendingKind::Request =>
                {
                    self.complete(now, index, &packet, response);
                }
                _ => self
                    .outbox
                    .push_event(ProtocolEvent::Rejected("ACK matches no request".into())),
            }
            return;
        }
        // A separate response or a notification: matched by token.
        let pending = self
            .requests
            .exchanges
            .by_token(&token, PendingKind::Request);
        // Looked up through the shared state: a stray response allocates nothing.
        let observed = pending.is_none()
            && self
                .requests
                .exchanges
                .observations
                .iter()
                .any(|o| o.token == token);
        if pending.is_none() && !observed {
            // Nobody waits for it: reject (this also cancels a forgotten observation).
            self.outbox.push_transmit(udp::reset(message_id).to_vec());
            self.outbox.push_event(ProtocolEvent::Rejected(
                "response matches no request".into(),
            ));
            return;
        }
        if message_type == MessageType::Confirmable {
            // Acknowledged before anything it leads to (the request for a next block) goes out.
            self.outbox
                .push_transmit(udp::empty_ack(message_id).to_vec());
        }
        match pending {
            Some(index) => self.complete(now, index, &packet, response),
            None => self.notified(now, &packet, response),
        }
    }

    /// A notification of an observation of ours (RFC 7641). A fresh one is handed up, or, when
    /// it carries the first block of a larger representation (RFC 7959 §3.4), the rest is
    /// fetched first and the whole handed up. The newest notification wins: one arriving
    /// while an older one's blocks are fetched abandons that fetch, so two versions are never
    /// spliced (and the ETag check would catch one that changed under a fetch).
    fn notified(&mut self, now: Instant, packet: &Packet, response: Response) {
        let token = packet.get_token().to_vec();
        match self
            .requests
            .exchanges
            .judge_notification(now, packet, &response)
        {
            Notified::LaterBlock => self.outbox.push_event(ProtocolEvent::Rejected(
                "notification carries a later block, not the first".into(),
            )),
            Notified::Ignored => {}
            Notified::Fresh { more } => {
                self.abandon_fetch(now, &token);
                if more {
                    self.fetch_rest(now, &token, packet);
                } else {
                    self.outbox.push_event(ProtocolEvent::Response {
                        token,
                        response: Box::new(response),
                    });
                }
            }
        }
    }

    /// Starts fetching blocks 1.. of the representation whose block 0 `first` brought for the
    /// observation `token`: a request of its own (a fresh token, retransmitted, the probe
    /// while it is out), whose last response becomes the whole notification.
    fn fetch_rest(&mut self, now: Instant, token: &[u8], first: &Packet) {
        let Some(observation) = self.requests.exchanges.observation(token) else {
            return;
        };
        let timeout = observation.timeout;
        let Some(registration) = observation.registration.clone() else {
            // Cannot happen (every registration is kept); said, and the observation ends
            // rather than deliver a part.
            self.end_observation(
                token,
                RequestError::Blockwise(blockwise::BlockwiseError::BadBlock),
            );
            return;
        };
        let fetch = self
            .requests
            .exchanges
            .choose_token(&[], self.keepalive.rng());
        let config = block_config(&self.blockwise);
        let step = self.requests.blockwise.notification_fetch(
            config,
            &fetch,
            registration,
            first,
            limits(config),
        );
        match step {
            ClientStep::Send(next) => {
                self.requests.exchanges.pending.push(Pending::request(
                    fetch.clone(),
                    now,
                    timeout,
                    false,
                    Some(token.to_vec()),
                ));
                self.queue_or_transmit(now, fetch, next);
            }
            ClientStep::Deliver(whole) => {
                if let Some(whole) = Response::from_packet(&whole) {
                    self.outbox.push_event(ProtocolEvent::Response {
                        token: token.to_vec(),
                        response: Box::new(whole),
                    });
                }
            }
            ClientStep::Fail(error) => self.end_observation(token, RequestError::Blockwise(error)),
        }
    }

    /// Stops fetching the later blocks of a notification of the observation `token`, if that
    /// is going on: a newer notification replaced it, or the observation ended.
    fn abandon_fetch(&mut self, now: Instant, token: &[u8]) {
        while let Some(index) = self.requests.exchanges.fetch_of(token) {
            let fetch = self.requests.exchanges.pending.remove(index);
            self.requests.queued.retain(|(t, _)| *t != fetch.token);
            self.requests.blockwise.client_forget(&fetch.token);
            self.confirmable_done(now);
        }
    }

    /// The observation `token` ends with `error`, reported under its token.
    fn end_observation(&mut self, token: &[u8], error: RequestError) {
        self.requests.exchanges.forget_observation(token);
        self.outbox.push_event(ProtocolEvent::RequestFailed {
            token: token.to_vec(),
            error,
        });
    }

    /// A response carrying a critical option we do not recognise: RFC 7252 §5.4.1 says reject
    /// it, so it is not delivered; the request (or observation) it belongs to fails instead, with
    /// the option named, rather than waiting for a response that has come.
    fn reject_response(&mut self, now: Instant, packet: &Packet, problem: OptionProblem) {
        let message_type = packet.header.get_type();
        let message_id = packet.header.message_id;
        let token = packet.get_token().to_vec();
        let error = RequestError::UnrecognisedOption {
            number: problem.number(),
        };
        // Looked up through the shared empty state when none is allocated: a stray response
        // to a session that only pings allocates nothing.
        let exchanges = &self.requests.exchanges;
        let owner = if message_type == MessageType::Acknowledgement {
            // Piggybacked: it must match both the Message ID and the token of our request.
            exchanges.by_message_id(message_id).filter(|&index| {
                exchanges.pending[index].token == token
                    && exchanges.pending[index].kind == PendingKind::Request
            })
        } else {
            exchanges.by_token(&token, PendingKind::Request)
        };
        let known = if let Some(index) = owner {
            // The request's transmission ends here too: its retransmissions would fetch the
            // same response again, and a peer that answers is alive (no session failure).
            let pending = self.requests.exchanges.pending.remove(index);
            self.requests.queued.retain(|(t, _)| *t != pending.token);
            if let Some(token) = self.requests.exchanges.failure_token(pending) {
                self.outbox
                    .push_event(ProtocolEvent::RequestFailed { token, error });
            }
            self.confirmable_done(now);
            true
        } else if message_type != MessageType::Acknowledgement
            && exchanges.observations.iter().any(|o| o.token == token)
        {
            // A notification we cannot process ends the observation (the RST below tells the
            // server too, RFC 7641 §3.6), and the fetch of an older one's blocks with it.
            self.abandon_fetch(now, &token);
            self.end_observation(&token, error);
            true
        } else {
            false
        };
        if message_type != MessageType::Acknowledgement {
            // §4.2: a rejected CON is answered with an RST; §4.3 allows one for a NON. An ACK is
            // rejected by ignoring it: never answered.
            self.outbox.push_transmit(udp::reset(message_id).to_vec());
        }
        self.outbox.push_event(ProtocolEvent::Rejected(if known {
            format!("response rejected: {problem}")
        } else {
            format!("response matches no request (and has {problem})")
        }));
    }

    /// The response to pending request `index` came (piggybacked or separate): deliver it, or,
    /// when it is one block of a block-wise transfer, send the request for the next block as a
    /// new exchange of its own (retransmitted, and the probe while it is out).
    fn complete(&mut self, now: Instant, index: usize, packet: &Packet, response: Response) {
        // Acknowledged either way: the next queued Confirmable may go.
        self.requests.exchanges.pending[index].retransmit = None;
        let pending = &self.requests.exchanges.pending[index];
        let token = pending.token.clone();
        let registration = pending
            .observe
            .then(|| self.requests.blockwise.client_request_of(&token).cloned())
            .flatten();
        let registered = pending.observe && response.observe.is_some();
        if registered
            && blockwise::block_option(packet, options::BLOCK2)
                .is_some_and(|b| b.more && b.num == 0)
        {
            // The server registered us and sends its first response in blocks. The
            // registration's exchange is over (its response came); the rest is fetched as a
            // notification's is, without Observe and under another token, so the server does
            // not take the fetch for a deregistration (RFC 7959 §3.4, RFC 7641 §4.1).
            let pending = self.requests.exchanges.pending.remove(index);
            self.requests.blockwise.client_forget(&token);
            self.requests.exchanges.registered(
                now,
                &token,
                registration,
                pending.timeout,
                &response,
            );
            self.fetch_rest(now, &token, packet);
            self.confirmable_done(now);
            return;
        }
        let config = block_config(&self.blockwise);
        let observing = !self.requests.exchanges.observations.is_empty();
        let step = self.requests.blockwise.client_response(
            config,
            &token,
            packet,
            limits(config),
            observing,
        );
        match step {
            None => self.deliver(now, index, response, registration),
            Some(ClientStep::Deliver(whole)) => match Response::from_packet(&whole) {
                Some(whole) => self.deliver(now, index, whole, registration),
                None => self.deliver(now, index, response, registration),
            },
            Some(ClientStep::Send(next)) => {
                let pending = &mut self.requests.exchanges.pending[index];
                pending.message_id = None;
                pending.deadline = now + pending.timeout;
                if next.header.get_type() == MessageType::Confirmable {
                    // NSTART = 1: first in line, it goes as soon as nothing else is in flight.
                    self.requests.queued.push_front((token, next));
                } else {
                    self.transmit_request(now, &token, next);
                }
            }
            Some(ClientStep::Fail(error)) => {
                let pending = self.requests.exchanges.pending.remove(index);
                if let Some(token) = self.requests.exchanges.failure_token(pending) {
                    self.outbox.push_event(ProtocolEvent::RequestFailed {
                        token,
                        error: RequestError::Blockwise(error),
                    });
                }
            }
        }
        self.confirmable_done(now);
    }

    /// Hands the response to pending request `index` up, turning it into an observation when
    /// the request registered one and the peer agreed (`registration`: the request as sent).
    /// The last block of a notification's fetch is handed up as that notification, whole.
    fn deliver(
        &mut self,
        now: Instant,
        index: usize,
        response: Response,
        registration: Option<Packet>,
    ) {
        let pending = self.requests.exchanges.pending.remove(index);
        if let Some(owner) = pending.notification {
            if self.requests.exchanges.observation(&owner).is_none() {
                return;
            }
            if !response.is_success() {
                // The resource can no longer be had: the observation is over (RFC 7641
                // §3.2), and the application sees why.
                self.requests.exchanges.forget_observation(&owner);
            }
            self.outbox.push_event(ProtocolEvent::Response {
                token: owner,
                response: Box::new(response),
            });
            return;
        }
        if pending.observe && response.observe.is_some() {
            self.requests.exchanges.registered(
                now,
                &pending.token,
                registration,
                pending.timeout,
                &response,
            );
        } else if pending.observe {
            // Not (or no longer) observed: a re-registration's observation is over.
            self.requests.exchanges.forget_observation(&pending.token);
        }
        self.outbox.push_event(ProtocolEvent::Response {
            token: pending.token,
            response: Box::new(response),
        });
    }

    /// Sends again the registrations of observations whose representation went stale with no
    /// notification (RFC 7641 §3.3.1), under their own tokens. The response comes back as a
    /// notification of the same observation; a failure ends it.
    fn reregister(&mut self, now: Instant) {
        for (token, registration, timeout) in self.requests.exchanges.due_reregistrations(now) {
            self.requests.exchanges.pending.push(Pending::request(
                token.clone(),
                now,
                timeout,
                true,
                None,
            ));
            self.queue_or_transmit(now, token, registration);
        }
        self.pump();
    }

    /// Sends `request`; the response comes back as a [`ProtocolEvent::Response`] with the
    /// returned token, or a [`ProtocolEvent::RequestFailed`]. A Confirmable request waits while
    /// another Confirmable message is unacknowledged (NSTART = 1), and no ping is sent while it
    /// is out: it is the probe, and its failure is the session's.
    pub fn send_request(&mut self, now: Instant, request: &Request, timeout: Duration) -> Vec<u8> {
        let token = self
            .requests
            .exchanges
            .choose_token(&request.token, self.keepalive.rng());
        if self.keepalive.is_finished() {
            // Nothing goes out once the session ended; the request ends at once, typed.
            self.outbox.push_event(ProtocolEvent::RequestFailed {
                token: token.clone(),
                error: RequestError::SessionEnded,
            });
            return token;
        }
        let mut packet = request.to_packet();
        packet.set_token(token.clone());
        let config = block_config(&self.blockwise);
        let packet = self.requests.blockwise.client_request(
            config,
            &token,
            packet,
            request.block_size,
            limits(config),
        );
        self.requests.exchanges.pending.push(Pending::request(
            token.clone(),
            now,
            timeout,
            request.observe == Some(crate::proto::message::OBSERVE_REGISTER),
            None,
        ));
        self.queue_or_transmit(now, token.clone(), packet);
        self.pump();
        token
    }

    /// Sends the request `packet` under `token` now, or, when it is Confirmable and another
    /// Confirmable message is unacknowledged or queued (NSTART = 1), queues it behind them.
    fn queue_or_transmit(&mut self, now: Instant, token: Vec<u8>, packet: Packet) {
        if packet.header.get_type() == MessageType::Confirmable
            && (self.requests.exchanges.confirmable_in_flight() || !self.requests.queued.is_empty())
        {
            self.requests.queued.push_back((token, packet));
        } else {
            self.transmit_request(now, &token, packet);
        }
    }

    /// Stops waiting for the response to `token` and forgets its observation.
    pub fn cancel(&mut self, now: Instant, token: &[u8]) {
        self.abandon_fetch(now, token);
        self.requests.blockwise.client_forget(token);
        self.requests.exchanges.forget_observation(token);
        self.requests.queued.retain(|(t, _)| t != token);
        if self.keepalive.is_finished() {
            self.requests.exchanges.pending.retain(|p| p.token != token);
            return;
        }
        if let Some(index) = self
            .requests
            .exchanges
            .by_token(token, PendingKind::Request)
        {
            self.requests.exchanges.pending.remove(index);
            self.confirmable_done(now);
        }
    }

    fn transmit_request(&mut self, now: Instant, token: &[u8], mut packet: Packet) {
        let message_id = self.keepalive.allocate_message_id();
        packet.header.message_id = message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let bytes = match packet.to_bytes_unlimited() {
            Ok(bytes) => bytes,
            Err(error) => {
                if let Some(index) = self
                    .requests
                    .exchanges
                    .by_token(token, PendingKind::Request)
                {
                    self.requests.exchanges.pending.remove(index);
                }
                self.outbox.push_event(ProtocolEvent::Rejected(format!(
                    "request not encodable: {error:?}"
                )));
                return;
            }
        };
        let retransmit = confirmable.then(|| self.first_retransmit(now, bytes.clone()));
        if let Some(index) = self
            .requests
            .exchanges
            .by_token(token, PendingKind::Request)
        {
            let pending = &mut self.requests.exchanges.pending[index];
            pending.message_id = Some(message_id);
            pending.retransmit = retransmit;
        }
        if confirmable {
            self.keepalive.set_request_in_flight(now, true);
        }
        self.outbox.push_transmit(bytes);
    }

    fn first_retransmit(&mut self, now: Instant, bytes: Vec<u8>) -> Retransmit {
        let params = self.keepalive.config().transmission;
        let factor = 1.0 + (params.ack_random_factor - 1.0) * self.keepalive.rng().next_f64();
        let timeout = params.ack_timeout.mul_f64(factor);
        Retransmit {
            bytes,
            count: 0,
            timeout,
            next: now + timeout,
        }
    }

    /// A Confirmable message of ours was acknowledged or given up: start the next queued
    /// request, and let pings resume when none is in flight.
    fn confirmable_done(&mut self, now: Instant) {
        if !self.requests.exchanges.confirmable_in_flight() {
            if let Some((token, packet)) = self.requests.queued.pop_front() {
                if self
                    .requests
                    .exchanges
                    .by_token(&token, PendingKind::Request)
                    .is_some()
                {
                    self.transmit_request(now, &token, packet);
                }
            }
        }
        let in_flight = self.requests.exchanges.confirmable_in_flight();
        self.keepalive.set_request_in_flight(now, in_flight);
    }

    /// Answers `request` with `response`: piggybacked on the ACK for a Confirmable request, as a
    /// Non-confirmable message with a fresh Message ID for a Non-confirmable one. The answer is
    /// remembered for duplicates of the request.
    ///
    /// A response body larger than the block size goes out in blocks (RFC 7959 §2.4), the rest
    /// kept for the client's later requests; the final block of a Block1 upload is echoed.
    pub fn respond(&mut self, request: &IncomingRequest, response: &Response) {
        let config = block_config(&self.blockwise);
        // The request has just arrived: its arrival is the transfer's clock.
        let now = self.keepalive.last_activity();
        let packet = self.requests.blockwise.server_response(
            config,
            now,
            Some(request.packet()),
            response.to_packet(),
            limits(config),
        );
        self.answer(request.packet(), packet);
    }

    /// [`DatagramSession::respond`], for a request in its wire form (one refused before it
    /// could be handed up, too).
    fn answer(&mut self, request: &Packet, mut response: Packet) {
        if self.keepalive.is_finished() {
            return;
        }
        if request.header.get_type() == MessageType::Confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.keepalive.allocate_message_id();
        }
        response.set_token(request.get_token().to_vec());
        if response
            .get_option(coap_lite::CoapOption::Observe)
            .is_some()
        {
            self.requests.observed = true;
        }
        match response.to_bytes_unlimited() {
            Ok(bytes) => {
                self.requests.dedup.store(request.header.message_id, &bytes);
                self.outbox.push_transmit(bytes);
            }
            Err(error) => self.outbox.push_event(ProtocolEvent::Rejected(format!(
                "response not encodable: {error:?}"
            ))),
        }
    }

    /// The response to `request` will come later ([`DatagramSession::respond_separate`]): a
    /// Confirmable request is acknowledged now with an empty ACK, so the peer stops
    /// retransmitting it.
    pub fn respond_later(&mut self, request: &IncomingRequest) {
        let request = request.packet();
        if request.header.get_type() == MessageType::Confirmable && !self.keepalive.is_finished() {
            let ack = udp::empty_ack(request.header.message_id);
            self.requests.dedup.store(request.header.message_id, &ack);
            self.outbox.push_transmit(ack.to_vec());
        }
    }

    /// Sends a separate response to the request that carried `token`: Confirmable (and
    /// retransmitted until acknowledged) when `confirmable`, else Non-confirmable.
    pub fn respond_separate(
        &mut self,
        now: Instant,
        token: &[u8],
        confirmable: bool,
        response: &Response,
    ) {
        if self.keepalive.is_finished() {
            return;
        }
        let mut packet = self.first_block(response);
        packet.set_token(token.to_vec());
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        let message_id = self.keepalive.allocate_message_id();
        packet.header.message_id = message_id;
        let Ok(bytes) = packet.to_bytes_unlimited() else {
            return;
        };
        if confirmable {
            let retransmit = self.first_retransmit(now, bytes.clone());
            let deadline = now + self.keepalive.config().transmission.max_transmit_wait();
            self.requests.exchanges.pending.push(Pending {
                kind: PendingKind::SeparateResponse,
                token: token.to_vec(),
                message_id: Some(message_id),
                observe: false,
                acknowledged: false,
                deadline,
                timeout: deadline - now,
                retransmit: Some(retransmit),
                notification: None,
            });
        }
        self.outbox.push_transmit(bytes);
        self.pump();
    }

    /// `response` as a message, or its first block when it is larger than a block (RFC 7959
    /// §3.4: the client asks for the rest; the handler answers those requests again, and the
    /// ETag, a hash of the representation, keeps the blocks of one version together).
    fn first_block(&mut self, response: &Response) -> Packet {
        let config = block_config(&self.blockwise);
        let packet = response.to_packet();
        if packet.payload.len() <= config.block_size() {
            return packet;
        }
        let now = self.keepalive.last_activity();
        self.requests
            .blockwise
            .server_response(config, now, None, packet, limits(config))
    }

    /// Sends a notification of an observed resource (Non-confirmable, RFC 7641). An RST to it
    /// reports [`ProtocolEvent::ObserverGone`].
    pub fn notify(&mut self, token: &[u8], response: &Response) {
        if self.keepalive.is_finished() {
            return;
        }
        let mut packet = self.first_block(response);
        packet.set_token(token.to_vec());
        packet.header.set_type(MessageType::NonConfirmable);
        let message_id = self.keepalive.allocate_message_id();
        packet.header.message_id = message_id;
        if let Ok(bytes) = packet.to_bytes_unlimited() {
            if self.requests.notifications.len() == NOTIFICATION_MEMORY {
                self.requests.notifications.pop_front();
            }
            self.requests
                .notifications
                .push_back((message_id, token.to_vec()));
            self.outbox.push_transmit(bytes);
        }
    }

    /// Advances timers: due pings, retransmissions, request timeouts, failure, idle expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.keepalive.is_finished() {
            return;
        }
        if self.expiry().is_some_and(|at| at <= now) {
            self.close();
            return;
        }
        self.keepalive.handle_timeout(now);
        let max_retransmit = self.keepalive.config().transmission.max_retransmit;
        let mut index = 0;
        while index < self.requests.exchanges.pending.len() {
            let pending = &mut self.requests.exchanges.pending[index];
            if let Some(retransmit) = pending.retransmit.as_mut() {
                if retransmit.next <= now {
                    if retransmit.count < max_retransmit {
                        retransmit.count += 1;
                        retransmit.timeout *= 2;
                        retransmit.next = now + retransmit.timeout;
                        self.outbox.push_transmit(retransmit.bytes.clone());
                    } else {
                        // Never acknowledged: the peer is gone, and so is the session. Its waiters
                        // learn it from the session's failure (TooManyRetries).
                        self.requests.exchanges.pending.remove(index);
                        self.fail(NackReason::TooManyRetries);
                        return;
                    }
                }
            }
            let pending = &self.requests.exchanges.pending[index];
            if pending.deadline <= now && pending.kind == PendingKind::SeparateResponse {
                // Its ACK never came within MAX_TRANSMIT_WAIT: stop waiting for it.
                self.requests.exchanges.pending.remove(index);
                self.confirmable_done(now);
                continue;
            }
            if pending.deadline <= now && pending.kind == PendingKind::Request {
                let pending = self.requests.exchanges.pending.remove(index);
                self.requests.queued.retain(|(t, _)| *t != pending.token);
                if let Some(token) = self.requests.exchanges.failure_token(pending) {
                    self.outbox.push_event(ProtocolEvent::RequestFailed {
                        token,
                        error: RequestError::TimedOut,
                    });
                }
                self.confirmable_done(now);
                continue;
            }
            index += 1;
        }
        if !self.requests.dedup.order.is_empty() {
            let lifetime = self.keepalive.config().transmission.exchange_lifetime();
            self.requests.dedup.expire(now, lifetime, DEDUP_CAPACITY);
        }
        if !self.requests.exchanges.observations.is_empty() {
            self.reregister(now);
        }
        if let Some(state) = self.requests.allocated_mut() {
            if !state.blockwise.is_empty() {
                let lifetime = self.keepalive.config().transmission.exchange_lifetime();
                state.blockwise.expire(now, lifetime);
                let exchanges = &state.exchanges;
                state.blockwise.client_retain(|token| {
                    exchanges.by_token(token, PendingKind::Request).is_some()
                });
            }
        }
        self.requests.release_if_empty();
        self.pump();
    }

    /// Queues the answer to the peer's ping that [`ProtocolEvent::PeerPing`] reported: an RST
    /// with its Message ID (RFC 7252 §4.3). Nothing once the session is finished. True when the
    /// answer was queued.
    pub fn answer_ping(&mut self, ping: &PeerPing) -> bool {
        if self.is_finished() {
            return false;
        }
        self.outbox.push_transmit(ping.answer());
        true
    }

    /// Sends a ping now if none is outstanding.
    pub fn ping_now(&mut self, now: Instant) {
        self.keepalive.ping_now(now);
        self.pump();
    }

    /// The network reported the peer unreachable at `now`: an ICMP destination or port
    /// unreachable that the socket attributes to this peer (a client's connected socket reports
    /// it as `ECONNREFUSED` and the like). `detail` says what the socket said, for logs.
    ///
    /// Under [`IcmpPolicy::Fail`] (the default) the session fails with
    /// [`NackReason::IcmpError`], its requests with it; under [`IcmpPolicy::Soft`] it is noted
    /// and the retransmission schedule goes on (RFC 8085 §5.2). See [`IcmpPolicy`] for why.
    pub fn handle_unreachable(&mut self, _now: Instant, detail: &str) {
        if self.keepalive.is_finished() {
            return;
        }
        match self.keepalive.config().icmp {
            IcmpPolicy::Fail => self.fail(NackReason::IcmpError),
            IcmpPolicy::Soft => self.outbox.push_event(ProtocolEvent::Rejected(format!(
                "ICMP error kept soft, retransmissions go on: {detail}"
            ))),
        }
    }

    /// Fails the session (send error, handshake failure…).
    pub fn fail(&mut self, reason: NackReason) {
        self.keepalive.fail(reason);
        self.pump();
    }

    /// The peer closed the connection at `now` (a DTLS close_notify): a normal end
    /// ([`ProtocolEvent::Closed`]) when nothing of ours is outstanding, else, as over TCP, a
    /// failure with [`NackReason::NotDeliverable`] for the ping, request or separate response
    /// left unanswered.
    pub fn handle_peer_closed(&mut self, _now: Instant) {
        if self.keepalive.is_finished() {
            return;
        }
        if self.keepalive.is_awaiting_pong() || !self.requests.exchanges.pending.is_empty() {
            self.fail(NackReason::NotDeliverable);
        } else {
            self.close();
        }
    }

    /// Ends the session gracefully.
    pub fn close(&mut self) {
        if !self.keepalive.is_finished() {
            self.keepalive.close();
            self.outbox.clear_transmits();
            self.outbox.push_event(ProtocolEvent::Closed);
        }
    }

    /// True once the session failed or was closed.
    pub fn is_finished(&self) -> bool {
        self.keepalive.is_finished()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_transmit().map(Vec::from)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ProtocolEvent> {
        self.outbox.pop_event()
    }

    /// When [`DatagramSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.keepalive.is_finished() {
            return None;
        }
        let lifetime = self.keepalive.config().transmission.exchange_lifetime();
        [
            self.keepalive.poll_timeout(),
            self.requests.exchanges.next_deadline(),
            self.expiry(),
            self.requests.blockwise.next_expiry(lifetime),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn pump(&mut self) {
        while let Some(ping) = self.keepalive.poll_transmit() {
            self.outbox.push_transmit(ping.encode());
            // Queued as held inline (see `QueuedEvent`).
            self.outbox.push_event(QueuedEvent::PingSent(ping));
        }
        while let Some(event) = self.keepalive.poll_event() {
            self.outbox.push_event(QueuedEvent::from(event));
        }
    }
}

/// Over UDP / DTLS a body larger than the block size goes in blocks, and BERT does not exist.
fn limits(config: &BlockwiseConfig) -> Limits {
    Limits {
        whole: config.block_size(),
        szx: blockwise::MAX_SZX,
        bert: None,
        bert_in: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::exchange::{MIN_REREGISTER_AFTER, REREGISTER_GRACE};
    use crate::proto::keepalive::PingTransmit;
    use crate::proto::message::Status;
    use std::time::Duration;

    fn session() -> (DatagramSession, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default().with_interval_secs(10);
        (DatagramSession::new(config, Rng::seeded(5), t0), t0)
    }

    fn icmp_session(policy: IcmpPolicy) -> (DatagramSession, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default()
            .with_interval_secs(10)
            .with_transmission(
                crate::proto::config::TransmissionParams::default().with_ack_random_factor(1.0),
            )
            .with_icmp_policy(policy);
        (DatagramSession::new(config, Rng::seeded(5), t0), t0)
    }

    #[test]
    fn an_icmp_error_fails_the_session_at_once_by_default() {
        let (mut s, t0) = icmp_session(IcmpPolicy::default());
        s.ping_now(t0);
        assert!(s.poll_transmit().is_some());
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::PingSent(_))));
        s.handle_unreachable(t0 + Duration::from_millis(1), "connection refused");
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Failed(NackReason::IcmpError))
        );
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None, "no retransmission");
        let stats = s.keepalive().stats();
        assert_eq!(
            (stats.pings_sent, stats.retransmissions, stats.failures),
            (1, 0, 1)
        );
    }

    #[test]
    fn a_soft_icmp_error_leaves_the_schedule_to_decide() {
        let (mut s, t0) = icmp_session(IcmpPolicy::Soft);
        let sent = t0 + Duration::from_secs(1);
        s.ping_now(sent);
        assert!(s.poll_transmit().is_some());
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::PingSent(_))));
        s.handle_unreachable(sent + Duration::from_millis(1), "connection refused");
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::Rejected(_))));
        assert!(!s.is_finished());
        // ACK_TIMEOUT 2 s later: the first retransmission, as if nothing had been reported.
        assert_eq!(s.poll_timeout(), Some(sent + Duration::from_secs(2)));
        s.handle_timeout(sent + Duration::from_secs(2));
        assert_eq!(
            s.poll_transmit().map(|d| d[..2].to_vec()),
            Some(vec![0x40, 0x00])
        );
        assert_eq!(s.keepalive().stats().retransmissions, 1);
    }

    #[test]
    fn a_peer_closing_ends_the_session_normally_unless_something_of_ours_is_out() {
        let (mut s, t0) = session();
        s.handle_peer_closed(t0 + Duration::from_secs(1));
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Closed));
        assert!(s.is_finished());

        let (mut s, t0) = session();
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert!(s.poll_transmit().is_some(), "the ping");
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::PingSent(_))));
        s.handle_peer_closed(t0 + Duration::from_secs(11));
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Failed(NackReason::NotDeliverable))
        );

        let (mut s, t0) = session();
        s.send_request(t0, &Request::get("/x"), Duration::from_secs(5));
        s.handle_peer_closed(t0 + Duration::from_secs(1));
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            events,
            vec![ProtocolEvent::Failed(NackReason::NotDeliverable)]
        );
    }

    #[test]
    fn only_coap_from_a_stranger_opens_a_session() {
        let opens = |bytes: &[u8]| matches!(DatagramSession::screen(bytes), Stranger::Open(_));
        let rst = |bytes: &[u8]| match DatagramSession::screen(bytes) {
            Stranger::Reject { rst, .. } => Some(rst),
            _ => None,
        };
        let ignored =
            |bytes: &[u8]| matches!(DatagramSession::screen(bytes), Stranger::Ignore { .. });
        // Pings and requests, CON or NON.
        assert!(opens(&[0x40, 0x00, 0x12, 0x34]));
        // An empty NON is no message (RFC 7252 §4.1): answered as a ping, but no session.
        assert_eq!(
            rst(&[0x50, 0x00, 0x12, 0x34]),
            Some([0x70, 0x00, 0x12, 0x34])
        );
        assert!(opens(&[
            0x40, 0x01, 0x12, 0x34, 0xb4, b't', b'i', b'm', b'e'
        ]));
        assert!(opens(&[0x51, 0x01, 0x12, 0x34, 0x99]));
        // Not CoAP: silence.
        assert!(ignored(b"hello world"));
        assert!(ignored(&[0x16, 0xfe, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00]));
        assert!(ignored(&[0x40, 0x00, 0x12]));
        // A CON whose header parsed but with a format error, or a response: RST, no session.
        assert_eq!(
            rst(&[0x40, 0x01, 0x12, 0x34, 0xf0]),
            Some([0x70, 0x00, 0x12, 0x34])
        );
        assert_eq!(
            rst(&[0x40, 0x45, 0x12, 0x35]),
            Some([0x70, 0x00, 0x12, 0x35])
        );
        assert_eq!(
            rst(&[0x50, 0x45, 0x12, 0x36]),
            Some([0x70, 0x00, 0x12, 0x36])
        );
        assert_eq!(
            rst(&[0x40, 0xe2, 0x12, 0x37]),
            Some([0x70, 0x00, 0x12, 0x37])
        );
        // A NON with a format error, an ACK, an RST, a piggybacked response: never answered.
        assert!(ignored(&[0x50, 0x01, 0x12, 0x34, 0xf0]));
        assert!(ignored(&[0x60, 0x00, 0x12, 0x34]));
        assert!(ignored(&[0x70, 0x00, 0x12, 0x34]));
        assert!(ignored(&[0x60, 0x45, 0x12, 0x34]));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_idle_session_stays_small() {
        // Issue 15 counts the bytes of an idle UDP session: a field added here costs every one.
        let size = std::mem::size_of::<DatagramSession>();
        println!("DatagramSession {size} bytes");
        assert!(size <= 216, "DatagramSession is {size} bytes");
    }

    #[test]
    fn the_first_datagram_is_handled_as_if_received() {
        let (mut s, t0) = session();
        let Stranger::Open(first) = DatagramSession::screen(&[0x40, 0x00, 0x12, 0x34]) else {
            panic!("a ping opens a session")
        };
        s.handle_first(t0, first);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::PeerPing(PeerPing::Datagram {
                message_id: 0x1234
            }))
        );
    }

    #[test]
    fn empty_con_gets_rst_with_its_message_id() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x40, 0x00, 0x12, 0x34]);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::PeerPing(PeerPing::Datagram {
                message_id: 0x1234
            }))
        );
        assert_eq!(
            s.poll_transmit(),
            None,
            "answered when the ping handler decided"
        );
        s.answer_ping(&PeerPing::Datagram { message_id: 0x1234 });
        assert_eq!(s.poll_transmit(), Some(vec![0x70, 0x00, 0x12, 0x34]));
        assert_eq!(s.keepalive().stats().pings_received, 1);
    }

    #[test]
    fn ack_and_rst_are_never_answered() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x60, 0x00, 0x00, 0x01]);
        s.handle_datagram(t0, &[0x70, 0x00, 0x00, 0x02]);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn empty_con_with_a_token_is_rejected_with_rst() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x41, 0x00, 0xab, 0xcd, 0x99]);
        assert_eq!(s.poll_transmit(), Some(vec![0x70, 0x00, 0xab, 0xcd]));
    }

    #[test]
    fn confirmable_get_is_handed_up_and_answered_piggybacked() {
        let (mut s, t0) = session();
        // CON GET, MID 0x0102, token 0xaa, Uri-Path "x"
        let req = [0x41, 0x01, 0x01, 0x02, 0xaa, 0xb1, b'x'];
        s.handle_datagram(t0, &req);
        let Some(ProtocolEvent::Request(request)) = s.poll_event() else {
            panic!("no request")
        };
        assert_eq!(request.request().path_str(), "/x");
        s.respond(&request, &Response::new(Status::NotFound));
        // ACK 4.04, same MID, same token
        assert_eq!(s.poll_transmit(), Some(vec![0x61, 0x84, 0x01, 0x02, 0xaa]));
    }

    #[test]
    fn our_ping_answered_by_rst_yields_pong() {
        let (mut s, t0) = session();
        s.handle_timeout(t0 + Duration::from_secs(10));
        let ping = s.poll_transmit().unwrap();
        assert_eq!(&ping[..2], &[0x40, 0x00]);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::PingSent(PingTransmit::Datagram {
                message_id: mid(&ping),
                retransmission: false
            }))
        );
        let rst = [0x70, 0x00, ping[2], ping[3]];
        s.handle_datagram(t0 + Duration::from_millis(10_030), &rst);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Pong {
                rtt: Duration::from_millis(30)
            })
        );
    }

    #[test]
    fn our_ping_answered_by_an_ack_with_a_response_yields_pong() {
        // node-coap: ACK 2.05, the ping's Message ID, a payload, no token.
        let (mut s, t0) = session();
        s.handle_timeout(t0 + Duration::from_secs(10));
        let ping = s.poll_transmit().unwrap();
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::PingSent(_))));
        let ack = [0x60, 0x45, ping[2], ping[3], 0xff, b'h', b'i'];
        s.handle_datagram(t0 + Duration::from_millis(10_020), &ack);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Pong {
                rtt: Duration::from_millis(20)
            })
        );
        assert_eq!(s.poll_event(), None, "not rejected as an unknown ACK");
        assert_eq!(s.poll_transmit(), None, "an ACK is never answered");
        assert_eq!(s.keepalive().stats().pongs, 1);
        // An ACK with another Message ID answers nothing.
        s.handle_timeout(t0 + Duration::from_secs(21));
        let ping = s.poll_transmit().unwrap();
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::PingSent(_))));
        let other = mid(&ping).wrapping_add(7).to_be_bytes();
        s.handle_datagram(
            t0 + Duration::from_secs(22),
            &[0x60, 0x45, other[0], other[1]],
        );
        assert!(!matches!(s.poll_event(), Some(ProtocolEvent::Pong { .. })));
    }

    fn drain(s: &mut DatagramSession) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn mid(bytes: &[u8]) -> u16 {
        u16::from_be_bytes([bytes[2], bytes[3]])
    }

    #[test]
    fn no_ping_while_a_confirmable_request_is_in_flight() {
        use crate::proto::config::TransmissionParams;
        let t0 = Instant::now();
        let params = TransmissionParams::default()
            .with_ack_timeout(Duration::from_secs(2))
            .with_ack_random_factor(1.0);
        let config = KeepaliveConfig::default()
            .with_interval_secs(10)
            .with_transmission(params);
        let mut s = DatagramSession::new(config, Rng::seeded(1), t0);
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        s.send_request(at(9.0), &Request::get("/x"), Duration::from_secs(300));
        let request = drain(&mut s);
        assert_eq!(request.len(), 1);
        assert_eq!(request[0][0] & 0x30, 0x00, "Confirmable");
        // Drive the session through its own deadlines up to 20 s: every datagram on the wire is
        // the request (same MID), never a ping, although the idle interval passed at 10 s.
        let mut sent = Vec::new();
        while let Some(deadline) = s.poll_timeout().filter(|d| *d <= at(20.0)) {
            s.handle_timeout(deadline);
            for bytes in drain(&mut s) {
                sent.push(((deadline - t0).as_secs_f64(), bytes));
            }
        }
        let times: Vec<f64> = sent.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, vec![11.0, 15.0]);
        assert!(sent
            .iter()
            .all(|(_, b)| mid(b) == mid(&request[0]) && b[1] == 0x01));
        // The ACK arrives at 16 s: the request is done; the next ping is due 10 s later.
        s.handle_datagram(at(16.0), &udp::empty_ack(mid(&request[0])));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(at(25.9));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(at(26.0));
        let ping = drain(&mut s);
        assert_eq!(ping.len(), 1);
        assert_eq!(&ping[0][..2], &[0x40, 0x00]);
    }

    #[test]
    fn nstart_queues_a_second_confirmable_request_until_the_first_is_acknowledged() {
        let (mut s, t0) = session();
        s.send_request(t0, &Request::get("/a"), Duration::from_secs(60));
        s.send_request(t0, &Request::get("/b"), Duration::from_secs(60));
        let out = drain(&mut s);
        assert_eq!(out.len(), 1, "only the first goes out");
        s.handle_datagram(t0, &udp::empty_ack(mid(&out[0])));
        let out = drain(&mut s);
        assert_eq!(out.len(), 1, "the second follows the ACK");
        assert!(out[0].ends_with(b"b"));
    }

    #[test]
    fn piggybacked_response_is_matched_by_message_id_and_token() {
        let (mut s, t0) = session();
        let token = s.send_request(t0, &Request::get("/a"), Duration::from_secs(60));
        let out = drain(&mut s);
        let mut ack = Response::content_text("hi").to_packet();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = mid(&out[0]);
        // wrong token: ignored
        ack.set_token(vec![0xde, 0xad]);
        s.handle_datagram(t0, &ack.to_bytes().unwrap());
        assert!(!std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        ack.set_token(token.clone());
        s.handle_datagram(t0, &ack.to_bytes().unwrap());
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(events.iter().any(|e| matches!(e,
            ProtocolEvent::Response { token: t, response } if *t == token && response.payload == b"hi")));
    }

    #[test]
    fn duplicate_con_request_is_answered_from_the_cache() {
        let (mut s, t0) = session();
        let req = [0x41, 0x01, 0x01, 0x02, 0xaa, 0xb1, b'x'];
        s.handle_datagram(t0, &req);
        let Some(ProtocolEvent::Request(request)) = s.poll_event() else {
            panic!()
        };
        s.respond(&request, &Response::content_text("v"));
        let first = drain(&mut s);
        s.handle_datagram(t0 + Duration::from_secs(1), &req);
        assert!(
            !std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, ProtocolEvent::Request(_)))
        );
        assert_eq!(drain(&mut s), first);
    }

    #[test]
    fn unknown_separate_response_is_rejected_with_rst() {
        let (mut s, t0) = session();
        let mut stray = Response::content_text("x").to_packet();
        stray.header.set_type(MessageType::Confirmable);
        stray.header.message_id = 0x0909;
        stray.set_token(vec![1, 2, 3]);
        s.handle_datagram(t0, &stray.to_bytes().unwrap());
        assert_eq!(drain(&mut s), vec![vec![0x70, 0x00, 0x09, 0x09]]);
    }

    fn events(s: &mut DatagramSession) -> Vec<ProtocolEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn handed_up(events: &[ProtocolEvent]) -> bool {
        events
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Request(_)))
    }

    #[test]
    fn con_request_with_an_unrecognised_critical_option_gets_a_piggybacked_4_02() {
        let (mut s, t0) = session();
        // CON GET, MID 0x0102, token 0xaa, Uri-Path "x", option 13 (delta 2, empty).
        let req = [0x41, 0x01, 0x01, 0x02, 0xaa, 0xb1, b'x', 0x20];
        s.handle_datagram(t0, &req);
        assert!(!handed_up(&events(&mut s)), "never reaches a handler");
        let mut expected = vec![0x61, 0x82, 0x01, 0x02, 0xaa, 0xff];
        expected.extend_from_slice(b"unrecognised critical option 13");
        assert_eq!(drain(&mut s), vec![expected.clone()]);
        // A retransmission of it gets the same answer, and is not handed up either.
        s.handle_datagram(t0 + Duration::from_secs(2), &req);
        assert!(!handed_up(&events(&mut s)));
        assert_eq!(drain(&mut s), vec![expected]);
        assert!(!s.is_finished());
    }

    #[test]
    fn non_request_with_an_unrecognised_critical_option_gets_rst() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x51, 0x01, 0x03, 0x04, 0xaa, 0xb1, b'x', 0x20]);
        assert!(!handed_up(&events(&mut s)));
        assert_eq!(drain(&mut s), vec![vec![0x70, 0x00, 0x03, 0x04]]);
    }

    #[test]
    fn block1_put_first_block_gets_2_31_not_a_partial_success() {
        let (mut s, t0) = session();
        // CON PUT /echo, token 0x77, Block1 NUM 0 M 1 SZX 2 (option 27: delta 16 = 13 + 3),
        // 64 bytes of payload: the first block of a larger body.
        let mut put = vec![0x41, 0x03, 0x0b, 0x0b, 0x77, 0xb4];
        put.extend_from_slice(b"echo");
        put.extend_from_slice(&[0xd1, 0x03, 0x0a, 0xff]);
        put.extend_from_slice(&[b'a'; 64]);
        s.handle_datagram(t0, &put);
        assert!(
            !handed_up(&events(&mut s)),
            "no handler sees a part of the body"
        );
        // ACK 2.31 Continue echoing Block1 0/1/64 (RFC 7959 §2.3).
        assert_eq!(
            drain(&mut s),
            vec![vec![0x61, 0x5f, 0x0b, 0x0b, 0x77, 0xd1, 0x0e, 0x0a]]
        );
    }

    #[test]
    fn proxy_requests_get_5_05() {
        let (mut s, t0) = session();
        // CON GET with Proxy-Uri (35: delta 13 + 22) "coap://h/".
        let mut get = vec![0x40, 0x01, 0x0c, 0x0c, 0xd9, 0x16];
        get.extend_from_slice(b"coap://h/");
        s.handle_datagram(t0, &get);
        assert!(!handed_up(&events(&mut s)));
        let answer = drain(&mut s);
        assert_eq!(&answer[0][..4], &[0x60, 0xa5, 0x0c, 0x0c]);
    }

    #[test]
    fn piggybacked_response_with_an_unrecognised_critical_option_fails_the_request() {
        let (mut s, t0) = session();
        let token = s.send_request(t0, &Request::get("/a"), Duration::from_secs(60));
        let request = drain(&mut s);
        let mut ack = Response::content_text("part").to_packet();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = mid(&request[0]);
        ack.set_token(token.clone());
        ack.add_option(coap_lite::CoapOption::Unknown(13), vec![]);
        s.handle_datagram(t0, &ack.to_bytes().unwrap());
        let events = events(&mut s);
        assert!(events.contains(&ProtocolEvent::RequestFailed {
            token,
            error: RequestError::UnrecognisedOption { number: 13 },
        }));
        assert!(!events
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        assert!(drain(&mut s).is_empty(), "an ACK is never answered");
        // Its retransmissions stop; the session lives on and pings when idle.
        s.handle_timeout(t0 + Duration::from_secs(5));
        assert!(drain(&mut s).is_empty());
        assert!(!s.is_finished());
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(&drain(&mut s)[0][..2], &[0x40, 0x00]);
    }

    #[test]
    fn separate_response_with_an_unrecognised_critical_option_gets_rst() {
        let (mut s, t0) = session();
        let token = s.send_request(t0, &Request::get("/a"), Duration::from_secs(60));
        let request = drain(&mut s);
        s.handle_datagram(t0, &udp::empty_ack(mid(&request[0])));
        let mut separate = Response::content_text("x").to_packet();
        separate.header.set_type(MessageType::Confirmable);
        separate.header.message_id = 0x4242;
        separate.set_token(token.clone());
        separate.add_option(coap_lite::CoapOption::Unknown(13), vec![]);
        s.handle_datagram(t0, &separate.to_bytes().unwrap());
        assert_eq!(drain(&mut s), vec![vec![0x70, 0x00, 0x42, 0x42]]);
        let events = events(&mut s);
        assert!(events.contains(&ProtocolEvent::RequestFailed {
            token,
            error: RequestError::UnrecognisedOption { number: 13 },
        }));
        assert_eq!(s.pending_requests(), 0);
    }

    #[test]
    fn a_notification_with_an_unrecognised_critical_option_ends_the_observation() {
        let (mut s, t0) = session();
        let token = s.send_request(t0, &Request::get("/t").observing(), Duration::from_secs(60));
        let request = drain(&mut s);
        let mut first = Response::content_text("1").to_packet();
        first.header.set_type(MessageType::Acknowledgement);
        first.header.message_id = mid(&request[0]);
        first.set_token(token.clone());
        first.add_option(coap_lite::CoapOption::Observe, vec![0x01]);
        s.handle_datagram(t0, &first.to_bytes().unwrap());
        events(&mut s);
        assert_eq!(s.observations(), 1);
        // A NON notification carrying critical option 13, which we do not know: rejected with
        // an RST (which also tells the server to forget us), and the observation ends with the
        // option named.
        let mut notification = Response::content_text("2").to_packet();
        notification.header.set_type(MessageType::NonConfirmable);
        notification.header.message_id = 0x6001;
        notification.set_token(token.clone());
        notification.add_option(coap_lite::CoapOption::Observe, vec![0x02]);
        notification.add_option(coap_lite::CoapOption::Unknown(13), vec![]);
        s.handle_datagram(t0, &notification.to_bytes().unwrap());
        assert_eq!(drain(&mut s), vec![vec![0x70, 0x00, 0x60, 0x01]]);
        let events = events(&mut s);
        assert!(events.contains(&ProtocolEvent::RequestFailed {
            token,
            error: RequestError::UnrecognisedOption { number: 13 },
        }));
        assert!(!events
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        assert_eq!(s.observations(), 0);
    }

    #[test]
    fn a_stale_observation_registers_again_under_its_token_after_max_age() {
        // No keepalive: the timers are the observation's alone.
        let t0 = Instant::now();
        let mut s = DatagramSession::new(KeepaliveConfig::default(), Rng::seeded(5), t0);
        let token = s.send_request(t0, &Request::get("/t").observing(), Duration::from_secs(60));
        let registration = drain(&mut s);
        let answer = |kind: MessageType, mid: u16, observe: u8, max_age: u8, text: &str| {
            let mut p = Response::content_text(text).to_packet();
            p.header.set_type(kind);
            p.header.message_id = mid;
            p.set_token(token.clone());
            p.add_option(coap_lite::CoapOption::Observe, vec![observe]);
            p.add_option(coap_lite::CoapOption::MaxAge, vec![max_age]);
            p.to_bytes().unwrap()
        };
        let ack = MessageType::Acknowledgement;
        s.handle_datagram(t0, &answer(ack, mid(&registration[0]), 7, 10, "1"));
        events(&mut s);
        // Max-Age 10 s, and 2 s of grace for the notification that replaces it.
        let stale = t0 + Duration::from_secs(12);
        assert_eq!(s.poll_timeout(), Some(stale));
        s.handle_timeout(stale - Duration::from_millis(1));
        assert!(drain(&mut s).is_empty());
        // A fresh notification at 5 s moves the re-registration to 17 s.
        let at5 = t0 + Duration::from_secs(5);
        s.handle_datagram(
            at5,
            &answer(MessageType::NonConfirmable, 0x7001, 8, 10, "2"),
        );
        assert_eq!(events(&mut s).len(), 1);
        let stale = at5 + Duration::from_secs(12);
        assert_eq!(s.poll_timeout(), Some(stale));
        s.handle_timeout(stale);
        let again = drain(&mut s);
        assert_eq!(again.len(), 1, "the registration goes again");
        let again = Packet::from_bytes(&again[0]).unwrap();
        assert_eq!(again.header.get_type(), MessageType::Confirmable);
        assert_eq!(
            again.get_token(),
            &token[..],
            "under the observation's token"
        );
        assert_eq!(
            again.get_observe_value(),
            Some(Ok(0)),
            "Observe 0: a registration"
        );
        assert_eq!(s.observations(), 1);
        // The server saw us anew (through another NAT binding, say) and numbers from 1: the
        // answer is fresh all the same, handed up as the observation's next notification.
        s.handle_datagram(stale, &answer(ack, again.header.message_id, 1, 10, "3"));
        let delivered: Vec<_> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                ProtocolEvent::Response { token: t, response } => Some((t, response.payload)),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![(token.clone(), b"3".to_vec())]);
        assert_eq!(s.observations(), 1);
        // And a later notification numbered after it is fresh too.
        s.handle_datagram(
            stale,
            &answer(MessageType::NonConfirmable, 0x7002, 2, 10, "4"),
        );
        assert_eq!(events(&mut s).len(), 1);
        assert_eq!(s.poll_timeout(), Some(stale + Duration::from_secs(12)));
    }

    #[test]
    fn a_re_registration_without_observe_ends_the_observation() {
        // No keepalive: the timers are the observation's alone.
        let t0 = Instant::now();
        let mut s = DatagramSession::new(KeepaliveConfig::default(), Rng::seeded(5), t0);
        let token = s.send_request(t0, &Request::get("/t").observing(), Duration::from_secs(60));
        let registration = drain(&mut s);
        let mut first = Response::content_text("1").to_packet();
        first.header.set_type(MessageType::Acknowledgement);
        first.header.message_id = mid(&registration[0]);
        first.set_token(token.clone());
        first.add_option(coap_lite::CoapOption::Observe, vec![1]);
        first.add_option(coap_lite::CoapOption::MaxAge, vec![0]);
        s.handle_datagram(t0, &first.to_bytes().unwrap());
        events(&mut s);
        // Max-Age 0 waits the minimum, not nothing: no re-registration loop.
        let stale = t0 + MIN_REREGISTER_AFTER + REREGISTER_GRACE;
        assert_eq!(s.poll_timeout(), Some(stale));
        s.handle_timeout(stale);
        let again = Packet::from_bytes(&drain(&mut s)[0]).unwrap();
        let mut gone = Response::new(Status::NotFound).to_packet();
        gone.header.set_type(MessageType::Acknowledgement);
        gone.header.message_id = again.header.message_id;
        gone.set_token(token.clone());
        s.handle_datagram(stale, &gone.to_bytes().unwrap());
        assert!(events(&mut s)
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        assert_eq!(s.observations(), 0, "the server no longer observes for us");
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_response_with_an_unknown_code_is_handed_up_with_its_class() {
        let (mut s, t0) = session();
        let token = s.send_request(t0, &Request::get("/x"), Duration::from_secs(60));
        let request = drain(&mut s);
        let message_id = mid(&request[0]);
        // A piggybacked 4.17 (no such code in RFC 7252): RFC 7252 §5.9 reads it as a 4.xx.
        let mut ack = vec![0x60 | token.len() as u8, 0x91];
        ack.extend_from_slice(&message_id.to_be_bytes());
        ack.extend_from_slice(&token);
        s.handle_datagram(t0, &ack);
        let response = events(&mut s).into_iter().find_map(|e| match e {
            ProtocolEvent::Response { response, .. } => Some(response),
            _ => None,
        });
        let response = response.expect("handed up");
        assert_eq!(response.code(), "4.17");
        assert!(!response.is_success());
        assert!(drain(&mut s).is_empty(), "an ACK is never answered");
        assert_eq!(s.pending_requests(), 0);
    }

    #[test]
    fn a_request_with_an_unknown_method_gets_4_05() {
        let (mut s, t0) = session();
        // CON 0.09 (no such method), MID 0x1234: a piggybacked 4.05 (RFC 7252 §5.8), and the
        // same again for a duplicate.
        s.handle_datagram(t0, &[0x40, 0x09, 0x12, 0x34]);
        assert_eq!(drain(&mut s), vec![vec![0x60, 0x85, 0x12, 0x34]]);
        s.handle_datagram(t0, &[0x40, 0x09, 0x12, 0x34]);
        assert_eq!(drain(&mut s), vec![vec![0x60, 0x85, 0x12, 0x34]]);
        // And as a stranger's first datagram, it opens a session that answers so.
        assert!(matches!(
            DatagramSession::screen(&[0x40, 0x1f, 0x00, 0x01]),
            Stranger::Open(_)
        ));
    }

    #[test]
    fn elective_unknown_options_are_ignored_both_ways() {
        let (mut s, t0) = session();
        // CON GET /x with option 2 (elective): handed up as usual.
        s.handle_datagram(t0, &[0x41, 0x01, 0x01, 0x02, 0xaa, 0x20, 0x91, b'x']);
        assert!(handed_up(&events(&mut s)));
    }

    #[test]
    fn idle_server_session_without_keepalive_expires_quietly() {
        let t0 = Instant::now();
        let mut s = DatagramSession::new(KeepaliveConfig::default(), Rng::seeded(2), t0);
        s.set_idle_timeout(Some(Duration::from_secs(300)));
        s.handle_datagram(t0 + Duration::from_secs(10), &[0x40, 0x00, 0x00, 0x01]);
        s.poll_event();
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(310)));
        s.handle_timeout(t0 + Duration::from_secs(309));
        assert!(!s.is_finished());
        s.handle_timeout(t0 + Duration::from_secs(310));
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Closed));
        assert!(s.is_finished());
    }

    #[test]
    fn malformed_datagrams_do_not_prove_a_session() {
        let (mut s, t0) = session();
        for _ in 0..5 {
            s.handle_datagram(t0, &[0x41, 0x00, 0x00, 0x01, 0xff]);
        }
        assert!(!s.is_proven());
    }

    #[test]
    fn sessions_prove_themselves_by_a_second_datagram() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x40, 0x00, 0x00, 0x01]);
        assert!(!s.is_proven());
        s.handle_datagram(t0, &[0x40, 0x00, 0x00, 0x02]);
        assert!(s.is_proven());
    }

    #[test]
    fn nothing_is_sent_after_the_session_ended_and_requests_end_typed() {
        let (mut s, t0) = session();
        s.fail(NackReason::NotDeliverable);
        while s.poll_event().is_some() {}
        let token = s.send_request(t0, &Request::get("/a"), Duration::from_secs(5));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::RequestFailed {
                token,
                error: RequestError::SessionEnded
            })
        );
        s.handle_timeout(t0 + Duration::from_secs(100));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn unacknowledged_separate_response_never_leaves_a_deadline_in_the_past() {
        let (mut s, t0) = session();
        s.respond_separate(t0, &[1], true, &Response::content_text("x"));
        drain(&mut s);
        // woken very late: past the give-up deadline of the separate response
        let late = t0 + Duration::from_secs(500);
        s.handle_timeout(late);
        drain(&mut s);
        assert!(s.poll_timeout().is_none_or(|at| at > late));
    }
}
