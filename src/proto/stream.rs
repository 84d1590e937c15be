//! One TCP or TLS session: RFC 8323 frames in, CSM / Pong / Abort / Release and pings out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, Packet};

use crate::proto::blockwise::{
    self, config_or_default as block_config, Blockwise, BlockwiseConfig, ClientStep, Limits,
    ServerStep,
};
use crate::proto::config::KeepaliveConfig;
use crate::proto::error::NackReason;
use crate::proto::exchange::{Exchanges, Notified, Pending, PendingKind, RequestError};
use crate::proto::keepalive::{Keepalive, Outbox, PingStyle};
use crate::proto::lazy_state::{LazyState, Transient};
use crate::proto::message::{Request, Response};
use crate::proto::rng::Rng;
use crate::proto::wire::options::{self as wire_options, OptionProblem};
use crate::proto::wire::signal::{Signal, SignalError, ABORT, BASE_MAX_MESSAGE_SIZE, CSM};
use crate::proto::wire::tcp::{Frame, FrameDecoder, FrameError};
use crate::proto::PeerPing;
use crate::proto::{
    is_unknown_method, is_unknown_response, method_not_allowed, option_rejection, IncomingRequest,
    ProtocolEvent,
};

/// The Max-Message-Size we announce and enforce unless told otherwise.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 65_536;
/// Room kept in a message for the header, token and options when sizing a body to the peer's
/// Max-Message-Size: at the base size of 1152 bytes a 1024-byte block still fits.
const MESSAGE_OVERHEAD: usize = 128;
/// How long the peer may take to send its CSM, or to finish a message it started.
pub const DEFAULT_INPUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's CSM.
    AwaitingCsm,
    /// CSM exchanged.
    Established,
    /// The peer sent 7.04 Release (RFC 8323 §5.5): what it sent before is still processed and
    /// answered, nothing new of ours goes out, and the session ends once nothing of ours is
    /// outstanding, or when the peer closes or the input timeout passes first.
    Draining,
    /// Release or Abort sent or received: the driver flushes and closes.
    Done,
}

/// The sans-IO protocol state of one stream session.
#[derive(Debug)]
pub struct StreamSession {
    keepalive: Keepalive,
    decoder: FrameDecoder,
    /// Requests both ways, observations and block-wise transfers: allocated by the first one,
    /// dropped once nothing is pending, observed or held (most connections only ping).
    requests: Requests,
    phase: Phase,
    input_timeout: Duration,
    /// The peer's CSM must arrive by then.
    csm_deadline: Option<Instant>,
    /// Since when an incomplete message has been held (a slow-loris peer never finishes it).
    partial_since: Option<Instant>,
    peer_max_message_size: u32,
    /// The Max-Message-Size we announced (and the decoder enforces).
    max_message_size: u32,
    /// The peer's CSM carried Block-Wise-Transfer (RFC 8323 §5.3.2); ours always does.
    peer_block_wise: bool,
    /// When the peer's Release arrived (set while draining).
    released_at: Option<Instant>,
    /// Block sizes and limits; `None`: the defaults.
    blockwise_config: Option<Arc<BlockwiseConfig>>,
    /// The bytes to send and the events to report: usually empty or one item each, held inline
    /// with one spill buffer for both.
    outbox: Outbox<Vec<u8>, ProtocolEvent>,
}

/// The request / response state of a session. Most connections only ping, so it lives behind
/// [`Requests`], which costs one word until a request, an observation or a block-wise transfer
/// needs it.
#[derive(Debug, Default)]
struct RequestState {
    exchanges: Exchanges,
    /// Bodies moving in blocks (RFC 7959 over RFC 8323 §6), both roles.
    blockwise: Blockwise,
}

impl Transient for RequestState {
    /// Nothing pending, observed or held: the state can be dropped.
    fn is_empty(&self) -> bool {
        self.exchanges.pending.is_empty()
            && self.exchanges.observations.is_empty()
            && self.blockwise.is_empty()
    }

    fn empty() -> &'static Self {
        static EMPTY: std::sync::OnceLock<RequestState> = std::sync::OnceLock::new();
        EMPTY.get_or_init(RequestState::default)
    }
}

/// The request state, allocated by the first request, observation or block-wise transfer (see
/// [`LazyState`]).
type Requests = LazyState<RequestState>;

impl StreamSession {
    /// A session whose connection opened at `now`. Our CSM is queued at once: neither side waits
    /// for the other's (RFC 8323 §5.3). It announces `max_message_size` and Block-Wise-Transfer
    /// (RFC 8323 §5.3.2): we do RFC 7959 in both roles, and, with a Max-Message-Size above the
    /// base 1152 bytes, BERT (§6) too.
    pub fn new(
        config: impl Into<Arc<KeepaliveConfig>>,
        rng: Rng,
        now: Instant,
        max_message_size: u32,
    ) -> Self {
        let mut session = StreamSession {
            keepalive: Keepalive::new(PingStyle::Stream, config, rng, now),
            decoder: FrameDecoder::new(max_message_size),
            requests: Requests::default(),
            phase: Phase::AwaitingCsm,
            input_timeout: DEFAULT_INPUT_TIMEOUT,
            csm_deadline: Some(now + DEFAULT_INPUT_TIMEOUT),
            partial_since: None,
            peer_max_message_size: BASE_MAX_MESSAGE_SIZE,
            max_message_size,
            peer_block_wise: false,
            released_at: None,
            blockwise_config: None,
            outbox: Outbox::default(),
        };
        let csm = Signal::Csm {
            max_message_size: Some(max_message_size),
            block_wise_transfer: true,
        };
        session.outbox.push_transmit(csm.encode(&[]));
        session
    }

    /// Sets how long the peer may take to send its CSM (counted from the session's start) or
    /// to complete a message it started; past that the session is aborted. Default 10 s.
    pub fn set_input_timeout(&mut self, timeout: Duration) {
        if let Some(deadline) = self.csm_deadline.as_mut() {
            *deadline = *deadline - self.input_timeout + timeout;
        }
        self.input_timeout = timeout;
    }

    /// Sets the block-wise settings (block size, maximum body size, the memory budget shared
    /// with the context's other sessions). Default [`BlockwiseConfig::default`].
    pub fn set_blockwise(&mut self, config: Arc<BlockwiseConfig>) {
        self.blockwise_config = Some(config);
    }

    /// What fits one message to the peer: a body that fits its Max-Message-Size goes whole
    /// (RFC 8323 §6 needs blocks only beyond it), and blocks are sized to fit it.
    ///
    /// BERT: Block-Wise-Transfer in a CSM offers BERT when the same sender's Max-Message-Size
    /// is above 1152 bytes (RFC 8323 §5.3.2). We send BERT blocks when the peer offered it,
    /// as many 1024-byte blocks in one as fit its Max-Message-Size; we take SZX 7 when both
    /// CSMs carry Block-Wise-Transfer and ours offered BERT. Otherwise SZX 7 stays reserved.
    fn limits(&self) -> Limits {
        let room = (self.peer_max_message_size as usize).saturating_sub(MESSAGE_OVERHEAD);
        let offered = |size: u32| self.peer_block_wise && size > BASE_MAX_MESSAGE_SIZE;
        Limits {
            whole: room,
            szx: blockwise::szx_for(room),
            bert: offered(self.peer_max_message_size)
                .then_some(room / 1024 * 1024)
                .filter(|&bytes| bytes >= 1024),
            bert_in: offered(self.max_message_size),
        }
    }

    /// True once the peer's CSM announced Block-Wise-Transfer (RFC 8323 §5.3.2).
    pub fn peer_block_wise_transfer(&self) -> bool {
        self.peer_block_wise
    }

    /// The keepalive machine (read-only).
    pub fn keepalive(&self) -> &Keepalive {
        &self.keepalive
    }

    /// The keepalive machine, for commands.
    pub fn keepalive_mut(&mut self) -> &mut Keepalive {
        &mut self.keepalive
    }

    /// True once the peer's CSM arrived and the session is not done.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// The Max-Message-Size the peer announced (1152 until it does).
    pub fn peer_max_message_size(&self) -> u32 {
        self.peer_max_message_size
    }

    /// Bytes of an incomplete frame being held (a peer that stops mid-frame).
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Bytes read from the connection.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.phase == Phase::Done {
            return;
        }
        self.decoder.push(bytes);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.partial_since = None;
                    self.handle_frame(now, frame);
                    if self.phase == Phase::Done {
                        break;
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { declared, limit }) => {
                    self.abort(
                        None,
                        format!("message of {declared} bytes exceeds Max-Message-Size {limit}"),
                    );
                    break;
                }
                Err(error) => {
                    self.abort(None, format!("malformed message: {error}"));
                    break;
                }
            }
        }
        if self.decoder.buffered() > 0 {
            self.partial_since.get_or_insert(now);
        }
        // A response that completed the last request of ours leaves nothing to keep.
        self.requests.release_if_empty();
        self.pump();
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        self.dispatch_frame(now, frame);
        // Any frame proves the peer alive; after the dispatch, so that a Pong is matched to its
        // Ping before the activity ends the probe.
        self.keepalive.handle_activity(now);
    }

    fn dispatch_frame(&mut self, now: Instant, frame: Frame) {
        if frame.code == 0 {
            // Empty message: always allowed, ignored (RFC 8323 §3.4).
            return;
        }
        if !frame.is_signal() {
            if self.phase == Phase::AwaitingCsm {
                self.abort(None, "first message must be a CSM".into());
                return;
            }
            let packet = frame.to_packet();
            let options = frame.options.iter().map(|(n, v)| (*n, v.as_slice()));
            match packet.header.code {
                MessageClass::Request(_) => match wire_options::check_request(options) {
                    Ok(()) => self.handle_request(now, packet),
                    Err(problem) => {
                        // RFC 7252 §5.4.1 over a reliable transport (RFC 8323 has no message
                        // types: every request is answered): 4.02 Bad Option, or 5.05 for a
                        // proxy request, instead of reaching a handler.
                        self.answer(&packet, option_rejection(problem));
                        self.outbox.push_event(ProtocolEvent::Rejected(format!(
                            "request refused: {problem}"
                        )));
                    }
                },
                MessageClass::Response(_) => match wire_options::check_response(options) {
                    Ok(()) => self.handle_response(now, &packet),
                    Err(problem) => self.reject_response(&packet, problem),
                },
                // RFC 7252 §5.9: a response code we do not know is a response of its class.
                MessageClass::Reserved(code) if is_unknown_response(code) => {
                    match wire_options::check_response(options) {
                        Ok(()) => self.handle_response(now, &packet),
                        Err(problem) => self.reject_response(&packet, problem),
                    }
                }
                MessageClass::Reserved(code) if is_unknown_method(code) => {
                    // RFC 7252 §5.8: a request with a method we do not know gets 4.05.
                    self.answer(&packet, method_not_allowed());
                    self.outbox.push_event(ProtocolEvent::Rejected(format!(
                        "request with unknown method {} answered 4.05",
                        packet.header.code
                    )));
                }
                _ => self.outbox.push_event(ProtocolEvent::Rejected(format!(
                    "unexpected code {} over TCP",
                    packet.header.code
                ))),
            }
            return;
        }
        let signal = match Signal::parse(&frame) {
            Ok(signal) => signal,
            Err(SignalError::UnknownCriticalOption {
                code: ABORT,
                number,
            }) => {
                // The peer is aborting already: answering its Abort with ours would only race
                // the close. It ends the session as any Abort does.
                let diagnostic = String::from_utf8_lossy(&frame.payload);
                self.peer_aborted(format!(
                    "{diagnostic} (with unknown critical option {number})"
                ));
                return;
            }
            Err(SignalError::UnknownCriticalOption { code, number }) => {
                // RFC 8323 §5.2: a critical signalling option we do not understand aborts the
                // connection. Bad-CSM-Option names it only when a CSM carried it (§5.6).
                self.abort(
                    (code == CSM).then_some(number),
                    format!("unknown critical option {number} in {}", code_name(code)),
                );
                return;
            }
            Err(error) => {
                self.abort(None, format!("bad signalling message: {error}"));
                return;
            }
        };
        if self.phase == Phase::AwaitingCsm && !matches!(signal, Signal::Csm { .. }) {
            self.abort(None, "first message must be a CSM".into());
            return;
        }
        match signal {
            Signal::Csm {
                max_message_size,
                block_wise_transfer,
            } => {
                if let Some(size) = max_message_size {
                    self.peer_max_message_size = size;
                }
                // A later CSM without the option takes nothing back: an option absent from a
                // CSM keeps the value it had (RFC 8323 §5.3).
                self.peer_block_wise |= block_wise_transfer;
                if self.phase == Phase::AwaitingCsm {
                    self.phase = Phase::Established;
                    self.csm_deadline = None;
                    self.keepalive.handle_established(now);
                    self.outbox.push_event(ProtocolEvent::Established);
                }
            }
            Signal::Ping { custody } => {
                self.keepalive.note_peer_ping(now);
                self.outbox
                    .push_event(ProtocolEvent::PeerPing(PeerPing::Stream {
                        token: frame.token,
                        custody,
                    }));
            }
            Signal::Pong { .. } => {
                self.keepalive.handle_pong(now, &frame.token);
            }
            Signal::Release { .. } => {
                // The peer goes away gracefully. RFC 8323 §5.5: the requests it sent before
                // its Release should still be answered (their handlers run after this frame),
                // and we may wait for the answers to ours. So the session drains, and is judged
                // when it ends: normally if nothing of ours was left unanswered.
                self.phase = Phase::Draining;
                self.released_at = Some(now);
            }
            Signal::Abort { diagnostic, .. } => self.peer_aborted(diagnostic),
        }
    }

    /// A request with acceptable options: reassembled from its blocks, answered from a stored
    /// representation, or handed up.
    fn handle_request(&mut self, now: Instant, packet: Packet) {
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        let step = self
            .requests
            .update(|state| state.blockwise.server_request(config, now, &packet, limits));
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

    /// The peer sent a 7.05 Abort: the connection is over.
    fn peer_aborted(&mut self, diagnostic: String) {
        self.phase = Phase::Done;
        self.outbox.push_event(ProtocolEvent::Rejected(format!(
            "peer aborted: {diagnostic}"
        )));
        self.keepalive.fail(NackReason::NotDeliverable);
    }

    fn handle_response(&mut self, now: Instant, packet: &Packet) {
        let token = packet.get_token().to_vec();
        let Some(response) = Response::from_packet(packet) else {
            return;
        };
        if let Some(index) = self
            .requests
            .exchanges
            .by_token(&token, PendingKind::Request)
        {
            self.complete(now, index, packet, response);
        } else if self.requests.exchanges.is_observing(&token) {
            self.notified(now, packet, response);
        } else {
            self.outbox.push_event(ProtocolEvent::Rejected(
                "response matches no request".into(),
            ));
        }
    }

    /// The response to pending request `index`: handed up, or, when it is one block of a
    /// block-wise transfer, followed by the request for the next block.
    fn complete(&mut self, now: Instant, index: usize, packet: &Packet, response: Response) {
        let pending = &self.requests.exchanges.pending[index];
        let token = pending.token.clone();
        let registration = pending
            .observe
            .then(|| self.requests.blockwise.client_request_of(&token).cloned())
            .flatten();
        let registered = pending.observe && response.observe.is_some();
        if registered
            && blockwise::block_option(packet, wire_options::BLOCK2)
                .is_some_and(|b| b.more && b.num == 0)
        {
            // The server registered us and sends its first response in blocks: the rest is
            // fetched as a notification's is, without Observe and under another token, so the
            // server does not take the fetch for a deregistration (RFC 7959 §3.4, RFC 7641
            // §4.1).
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
            return;
        }
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        let observing = !self.requests.exchanges.observations.is_empty();
        let response = match self
            .requests
            .blockwise
            .client_response(config, &token, packet, limits, observing)
        {
            None => response,
            Some(ClientStep::Deliver(whole)) => Response::from_packet(&whole).unwrap_or(response),
            Some(ClientStep::Send(next)) => {
                // The next block: a request of its own under the same token.
                let pending = &mut self.requests.exchanges.pending[index];
                pending.deadline = now + pending.timeout;
                self.send(&next);
                return;
            }
            Some(ClientStep::Fail(error)) => {
                let pending = self.requests.exchanges.pending.remove(index);
                if let Some(token) = self.requests.exchanges.failure_token(pending) {
                    self.outbox.push_event(ProtocolEvent::RequestFailed {
                        token,
                        error: RequestError::Blockwise(error),
                    });
                }
                return;
            }
        };
        let pending = self.requests.exchanges.pending.remove(index);
        if let Some(owner) = pending.notification {
            // The last block of a notification's fetch: that notification, whole.
            if self.requests.exchanges.observation(&owner).is_none() {
                return;
            }
            if !response.is_success() {
                // The resource can no longer be had: the observation is over (RFC 7641 §3.2).
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
                &token,
                registration,
                pending.timeout,
                &response,
            );
        } else if pending.observe {
            // Not (or no longer) observed: a re-registration's observation is over.
            self.requests.exchanges.forget_observation(&token);
        }
        self.outbox.push_event(ProtocolEvent::Response {
            token,
            response: Box::new(response),
        });
    }

    /// A notification of an observation of ours (RFC 7641): handed up when fresh, or, when it
    /// carries the first block of a larger representation (RFC 7959 §3.4), completed first by
    /// fetching the rest. The newest wins: a fresh notification abandons the fetch of an
    /// older one's blocks, so two versions are never spliced.
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
                self.abandon_fetch(&token);
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
    /// observation `token`, as a request of its own under a fresh token.
    fn fetch_rest(&mut self, now: Instant, token: &[u8], first: &Packet) {
        let Some(observation) = self.requests.exchanges.observation(token) else {
            return;
        };
        let timeout = observation.timeout;
        let Some(registration) = observation.registration.clone() else {
            // Cannot happen (every registration is kept); the observation ends rather than
            // deliver a part.
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
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        match self.requests.blockwise.notification_fetch(
            config,
            &fetch,
            registration,
            first,
            limits,
        ) {
            ClientStep::Send(next) => {
                self.requests.exchanges.pending.push(Pending::request(
                    fetch,
                    now,
                    timeout,
                    false,
                    Some(token.to_vec()),
                ));
                self.send(&next);
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

    /// Stops fetching the later blocks of a notification of the observation `token`.
    fn abandon_fetch(&mut self, token: &[u8]) {
        while let Some(index) = self.requests.exchanges.fetch_of(token) {
            let fetch = self.requests.exchanges.pending.remove(index);
            self.requests.blockwise.client_forget(&fetch.token);
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

    /// Sends a request of ours (a later block) unless the session is ending.
    fn send(&mut self, request: &Packet) {
        if !matches!(self.phase, Phase::Done | Phase::Draining) {
            self.outbox
                .push_transmit(Frame::from_packet(request).encode());
        }
    }

    /// A response carrying a critical option we do not recognise (RFC 7252 §5.4.1): not
    /// delivered; the request or observation it belongs to fails with the option named. Over a
    /// stream there is no RST to send: the rejection is ours alone.
    fn reject_response(&mut self, packet: &Packet, problem: OptionProblem) {
        let token = packet.get_token().to_vec();
        let error = RequestError::UnrecognisedOption {
            number: problem.number(),
        };
        let known = if let Some(index) = self
            .requests
            .exchanges
            .by_token(&token, PendingKind::Request)
        {
            let pending = self.requests.exchanges.pending.remove(index);
            if let Some(token) = self.requests.exchanges.failure_token(pending) {
                self.outbox
                    .push_event(ProtocolEvent::RequestFailed { token, error });
            }
            true
        } else if self.requests.exchanges.is_observing(&token) {
            // The notification cannot be processed: the observation ends, and the fetch of
            // an older one's blocks with it.
            self.abandon_fetch(&token);
            self.end_observation(&token, error);
            true
        } else {
            false
        };
        self.outbox.push_event(ProtocolEvent::Rejected(if known {
            format!("response rejected: {problem}")
        } else {
            format!("response matches no request (and has {problem})")
        }));
    }

    /// Sends `request`; the response comes back as a [`ProtocolEvent::Response`] with the
    /// returned token, or a [`ProtocolEvent::RequestFailed`] after `timeout`. Requests sent
    /// before the peer's CSM wait in the connection's order behind our own CSM.
    pub fn send_request(&mut self, now: Instant, request: &Request, timeout: Duration) -> Vec<u8> {
        let token = self
            .requests
            .exchanges
            .choose_token(&request.token, self.keepalive.rng());
        let mut packet = request.to_packet();
        packet.set_token(token.clone());
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        let packet = self.requests.blockwise.client_request(
            config,
            &token,
            packet,
            request.block_size,
            limits,
        );
        self.requests.exchanges.pending.push(Pending::request(
            token.clone(),
            now,
            timeout,
            request.observe == Some(crate::proto::message::OBSERVE_REGISTER),
            None,
        ));
        if matches!(self.phase, Phase::Done | Phase::Draining) {
            // Nothing new goes out once the session ended or the peer released it; the
            // request ends at once, typed.
            self.requests.exchanges.pending.retain(|p| p.token != token);
            // Its transfer too, which nothing would sweep once the session is done, so that
            // the state can be released.
            self.requests.blockwise.client_forget(&token);
            self.requests.release_if_empty();
            self.outbox.push_event(ProtocolEvent::RequestFailed {
                token: token.clone(),
                error: RequestError::SessionEnded,
            });
        } else {
            self.outbox
                .push_transmit(Frame::from_packet(&packet).encode());
        }
        token
    }

    /// Stops waiting for the response to `token` and forgets its observation.
    pub fn cancel(&mut self, _now: Instant, token: &[u8]) {
        if !self.requests.is_allocated() {
            // Nothing of ours is pending or observed: nothing to cancel, and no state to
            // allocate for forgetting nothing.
            return;
        }
        self.abandon_fetch(token);
        self.requests.blockwise.client_forget(token);
        self.requests.exchanges.forget_observation(token);
        if let Some(index) = self
            .requests
            .exchanges
            .by_token(token, PendingKind::Request)
        {
            self.requests.exchanges.pending.remove(index);
        }
        self.requests.release_if_empty();
    }

    /// Requests of ours still waiting for a response (a shutdown lets them finish).
    pub fn pending_requests(&self) -> usize {
        self.requests.exchanges.pending.len()
    }

    /// Observations of ours still receiving notifications.
    pub fn observations(&self) -> usize {
        self.requests.exchanges.observations.len()
    }

    /// True while the request / response state is allocated (the tests check that the ping
    /// path never allocates it and that it is released once nothing is pending).
    #[cfg(test)]
    pub(crate) fn holds_request_state(&self) -> bool {
        self.requests.is_allocated()
    }

    /// A deferred answer needs nothing now over a stream (no ACK exists).
    pub fn respond_later(&mut self, _request: &IncomingRequest) {}

    /// Sends the separate response to the request that carried `token`.
    pub fn respond_separate(
        &mut self,
        _now: Instant,
        token: &[u8],
        _confirmable: bool,
        response: &Response,
    ) {
        self.notify(token, response);
    }

    /// Sends a notification (or any response) carrying `token`.
    pub fn notify(&mut self, token: &[u8], response: &Response) {
        if self.phase == Phase::Done {
            return;
        }
        // Larger than one message: the first block (RFC 7959 §3.4); the handler answers the
        // requests for the rest again, the ETag keeping one version's blocks together.
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        let now = self.keepalive.last_activity();
        // Without a request nothing is stored, so this never allocates the state.
        let mut packet = self.requests.update(|state| {
            state
                .blockwise
                .server_response(config, now, None, response.to_packet(), limits)
        });
        packet.set_token(token.to_vec());
        self.outbox
            .push_transmit(Frame::from_packet(&packet).encode());
    }

    /// Answers `request` with `response` (token copied): in blocks when it does not fit one
    /// message to the peer or the request asked for a block, echoing a final Block1.
    pub fn respond(&mut self, request: &IncomingRequest, response: &Response) {
        let limits = self.limits();
        let config = block_config(&self.blockwise_config);
        // The request has just arrived: its arrival is the transfer's clock.
        let now = self.keepalive.last_activity();
        // Allocates the state only when the response is held for its later blocks.
        let packet = self.requests.update(|state| {
            state.blockwise.server_response(
                config,
                now,
                Some(request.packet()),
                response.to_packet(),
                limits,
            )
        });
        self.answer(request.packet(), packet);
    }

    /// [`StreamSession::respond`], for a request in its wire form (one refused before it could
    /// be handed up, too).
    fn answer(&mut self, request: &Packet, mut response: Packet) {
        if self.phase == Phase::Done {
            return;
        }
        response.set_token(request.get_token().to_vec());
        let bytes = Frame::from_packet(&response).encode();
        self.outbox.push_transmit(bytes);
    }

    /// The connection reached end of file, or was reset, at `now`.
    ///
    /// A peer that leaves while nothing of ours is outstanding ended the session normally:
    /// [`ProtocolEvent::Closed`], no nack. One that leaves with a ping or a request of ours
    /// unanswered — or before its CSM, which our CSM waits for — fails the session with
    /// [`NackReason::NotDeliverable`] (the requests learn it too). After a 7.04 Release the
    /// session drains first: it waits (up to the input timeout) for what of ours is outstanding
    /// and ends normally once nothing is; the peer's close or that timeout judges what is left.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.phase != Phase::Done {
            self.peer_left();
            self.pump();
        }
    }

    /// True while something of ours waits for the peer: our CSM for its CSM, a ping for its
    /// Pong, a request for its response.
    pub fn is_awaiting_peer(&self) -> bool {
        self.phase == Phase::AwaitingCsm
            || self.keepalive.is_awaiting_pong()
            || !self.requests.exchanges.pending.is_empty()
    }

    /// The peer closed the connection or sent its Release.
    fn peer_left(&mut self) {
        let undelivered = self.is_awaiting_peer();
        self.phase = Phase::Done;
        if undelivered {
            self.keepalive.fail(NackReason::NotDeliverable);
        } else {
            self.keepalive.close();
            self.outbox.push_event(ProtocolEvent::Closed);
        }
    }

    /// Advances timers: due pings, pong timeouts, request timeouts, and the input deadlines
    /// (a CSM that never comes, a message never completed).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.csm_deadline.is_some_and(|d| d <= now) {
            self.abort(None, format!("no CSM within {:?}", self.input_timeout));
            self.pump();
            return;
        }
        if self
            .partial_since
            .is_some_and(|since| since + self.input_timeout <= now)
        {
            self.abort(
                None,
                format!("message not completed within {:?}", self.input_timeout),
            );
            self.pump();
            return;
        }
        if let Some(released_at) = self.released_at.filter(|_| self.phase == Phase::Draining) {
            // Draining: no keepalive timers (no new pings). It ends once nothing of ours is
            // outstanding, or at the input timeout with what is left undelivered.
            if !self.is_awaiting_peer() || released_at + self.input_timeout <= now {
                self.peer_left();
                self.pump();
                return;
            }
        } else {
            self.keepalive.handle_timeout(now);
        }
        let mut index = 0;
        while index < self.requests.exchanges.pending.len() {
            if self.requests.exchanges.pending[index].deadline <= now {
                let pending = self.requests.exchanges.pending.remove(index);
                if let Some(token) = self.requests.exchanges.failure_token(pending) {
                    self.outbox.push_event(ProtocolEvent::RequestFailed {
                        token,
                        error: RequestError::TimedOut,
                    });
                }
            } else {
                index += 1;
            }
        }
        // After the timeouts, as the datagram core does, so that the transfer of a request that
        // just timed out goes with it (and the state can be released below) instead of
        // lingering until the next timeout.
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
        if !self.requests.exchanges.observations.is_empty() {
            // RFC 7641 §3.3.1: registrations of stale observations go again, under their
            // tokens; the responses come back as their notifications. Not once the peer
            // released the connection: nothing new of ours goes out then.
            let due = self.requests.exchanges.due_reregistrations(now);
            let due = due.into_iter().filter(|_| self.phase == Phase::Established);
            for (token, registration, timeout) in due.collect::<Vec<_>>() {
                self.requests
                    .exchanges
                    .pending
                    .push(Pending::request(token, now, timeout, true, None));
                self.outbox
                    .push_transmit(Frame::from_packet(&registration).encode());
            }
        }
        // A request that timed out, or a transfer that expired, may have been the last thing
        // held.
        self.requests.release_if_empty();
        self.pump();
    }

    /// Queues the answer to the peer's ping that [`ProtocolEvent::PeerPing`] reported: a 7.03
    /// Pong echoing its token, with Custody when the ping asked for it (RFC 8323 §5.4). Nothing
    /// once the connection is done (RFC 8323 §5.6: nothing follows an Abort). True when the
    /// answer was queued.
    pub fn answer_ping(&mut self, ping: &PeerPing) -> bool {
        if self.phase == Phase::Done {
            return false;
        }
        self.outbox.push_transmit(ping.answer());
        true
    }

    /// Sends a ping now if established and none is outstanding.
    pub fn ping_now(&mut self, now: Instant) {
        if self.phase == Phase::Draining {
            // The peer asked to close: no new ping.
            return;
        }
        self.keepalive.ping_now(now);
        self.pump();
    }

    /// Closes gracefully: queues a 7.04 Release; the driver flushes it and closes.
    pub fn close(&mut self) {
        if self.phase != Phase::Done && !self.keepalive.is_finished() {
            self.phase = Phase::Done;
            self.keepalive.close();
            self.outbox.push_transmit(
                Signal::Release {
                    alternative_addresses: Vec::new(),
                    hold_off: None,
                    diagnostic: String::new(),
                }
                .encode(&[]),
            );
            self.outbox.push_event(ProtocolEvent::Closed);
        }
    }

    /// Fails the session (e.g. TLS alert, write error).
    pub fn fail(&mut self, reason: NackReason) {
        self.phase = Phase::Done;
        self.keepalive.fail(reason);
        self.pump();
    }

    /// Sends 7.05 Abort and fails the session with a protocol error.
    pub fn abort(&mut self, bad_csm_option: Option<u16>, diagnostic: String) {
        if self.phase == Phase::Done {
            return;
        }
        self.outbox.push_transmit(
            Signal::Abort {
                bad_csm_option,
                diagnostic: diagnostic.clone(),
            }
            .encode(&[]),
        );
        self.outbox.push_event(ProtocolEvent::Rejected(diagnostic));
        self.phase = Phase::Done;
        self.keepalive.fail(NackReason::ProtocolError);
    }

    /// True when the driver should flush what is queued and close the connection.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The next bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ProtocolEvent> {
        self.outbox.pop_event()
    }

    /// When [`StreamSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.keepalive.is_finished() || self.phase == Phase::Done {
            return None;
        }
        if let Some(released_at) = self.released_at.filter(|_| self.phase == Phase::Draining) {
            if !self.is_awaiting_peer() {
                // Due at once: the driver first sends the answers its handlers queued.
                return Some(released_at);
            }
            return [
                Some(released_at + self.input_timeout),
                self.requests.exchanges.next_deadline(),
                self.partial_since.map(|since| since + self.input_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
        }
        let lifetime = self.keepalive.config().transmission.exchange_lifetime();
        [
            self.keepalive.poll_timeout(),
            self.requests.exchanges.next_deadline(),
            self.requests.blockwise.next_expiry(lifetime),
            self.csm_deadline,
            self.partial_since.map(|since| since + self.input_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn pump(&mut self) {
        while let Some(ping) = self.keepalive.poll_transmit() {
            self.outbox.push_transmit(ping.encode());
            self.outbox.push_event(ProtocolEvent::PingSent(ping));
        }
        while let Some(event) = self.keepalive.poll_event() {
            self.outbox.push_event(ProtocolEvent::from_keepalive(event));
        }
        if self.keepalive.is_finished() {
            // A failed keepalive (no Pong) ends the connection too: nothing more is answered.
            self.phase = Phase::Done;
        }
    }
}

fn code_name(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keepalive::PingTransmit;
    use crate::proto::message::Status;
    use std::time::Duration;

    fn session(interval: u64) -> (StreamSession, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default().with_interval_secs(interval);
        (StreamSession::new(config, Rng::seeded(9), t0, 1152), t0)
    }

    fn decode(bytes: &[u8]) -> Frame {
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(bytes);
        decoder.next_frame().unwrap().unwrap()
    }

    #[test]
    fn csm_goes_out_first_without_waiting() {
        let (mut s, _) = session(0);
        // 7.01 with Max-Message-Size 1152 and Block-Wise-Transfer (option 4, empty: delta 2,
        // length 0): 40 e1 22 04 80 20.
        assert_eq!(
            s.poll_transmit(),
            Some(vec![0x40, 0xe1, 0x22, 0x04, 0x80, 0x20])
        );
    }

    /// RFC 8323 §5.6: nothing follows an Abort, not even the answer to a ping that arrived in
    /// the same read, before the frame that made us abort.
    #[test]
    fn a_ping_before_an_abort_in_the_same_read_is_not_answered() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x50, 0xe1, 0x23, 0x80, 0x01, 0x00, 0x20]); // libcoap's CSM
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
        // A 7.02 Ping, then 7.06, a signalling code nobody assigned.
        s.handle_bytes(t0, &[0x00, 0xe2, 0x00, 0xe6]);
        let abort = decode(&s.poll_transmit().expect("an Abort"));
        assert_eq!(abort.code, 0xe5);
        let Some(ProtocolEvent::PeerPing(ping)) = s.poll_event() else {
            panic!("the ping is still reported")
        };
        assert!(!s.answer_ping(&ping), "no answer after the Abort");
        assert_eq!(s.poll_transmit(), None);
    }

    #[test]
    fn ping_is_answered_with_pong_echoing_token_and_custody_only_when_asked() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x50, 0xe1, 0x23, 0x80, 0x01, 0x00, 0x20]); // libcoap's CSM
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
        s.handle_bytes(t0, &[0x00, 0xe2]);
        let Some(ProtocolEvent::PeerPing(ping)) = s.poll_event() else {
            panic!()
        };
        s.answer_ping(&ping);
        assert_eq!(s.poll_transmit(), Some(vec![0x00, 0xe3]));
        s.handle_bytes(t0, &[0x12, 0xe2, 0x12, 0x34, 0x20]);
        let Some(ProtocolEvent::PeerPing(ping)) = s.poll_event() else {
            panic!()
        };
        s.answer_ping(&ping);
        assert_eq!(s.poll_transmit(), Some(vec![0x12, 0xe3, 0x12, 0x34, 0x20]));
        assert_eq!(s.peer_max_message_size(), 8_388_864);
    }

    #[test]
    fn first_message_not_a_csm_is_aborted() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x00, 0xe2]);
        let abort = decode(&s.poll_transmit().unwrap());
        assert_eq!(abort.code, 0xe5);
        assert!(s.is_done());
        assert!(matches!(s.poll_event(), Some(ProtocolEvent::Rejected(_))));
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Failed(NackReason::ProtocolError))
        );
    }

    #[test]
    fn unknown_critical_csm_option_gets_bad_csm_option() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        // CSM with option 9 (odd: critical, unknown), empty: Len 1, option delta 9 length 0.
        s.handle_bytes(t0, &[0x10, 0xe1, 0x90]);
        // Abort carrying Bad-CSM-Option = 9
        let abort = decode(&s.poll_transmit().unwrap());
        assert_eq!(abort.code, 0xe5);
        assert!(matches!(
            Signal::parse(&abort),
            Ok(Signal::Abort {
                bad_csm_option: Some(9),
                ..
            })
        ));
        assert!(s.is_done());
    }

    #[test]
    fn elective_csm_option_6_is_accepted() {
        // RFC 8974 Extended-Token-Length (CSM option 6, even: elective) = 8, as a peer that
        // supports extended tokens announces it: ignored, the session is established.
        let (mut s, t0) = session(2);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x20, 0xe1, 0x61, 0x08]);
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
        assert_eq!(s.poll_transmit(), None, "no Abort");
        assert!(s.is_established());
        s.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(s.poll_transmit().map(|p| p[1]), Some(0xe2), "it pings");
    }

    #[test]
    fn unknown_critical_options_in_other_signals_abort_without_bad_csm_option() {
        // Ping, Pong and Release with option 3 (odd, unknown in each).
        for signal in [0xe2, 0xe3, 0xe4] {
            let (mut s, t0) = session(0);
            s.poll_transmit();
            s.handle_bytes(t0, &[0x00, 0xe1]);
            assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
            s.handle_bytes(t0, &[0x10, signal, 0x30]);
            let abort = decode(&s.poll_transmit().unwrap());
            let Ok(Signal::Abort {
                bad_csm_option,
                diagnostic,
            }) = Signal::parse(&abort)
            else {
                panic!("not an Abort: {abort:?}")
            };
            assert_eq!(bad_csm_option, None, "{signal:#04x}");
            assert!(diagnostic.contains("option 3"), "{diagnostic}");
            assert!(s.is_done());
            let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
            assert!(
                events.contains(&ProtocolEvent::Failed(NackReason::ProtocolError)),
                "{events:?}"
            );
        }
    }

    #[test]
    fn an_abort_with_an_unknown_critical_option_is_not_answered() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.poll_event();
        // Abort with option 3 and diagnostic "x".
        s.handle_bytes(t0, &[0x30, 0xe5, 0x30, 0xff, b'x']);
        assert_eq!(s.poll_transmit(), None, "an Abort is not answered");
        assert!(s.is_done());
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            matches!(&events[0], ProtocolEvent::Rejected(why) if why.contains("peer aborted: x"))
        );
        assert_eq!(events[1], ProtocolEvent::Failed(NackReason::NotDeliverable));
    }

    fn established(interval: u64) -> (StreamSession, Instant) {
        let (mut s, t0) = session(interval);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x00, 0xe1]);
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
        (s, t0)
    }

    #[test]
    fn a_stale_observation_registers_again_on_the_connection() {
        let (mut s, t0) = established(0);
        let token = s.send_request(t0, &Request::get("/t").observing(), Duration::from_secs(60));
        let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        let registration = decode(sent.last().unwrap());
        assert_eq!(registration.token, token);
        let answer = |observe: u8| {
            let mut frame = Frame::new(0x45);
            frame.token = token.clone();
            frame.options = vec![(6, vec![observe]), (14, vec![20])];
            frame.payload = vec![observe];
            frame.encode()
        };
        s.handle_bytes(t0, &answer(4));
        std::iter::from_fn(|| s.poll_event()).for_each(drop);
        assert_eq!(s.observations(), 1);
        // Max-Age 20 s and 2 s of grace: then the registration goes again, same token.
        let stale = t0 + Duration::from_secs(22);
        assert_eq!(s.poll_timeout(), Some(stale));
        s.handle_timeout(stale);
        let again = decode(&s.poll_transmit().expect("the registration again"));
        assert_eq!((again.code, &again.token), (0x01, &token));
        assert_eq!(again.option(6), Some(&[][..]), "Observe 0 (empty value)");
        // Its answer, numbered anew, is the next notification.
        s.handle_bytes(stale, &answer(1));
        let notified = std::iter::from_fn(|| s.poll_event()).any(|e| {
            matches!(e, ProtocolEvent::Response { token: ref t, ref response }
                if *t == token && response.payload == [1])
        });
        assert!(notified);
        assert_eq!(s.observations(), 1);
    }

    /// Most connections only ping: CSMs, pings both ways, Pongs, timeouts and a request of the
    /// peer's answered whole never allocate the request state; a request of ours does, until
    /// its response (or its timeout) ends it.
    #[test]
    fn the_request_state_is_allocated_only_while_a_request_of_ours_is_pending() {
        let (mut s, t0) = established(2);
        assert!(!s.holds_request_state(), "CSMs exchanged");
        // The peer pings; we answer.
        s.handle_bytes(t0, &[0x00, 0xe2]);
        let Some(ProtocolEvent::PeerPing(ping)) = s.poll_event() else {
            panic!("the peer's ping is reported")
        };
        assert!(s.answer_ping(&ping));
        // We ping; the peer answers.
        let at = t0 + Duration::from_secs(2);
        s.handle_timeout(at);
        while let Some(bytes) = s.poll_transmit() {
            let frame = decode(&bytes);
            if frame.code == 0xe2 {
                let mut pong = Frame::new(0xe3);
                pong.token = frame.token;
                s.handle_bytes(at, &pong.encode());
            }
        }
        assert_eq!(s.keepalive().stats().pongs, 1);
        s.handle_timeout(at + Duration::from_secs(1));
        let _ = s.poll_timeout();
        s.cancel(at, &[1, 2, 3, 4]);
        assert!(!s.holds_request_state(), "pings, pongs and timeouts");
        // A request of the peer's answered in one message: nothing to keep.
        s.handle_bytes(at, &[0x01, 0x01, 0x5a]); // GET, token 0x5a
        let request = std::iter::from_fn(|| s.poll_event())
            .find_map(|e| match e {
                ProtocolEvent::Request(request) => Some(request),
                _ => None,
            })
            .expect("the request is handed up");
        s.respond(
            &request,
            &Response::new(Status::Content).with_payload(b"ok".to_vec()),
        );
        assert!(!s.holds_request_state(), "a request of the peer's answered");
        // A request of ours holds it until its response.
        let token = s.send_request(at, &Request::get("/a"), Duration::from_secs(60));
        assert!(s.holds_request_state());
        let mut response = Frame::new(0x45);
        response.token = token.clone();
        s.handle_bytes(at, &response.encode());
        assert!(events_of(&mut s)
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { token: t, .. } if *t == token)));
        assert!(!s.holds_request_state(), "released once the response came");
        // ... or until it times out.
        s.send_request(at, &Request::get("/b"), Duration::from_secs(1));
        assert!(s.holds_request_state());
        s.handle_timeout(at + Duration::from_secs(1));
        assert!(events_of(&mut s)
            .iter()
            .any(|e| matches!(e, ProtocolEvent::RequestFailed { .. })));
        assert!(
            !s.holds_request_state(),
            "released once the request timed out"
        );
        assert!(!s.is_done());
    }

    #[test]
    fn a_request_with_an_unknown_method_gets_4_05_and_an_empty_message_nothing() {
        let (mut s, t0) = established(0);
        // Code 0.09, TKL 1, token 0x5a: 4.05 under the same token (RFC 7252 §5.8).
        s.handle_bytes(t0, &[0x01, 0x09, 0x5a]);
        assert_eq!(s.poll_transmit(), Some(vec![0x01, 0x85, 0x5a]));
        // 0.00, an empty message (RFC 8323 §4.4): ignored.
        s.handle_bytes(t0, &[0x00, 0x00]);
        assert_eq!(s.poll_transmit(), None);
    }

    #[test]
    fn request_with_an_unrecognised_critical_option_gets_4_02() {
        let (mut s, t0) = established(0);
        // GET, token 0x5a, Uri-Path "x", option 13: Len 3, TKL 1.
        s.handle_bytes(t0, &[0x31, 0x01, 0x5a, 0xb1, b'x', 0x20]);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(!events
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Request(_))));
        let answer = decode(&s.poll_transmit().unwrap());
        assert_eq!((answer.code, answer.token.as_slice()), (0x82, &[0x5a][..]));
        assert_eq!(answer.payload, b"unrecognised critical option 13");
        assert!(!s.is_done(), "the connection stays up");
    }

    #[test]
    fn response_with_an_unrecognised_critical_option_fails_the_request() {
        let (mut s, t0) = established(0);
        let token = s.send_request(t0, &Request::get("/a"), Duration::from_secs(60));
        s.poll_transmit();
        let mut response = Frame::new(0x45);
        response.token = token.clone();
        response.options = vec![(13, vec![0x0a])];
        response.payload = b"part".to_vec();
        s.handle_bytes(t0, &response.encode());
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(events.contains(&ProtocolEvent::RequestFailed {
            token,
            error: RequestError::UnrecognisedOption { number: 13 },
        }));
        assert!(!events
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.pending_requests(), 0);
        assert!(!s.is_done());
    }

    #[test]
    fn pings_only_after_the_csm_and_fail_without_pong() {
        let (mut s, t0) = session(2);
        s.poll_transmit();
        s.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(s.poll_transmit(), None, "no ping before the peer's CSM");
        s.handle_bytes(t0 + Duration::from_secs(5), &[0x00, 0xe1]);
        s.handle_timeout(t0 + Duration::from_secs(7));
        let ping = s.poll_transmit().unwrap();
        assert_eq!(ping[1], 0xe2);
        s.handle_timeout(t0 + Duration::from_secs(9));
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(events.contains(&ProtocolEvent::Failed(NackReason::TooManyRetries)));
    }

    #[test]
    fn libcoap_pong_answers_our_ping() {
        let (mut s, t0) = session(2);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.handle_timeout(t0 + Duration::from_secs(2));
        while s.poll_transmit().is_some() {}
        assert_eq!(s.poll_event(), Some(ProtocolEvent::Established));
        assert!(matches!(
            s.poll_event(),
            Some(ProtocolEvent::PingSent(PingTransmit::Stream { .. }))
        ));
        s.handle_bytes(t0 + Duration::from_millis(2_005), &[0x10, 0xe3, 0x20]);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Pong {
                rtt: Duration::from_millis(5)
            })
        );
    }

    #[test]
    fn oversized_frame_is_aborted_before_its_body_arrives() {
        let (mut s, t0) = session(0);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.handle_bytes(t0, &[0xf0, 0xff, 0xff, 0xff, 0xff]);
        let abort = decode(&s.poll_transmit().unwrap());
        assert_eq!(abort.code, 0xe5);
        assert!(s.is_done());
    }

    #[test]
    fn release_from_peer_closes_without_nack() {
        let (mut s, t0) = session(0);
        s.handle_bytes(t0, &[0x00, 0xe1, 0x00, 0xe4]);
        assert_eq!(events_of(&mut s), vec![ProtocolEvent::Established]);
        // Draining with nothing of ours out: due at once, so that the driver first sends what
        // its handlers answered to the peer's earlier requests, then the session ends.
        assert_eq!(s.poll_timeout(), Some(t0));
        s.handle_timeout(t0);
        assert_eq!(events_of(&mut s), vec![ProtocolEvent::Closed]);
        assert!(s.is_done());
    }

    #[test]
    fn a_request_sent_before_the_peers_release_is_still_answered() {
        let (mut s, t0) = session(0);
        // CSM, then a GET /x (token 0x01), then Release, in one read.
        s.handle_bytes(t0, &[0x00, 0xe1, 0x21, 0x01, 0x01, 0xb1, b'x', 0x00, 0xe4]);
        let events = events_of(&mut s);
        let Some(ProtocolEvent::Request(request)) = events.get(1) else {
            panic!("the request is handed up: {events:?}");
        };
        while s.poll_transmit().is_some() {}
        s.respond(request, &Response::content_text("x"));
        assert_eq!(decode(&s.poll_transmit().expect("the answer")).code, 0x45);
        s.handle_timeout(t0);
        assert_eq!(events_of(&mut s), vec![ProtocolEvent::Closed]);
    }

    #[test]
    fn after_a_release_an_outstanding_ping_is_waited_for_and_no_new_one_goes_out() {
        let (mut s, t0) = session(2);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.handle_timeout(t0 + Duration::from_secs(2));
        let ping = decode(&s.poll_transmit().expect("the ping"));
        while s.poll_transmit().is_some() {}
        let released = t0 + Duration::from_millis(2_100);
        s.handle_bytes(released, &[0x00, 0xe4]);
        assert!(!s.is_done(), "draining: our ping may still be answered");
        s.ping_now(released);
        assert!(s.poll_transmit().is_none(), "no new ping after a Release");
        // Its Pong comes: the session ends normally, no nack.
        let mut pong = vec![ping.token.len() as u8, 0xe3];
        pong.extend_from_slice(&ping.token);
        s.handle_bytes(released + Duration::from_millis(10), &pong);
        let due = s.poll_timeout().expect("due at once");
        s.handle_timeout(due);
        let events = events_of(&mut s);
        assert!(events.contains(&ProtocolEvent::Closed), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, ProtocolEvent::Failed(_))));
        assert_eq!(s.keepalive().stats().pongs, 1);
    }

    #[test]
    fn after_a_release_what_stays_unanswered_until_the_input_timeout_is_not_deliverable() {
        let (mut s, t0) = session(0);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.send_request(t0, &Request::get("/x"), Duration::from_secs(60));
        s.handle_bytes(t0, &[0x00, 0xe4]);
        assert_eq!(s.poll_timeout(), Some(t0 + DEFAULT_INPUT_TIMEOUT));
        s.handle_timeout(t0 + DEFAULT_INPUT_TIMEOUT);
        let events = events_of(&mut s);
        assert_eq!(
            events.last(),
            Some(&ProtocolEvent::Failed(NackReason::NotDeliverable))
        );
        assert!(s.is_done());
    }

    #[test]
    fn after_a_release_a_request_of_ours_fails_at_once() {
        let (mut s, t0) = session(0);
        s.handle_bytes(t0, &[0x00, 0xe1, 0x00, 0xe4]);
        events_of(&mut s);
        while s.poll_transmit().is_some() {}
        let token = s.send_request(t0, &Request::get("/x"), Duration::from_secs(5));
        assert!(s.poll_transmit().is_none());
        assert_eq!(
            events_of(&mut s),
            vec![ProtocolEvent::RequestFailed {
                token,
                error: RequestError::SessionEnded
            }]
        );
    }

    fn events_of(s: &mut StreamSession) -> Vec<ProtocolEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn a_peer_closing_with_nothing_outstanding_ends_the_session_normally() {
        let (mut s, t0) = session(10);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.handle_eof(t0 + Duration::from_secs(3));
        assert_eq!(
            events_of(&mut s),
            vec![ProtocolEvent::Established, ProtocolEvent::Closed]
        );
        assert!(s.is_done());
        assert_eq!(s.keepalive().stats().failures, 0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_peer_closing_or_releasing_with_a_ping_outstanding_is_not_deliverable() {
        for release in [false, true] {
            let (mut s, t0) = session(2);
            s.handle_bytes(t0, &[0x00, 0xe1]);
            s.handle_timeout(t0 + Duration::from_secs(2));
            while s.poll_transmit().is_some() {}
            assert!(s.is_awaiting_peer());
            let later = t0 + Duration::from_millis(2_500);
            if release {
                // Released, then closed with our ping still unanswered.
                s.handle_bytes(later, &[0x00, 0xe4]);
                s.handle_eof(later + Duration::from_millis(1));
            } else {
                s.handle_eof(later);
            }
            let events = events_of(&mut s);
            assert!(
                matches!(events[1], ProtocolEvent::PingSent(_)),
                "{events:?}"
            );
            assert_eq!(
                [&events[0], &events[2]],
                [
                    &ProtocolEvent::Established,
                    &ProtocolEvent::Failed(NackReason::NotDeliverable)
                ],
                "release: {release}"
            );
            assert_eq!(events.len(), 3);
        }
    }

    #[test]
    fn a_peer_closing_with_a_request_outstanding_is_not_deliverable() {
        let (mut s, t0) = session(0);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.send_request(t0, &Request::get("/x"), Duration::from_secs(5));
        s.handle_eof(t0 + Duration::from_secs(1));
        assert_eq!(
            events_of(&mut s),
            vec![
                ProtocolEvent::Established,
                ProtocolEvent::Failed(NackReason::NotDeliverable)
            ]
        );
    }

    #[test]
    fn a_peer_closing_before_its_csm_is_not_deliverable() {
        let (mut s, t0) = session(0);
        s.handle_eof(t0);
        assert_eq!(
            events_of(&mut s),
            vec![ProtocolEvent::Failed(NackReason::NotDeliverable)]
        );
    }

    #[test]
    fn a_peer_that_never_sends_its_csm_is_aborted() {
        let (mut s, t0) = session(0);
        s.set_input_timeout(Duration::from_secs(3));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        s.handle_timeout(t0 + Duration::from_secs(3));
        assert!(s.is_done());
        let frames: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(decode(frames.last().unwrap()).code, 0xe5);
    }

    #[test]
    fn a_message_never_completed_is_aborted_after_the_input_timeout() {
        let (mut s, t0) = session(0);
        s.set_input_timeout(Duration::from_secs(2));
        s.handle_bytes(t0, &[0x00, 0xe1]);
        // a slow loris: one byte of a 13-byte frame per second
        s.handle_bytes(t0 + Duration::from_secs(1), &[0xd0]);
        s.handle_bytes(t0 + Duration::from_secs(2), &[0x00]);
        assert!(!s.is_done());
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        s.handle_timeout(t0 + Duration::from_secs(3));
        assert!(s.is_done());
    }

    #[test]
    fn completed_messages_reset_the_partial_clock() {
        let (mut s, t0) = session(0);
        s.set_input_timeout(Duration::from_secs(2));
        s.handle_bytes(t0, &[0x00, 0xe1, 0x00]);
        s.handle_bytes(t0 + Duration::from_secs(1), &[0xe2, 0x00]);
        // the Ping completed at 1 s; a new partial frame started then
        s.handle_timeout(t0 + Duration::from_millis(2_500));
        assert!(!s.is_done());
        s.handle_bytes(t0 + Duration::from_millis(2_600), &[0xe2]);
        s.handle_timeout(t0 + Duration::from_secs(4));
        assert!(!s.is_done());
    }

    #[test]
    fn after_a_pong_timeout_nothing_more_is_answered() {
        let (mut s, t0) = session(1);
        s.handle_bytes(t0, &[0x00, 0xe1]);
        s.handle_timeout(t0 + Duration::from_secs(1));
        s.handle_timeout(t0 + Duration::from_secs(2));
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(events.contains(&ProtocolEvent::Failed(NackReason::TooManyRetries)));
        assert!(s.is_done());
        while s.poll_transmit().is_some() {}
        s.handle_bytes(t0 + Duration::from_secs(3), &[0x00, 0xe2, 0x00, 0xe4]);
        assert_eq!(
            s.poll_event(),
            None,
            "no ping handed up, no second terminal event"
        );
        assert_eq!(s.poll_transmit(), None);
    }

    // ---- BERT (RFC 8323 §6) ----

    #[test]
    fn our_csm_announces_block_wise_transfer_and_the_peers_is_remembered() {
        let t0 = Instant::now();
        let mut s = StreamSession::new(
            KeepaliveConfig::default(),
            Rng::seeded(3),
            t0,
            DEFAULT_MAX_MESSAGE_SIZE,
        );
        // Max-Message-Size 65536 (option 2, 3 bytes: 23 01 00 00) and Block-Wise-Transfer
        // (option 4, empty: 20); options and payload are 5 bytes: 50 e1.
        assert_eq!(
            s.poll_transmit(),
            Some(vec![0x50, 0xe1, 0x23, 0x01, 0x00, 0x00, 0x20])
        );
        assert!(!s.peer_block_wise_transfer());
        s.handle_bytes(t0, &[0x50, 0xe1, 0x23, 0x80, 0x01, 0x00, 0x20]); // libcoap's CSM
        assert!(s.peer_block_wise_transfer());
        // CSM options are cumulative (RFC 8323 §5.3): an empty CSM takes nothing back.
        s.handle_bytes(t0, &[0x00, 0xe1]);
        assert!(s.peer_block_wise_transfer());
        assert!(s.is_established());
    }

    /// Carries every frame between `client` and `server` until the client has the response to
    /// `request`. The server stores a PUT's body in `stored` and answers a GET with it. Returns
    /// the response, the frames each way as sent (CSMs left out), and the handler runs.
    fn carry(
        client: &mut StreamSession,
        server: &mut StreamSession,
        t0: Instant,
        request: &Request,
        stored: &mut Vec<u8>,
    ) -> (Response, Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
        client.send_request(t0, request, Duration::from_secs(60));
        let (mut up, mut down, mut handled) = (Vec::new(), Vec::new(), 0);
        for _ in 0..1000 {
            while let Some(bytes) = client.poll_transmit() {
                if decode(&bytes).code != CSM {
                    up.push(bytes.clone());
                }
                server.handle_bytes(t0, &bytes);
            }
            while let Some(event) = server.poll_event() {
                if let ProtocolEvent::Request(incoming) = event {
                    handled += 1;
                    let response = if incoming.request().payload.is_empty() {
                        Response::new(Status::Content).with_payload(stored.clone())
                    } else {
                        *stored = incoming.request().payload.clone();
                        Response::new(Status::Changed)
                    };
                    server.respond(&incoming, &response);
                }
            }
            while let Some(bytes) = server.poll_transmit() {
                if decode(&bytes).code != CSM {
                    down.push(bytes.clone());
                }
                client.handle_bytes(t0, &bytes);
            }
            while let Some(event) = client.poll_event() {
                match event {
                    ProtocolEvent::Response { response, .. } => {
                        return (*response, up, down, handled)
                    }
                    ProtocolEvent::RequestFailed { error, .. } => panic!("{error:?}"),
                    _ => {}
                }
            }
        }
        panic!("no response")
    }

    /// The Block1 or Block2 option `number` of each frame, with its payload's length.
    fn blocks(frames: &[Vec<u8>], number: u16) -> Vec<(u32, bool, u8, usize)> {
        frames
            .iter()
            .map(|bytes| {
                let frame = decode(bytes);
                let block = blockwise::BlockValue::parse(frame.option(number).unwrap()).unwrap();
                (block.num, block.more, block.szx, frame.payload.len())
            })
            .collect()
    }

    #[test]
    fn with_bert_offered_both_ways_large_bodies_go_in_bert_blocks_both_ways() {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default();
        let mut client = StreamSession::new(config, Rng::seeded(11), t0, 4096);
        let mut server = StreamSession::new(config, Rng::seeded(12), t0, 4096);
        // The CSMs first: a body is sized when its first block goes, by what is known then.
        server.handle_bytes(t0, &client.poll_transmit().unwrap());
        client.handle_bytes(t0, &server.poll_transmit().unwrap());
        assert!(client.peer_block_wise_transfer() && server.peer_block_wise_transfer());
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 249) as u8).collect();
        let mut stored = Vec::new();
        let put = Request::put("/echo", body.clone());
        let (response, up, down, handled) = carry(&mut client, &mut server, t0, &put, &mut stored);
        assert_eq!((response.status, handled), (Status::Changed, 1));
        assert_eq!(stored, body, "reassembled once, whole");
        // (4096 - 128) / 1024 = 3: each BERT block carries 3072 bytes, its NUM counting
        // 1024-byte blocks; the last carries the 1568 left.
        let mut expected: Vec<_> = (0..6).map(|i| (3 * i, true, 7, 3072)).collect();
        expected.push((18, false, 7, 1568));
        assert_eq!(blocks(&up, wire_options::BLOCK1), expected);
        // The first exactly: Len 14 with 3085 - 269 = 0x0b00, TKL 4; PUT; the token; Uri-Path
        // "echo" (b4); Block1 (27, delta 16: d1 03) 0/1/BERT = 0f; Size1 (60, delta 33:
        // d2 14) 20000 = 4e 20; the payload marker.
        let token = decode(&up[0]).token;
        let mut head = vec![0xe4, 0x0b, 0x00, 0x03];
        head.extend_from_slice(&token);
        head.extend_from_slice(&[0xb4, b'e', b'c', b'h', b'o', 0xd1, 0x03, 0x0f]);
        head.extend_from_slice(&[0xd2, 0x14, 0x4e, 0x20, 0xff]);
        assert_eq!(&up[0][..head.len()], head.as_slice());
        assert_eq!(up[0].len(), head.len() + 3072);
        // Each 2.31 echoes the BERT block it continues (RFC 8323 §6).
        let continues: Vec<_> = down[..6]
            .iter()
            .map(|b| {
                (
                    decode(b).code,
                    decode(b).option(wire_options::BLOCK1).map(<[u8]>::to_vec),
                )
            })
            .collect();
        let echoed: Vec<_> = (0..6u8)
            .map(|i| (0x5f, Some(vec![(3 * i) << 4 | 0x0f])))
            .collect();
        assert_eq!(continues, echoed);
        // And back: the GET's response in BERT blocks of 3072, the client asking for NUM 3, 6..
        let get = Request::get("/echo");
        let (response, up, down, handled) = carry(&mut client, &mut server, t0, &get, &mut stored);
        assert_eq!((response.payload == body, handled), (true, 1));
        assert_eq!(blocks(&down, wire_options::BLOCK2), expected);
        let asked: Vec<_> = blocks(&up[1..], wire_options::BLOCK2)
            .into_iter()
            .map(|(num, _, szx, _)| (num, szx))
            .collect();
        assert_eq!(asked, (1..7).map(|i| (3 * i, 7)).collect::<Vec<_>>());
        assert!(up.iter().chain(&down).all(|frame| frame.len() <= 4096));
    }

    #[test]
    fn without_bert_offered_blocks_are_ordinary_and_szx_7_is_refused() {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default();
        // A peer announcing Max-Message-Size 4096 (22 10 00) but no Block-Wise-Transfer.
        let mut s = StreamSession::new(config, Rng::seeded(13), t0, 65_536);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x30, 0xe1, 0x22, 0x10, 0x00]);
        s.send_request(
            t0,
            &Request::put("/echo", vec![1; 5000]),
            Duration::from_secs(60),
        );
        let first = decode(&s.poll_transmit().unwrap());
        assert_eq!(
            first.option(wire_options::BLOCK1),
            Some(&[0x0e][..]),
            "0/1/1024"
        );
        assert_eq!(first.payload.len(), 1024);
        // Its PUT with Block1 0/1/BERT: 4.00, SZX 7 being reserved without BERT.
        let mut put = Frame::new(0x03);
        put.token = vec![0x01];
        put.options = vec![(11, b"echo".to_vec()), (wire_options::BLOCK1, vec![0x0f])];
        put.payload = vec![2; 1024];
        s.handle_bytes(t0, &put.encode());
        let answer = decode(&s.poll_transmit().unwrap());
        assert_eq!((answer.code, answer.token), (0x80, vec![0x01]));
        // A peer with Block-Wise-Transfer but the base Max-Message-Size offers no BERT (RFC
        // 8323 §5.3.2): ordinary blocks of 1024.
        let mut s = StreamSession::new(config, Rng::seeded(14), t0, 65_536);
        s.poll_transmit();
        s.handle_bytes(t0, &[0x40, 0xe1, 0x22, 0x04, 0x80, 0x20]);
        s.send_request(
            t0,
            &Request::put("/echo", vec![1; 5000]),
            Duration::from_secs(60),
        );
        let first = decode(&s.poll_transmit().unwrap());
        assert_eq!(first.option(wire_options::BLOCK1), Some(&[0x0e][..]));
    }
}
