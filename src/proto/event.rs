//! What a session's protocol reports to its driver ([`ProtocolEvent`], with the peer's pings it
//! carries), and what every driver asks of a session's protocol ([`SessionProtocol`]).

use std::time::Duration;

use coap_lite::{MessageClass, Packet, ResponseType};

use crate::proto::error::NackReason;
use crate::proto::exchange::RequestError;
use crate::proto::message::{Request, Response};
use crate::proto::wire::options::OptionProblem;

/// A ping the peer sent us.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerPing {
    /// An empty Confirmable (or Non-confirmable) message over UDP / DTLS.
    Datagram {
        /// Its Message ID, echoed by our RST.
        message_id: u16,
    },
    /// A 7.02 Ping over TCP / TLS.
    Stream {
        /// Its token, echoed by our Pong.
        token: Vec<u8>,
        /// Whether it asked for Custody.
        custody: bool,
    },
}

impl PeerPing {
    /// The protocol's answer, encoded: an RST with the ping's Message ID over UDP / DTLS, a
    /// 7.03 Pong with its token (and Custody, when the ping asked for it) over TCP / TLS.
    /// Queued by the session's `answer_ping`.
    pub(crate) fn answer(&self) -> Vec<u8> {
        match self {
            PeerPing::Datagram { message_id } => {
                crate::proto::wire::udp::reset(*message_id).to_vec()
            }
            PeerPing::Stream { token, custody } => {
                crate::proto::wire::signal::Signal::Pong { custody: *custody }.encode(token)
            }
        }
    }
}

/// Something a session's protocol reports to its driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ProtocolEvent {
    /// The peer pinged us. The driver runs the ping handler and, unless it suppresses the answer,
    /// has the session queue it with `answer_ping` (an RST or a 7.03 Pong).
    PeerPing(PeerPing),
    /// One of our pings was answered.
    Pong {
        /// Round-trip time.
        rtt: Duration,
    },
    /// We sent this ping (or retransmitted it): for the event handler and the live statistics.
    PingSent(crate::proto::keepalive::PingTransmit),
    /// A ping went unanswered (stream: its pong timeout; datagram: every retransmission)
    /// without failing the session yet (`max_unanswered` above 1).
    PingUnanswered {
        /// Consecutive unanswered pings.
        count: u32,
    },
    /// The session is ready (stream: the peer's CSM arrived).
    Established,
    /// The peer sent a request; answer it with the session's `respond` (or `respond_later`,
    /// then `respond_separate`).
    Request(Box<IncomingRequest>),
    /// A response (or a notification) to our request with `token`.
    Response {
        /// The token of our request.
        token: Vec<u8>,
        /// The response (boxed: events stay small, and sessions hold a queue of them).
        response: Box<Response>,
    },
    /// Our request with `token` ended without a response.
    RequestFailed {
        /// The token of our request.
        token: Vec<u8>,
        /// Why.
        error: RequestError,
    },
    /// The observer with `token` rejected a notification: forget it.
    ObserverGone {
        /// The token of its registration.
        token: Vec<u8>,
    },
    /// The session ended gracefully: closed by us, or by the peer (Release, end of the
    /// connection) with nothing of ours outstanding.
    Closed,
    /// The session failed; the driver runs the nack handler and removes it.
    Failed(NackReason),
    /// Something the peer sent was rejected (already answered as the protocol requires); for logs.
    Rejected(String),
}

impl ProtocolEvent {
    /// Translates a keepalive event.
    pub(crate) fn from_keepalive(event: crate::proto::keepalive::KeepaliveEvent) -> Self {
        use crate::proto::keepalive::KeepaliveEvent;
        match event {
            KeepaliveEvent::Pong { rtt } => ProtocolEvent::Pong { rtt },
            KeepaliveEvent::Unanswered { count } => ProtocolEvent::PingUnanswered { count },
            KeepaliveEvent::Failed(reason) => ProtocolEvent::Failed(reason),
        }
    }
}

/// A [`ProtocolEvent`] as a datagram session holds the oldest one it queued (see
/// `keepalive::Outbox`): 16 bytes, not 40. The events of an idle session (a peer's ping, a pong,
/// a ping sent, a failure) and requests are held as they are; the rarer ones (responses to our
/// requests, rejections) are boxed.
#[derive(Debug)]
pub(crate) enum QueuedEvent {
    PeerPing {
        message_id: u16,
    },
    /// A [`ProtocolEvent::Pong`] whose RTT fits in 64 bits of nanoseconds (584 years).
    Pong {
        rtt_nanos: u64,
    },
    PingSent(crate::proto::keepalive::PingTransmit),
    PingUnanswered {
        count: u32,
    },
    Established,
    Request(Box<IncomingRequest>),
    Closed,
    Failed(NackReason),
    Other(Box<ProtocolEvent>),
}

impl From<ProtocolEvent> for QueuedEvent {
    fn from(event: ProtocolEvent) -> Self {
        match event {
            ProtocolEvent::PeerPing(PeerPing::Datagram { message_id }) => {
                QueuedEvent::PeerPing { message_id }
            }
            ProtocolEvent::Pong { rtt } => match u64::try_from(rtt.as_nanos()) {
                Ok(rtt_nanos) => QueuedEvent::Pong { rtt_nanos },
                Err(_) => QueuedEvent::Other(Box::new(event)),
            },
            ProtocolEvent::PingSent(ping) => QueuedEvent::PingSent(ping),
            ProtocolEvent::PingUnanswered { count } => QueuedEvent::PingUnanswered { count },
            ProtocolEvent::Established => QueuedEvent::Established,
            ProtocolEvent::Request(request) => QueuedEvent::Request(request),
            ProtocolEvent::Closed => QueuedEvent::Closed,
            ProtocolEvent::Failed(reason) => QueuedEvent::Failed(reason),
            other => QueuedEvent::Other(Box::new(other)),
        }
    }
}

impl From<crate::proto::keepalive::KeepaliveEvent> for QueuedEvent {
    /// As [`ProtocolEvent::from_keepalive`], without building the `ProtocolEvent`.
    fn from(event: crate::proto::keepalive::KeepaliveEvent) -> Self {
        use crate::proto::keepalive::KeepaliveEvent;
        match event {
            KeepaliveEvent::Pong { rtt } => match u64::try_from(rtt.as_nanos()) {
                Ok(rtt_nanos) => QueuedEvent::Pong { rtt_nanos },
                Err(_) => QueuedEvent::Other(Box::new(ProtocolEvent::Pong { rtt })),
            },
            KeepaliveEvent::Unanswered { count } => QueuedEvent::PingUnanswered { count },
            KeepaliveEvent::Failed(reason) => QueuedEvent::Failed(reason),
        }
    }
}

impl From<QueuedEvent> for ProtocolEvent {
    fn from(event: QueuedEvent) -> Self {
        match event {
            QueuedEvent::PeerPing { message_id } => {
                ProtocolEvent::PeerPing(PeerPing::Datagram { message_id })
            }
            QueuedEvent::Pong { rtt_nanos } => ProtocolEvent::Pong {
                rtt: Duration::from_nanos(rtt_nanos),
            },
            QueuedEvent::PingSent(ping) => ProtocolEvent::PingSent(ping),
            QueuedEvent::PingUnanswered { count } => ProtocolEvent::PingUnanswered { count },
            QueuedEvent::Established => ProtocolEvent::Established,
            QueuedEvent::Request(request) => ProtocolEvent::Request(request),
            QueuedEvent::Closed => ProtocolEvent::Closed,
            QueuedEvent::Failed(reason) => ProtocolEvent::Failed(reason),
            QueuedEvent::Other(event) => *event,
        }
    }
}

/// A request the peer sent, as its session handed it up in [`ProtocolEvent::Request`]: the
/// [`Request`], and what the session needs to answer it (over UDP its Message ID and type,
/// which pick a piggybacked or a Non-confirmable answer). Pass it back to the session's
/// `respond` or `respond_later`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingRequest {
    request: Request,
    packet: Packet,
}

impl IncomingRequest {
    /// The request in `packet`; `None` when the packet is no request.
    pub(crate) fn new(packet: Packet) -> Option<Self> {
        let request = Request::from_packet(&packet)?;
        Some(IncomingRequest { request, packet })
    }

    /// The request, parsed.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request, parsed, without what answering it takes.
    pub fn into_request(self) -> Request {
        self.request
    }

    /// Every option the request carried as (number, value), in ascending number order and, for
    /// one number, in the order they arrived, exactly as they arrived (unlike
    /// [`Request::all_options`], which gives the fields' options as the fields hold them).
    pub fn options(&self) -> impl Iterator<Item = (u16, &[u8])> {
        crate::proto::wire::options::packet_options(&self.packet)
    }

    /// The message as it arrived (type, Message ID, token), for the answer.
    pub(crate) fn packet(&self) -> &Packet {
        &self.packet
    }
}

/// What the drivers ask of a session's protocol, whatever its transport family. Both
/// [`DatagramSession`](crate::proto::datagram::DatagramSession) and [`StreamSession`](crate::proto::stream::StreamSession) implement it by delegating to
/// their own methods of the same names. Sealed: the drivers rely on what those two do, and
/// methods are added as the protocol grows.
pub trait SessionProtocol: sealed::Sealed {
    /// The keepalive machine (read-only).
    fn keepalive(&self) -> &crate::proto::keepalive::Keepalive;
    /// The keepalive machine, for commands.
    fn keepalive_mut(&mut self) -> &mut crate::proto::keepalive::Keepalive;
    /// Sends a ping now if none is outstanding.
    fn ping_now(&mut self, now: std::time::Instant);
    /// Queues the protocol's answer to the peer's ping (an RST or a 7.03 Pong); false when the
    /// session is past answering.
    fn answer_ping(&mut self, ping: &PeerPing) -> bool;
    /// Ends the session gracefully.
    fn close(&mut self);
    /// Sends a request; returns its token.
    fn send_request(
        &mut self,
        now: std::time::Instant,
        request: &crate::proto::message::Request,
        timeout: Duration,
    ) -> Vec<u8>;
    /// Stops waiting for the response to `token`.
    fn cancel(&mut self, now: std::time::Instant, token: &[u8]);
    /// Sends a notification to the observer with `token`.
    fn notify(&mut self, token: &[u8], response: &Response);
    /// Answers a request now.
    fn respond(&mut self, request: &IncomingRequest, response: &Response);
    /// Acknowledges a request whose answer comes later.
    fn respond_later(&mut self, request: &IncomingRequest);
    /// Sends the separate response to the request with `token`.
    fn respond_separate(
        &mut self,
        now: std::time::Instant,
        token: &[u8],
        confirmable: bool,
        response: &Response,
    );
}

mod sealed {
    /// Implemented by the crate's session protocols only.
    pub trait Sealed {}
}

macro_rules! delegate_session_protocol {
    ($t:ty) => {
        impl sealed::Sealed for $t {}

        impl SessionProtocol for $t {
            fn keepalive(&self) -> &crate::proto::keepalive::Keepalive {
                <$t>::keepalive(self)
            }
            fn keepalive_mut(&mut self) -> &mut crate::proto::keepalive::Keepalive {
                <$t>::keepalive_mut(self)
            }
            fn ping_now(&mut self, now: std::time::Instant) {
                <$t>::ping_now(self, now)
            }
            fn answer_ping(&mut self, ping: &PeerPing) -> bool {
                <$t>::answer_ping(self, ping)
            }
            fn close(&mut self) {
                <$t>::close(self)
            }
            fn send_request(
                &mut self,
                now: std::time::Instant,
                request: &crate::proto::message::Request,
                timeout: Duration,
            ) -> Vec<u8> {
                <$t>::send_request(self, now, request, timeout)
            }
            fn cancel(&mut self, now: std::time::Instant, token: &[u8]) {
                <$t>::cancel(self, now, token)
            }
            fn notify(&mut self, token: &[u8], response: &Response) {
                <$t>::notify(self, token, response)
            }
            fn respond(&mut self, request: &IncomingRequest, response: &Response) {
                <$t>::respond(self, request, response)
            }
            fn respond_later(&mut self, request: &IncomingRequest) {
                <$t>::respond_later(self, request)
            }
            fn respond_separate(
                &mut self,
                now: std::time::Instant,
                token: &[u8],
                confirmable: bool,
                response: &Response,
            ) {
                <$t>::respond_separate(self, now, token, confirmable, response)
            }
        }
    };
}

delegate_session_protocol!(crate::proto::datagram::DatagramSession);
delegate_session_protocol!(crate::proto::stream::StreamSession);

/// The answer to a request whose options stop it from being processed: 4.02 Bad Option for an
/// unrecognised critical option (RFC 7252 §5.4.1), 5.05 Proxying Not Supported for a proxy
/// request (§5.10.2). Its diagnostic payload (§5.5.2: text, no Content-Format) names the option,
/// so that the peer's user learns what was refused.
pub(crate) fn option_rejection(problem: OptionProblem) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(match problem {
        OptionProblem::ProxyingNotSupported { .. } => ResponseType::ProxyingNotSupported,
        _ => ResponseType::BadOption,
    });
    packet.payload = problem.to_string().into_bytes();
    packet
}

/// A request code (class 0, not 0.00 Empty) that names no method this stack knows (0.08 to
/// 0.31): RFC 7252 §5.8 answers it 4.05 Method Not Allowed.
pub(crate) fn is_unknown_method(code: u8) -> bool {
    code >> 5 == 0 && code != 0
}

/// A response code of class 2, 4 or 5 that coap-lite does not name (4.17, 2.10 ...): RFC 7252
/// §5.9 treats it as a response of its class (the generic c.00), so it is handed up as one.
pub(crate) fn is_unknown_response(code: u8) -> bool {
    matches!(code >> 5, 2 | 4 | 5)
}

/// The 4.05 Method Not Allowed of a request whose method is unknown (RFC 7252 §5.8).
pub(crate) fn method_not_allowed() -> coap_lite::Packet {
    crate::proto::message::Response::new(crate::proto::message::Status::MethodNotAllowed)
        .to_packet()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keepalive::PingTransmit;

    #[test]
    fn a_queued_event_is_the_event_it_was() {
        let events = [
            ProtocolEvent::PeerPing(PeerPing::Datagram { message_id: 7 }),
            ProtocolEvent::PeerPing(PeerPing::Stream {
                token: vec![1, 2],
                custody: true,
            }),
            ProtocolEvent::Pong {
                rtt: Duration::new(3, 123_456_789),
            },
            // Beyond 64 bits of nanoseconds: boxed, not truncated.
            ProtocolEvent::Pong { rtt: Duration::MAX },
            ProtocolEvent::PingSent(PingTransmit::Datagram {
                message_id: 9,
                retransmission: true,
            }),
            ProtocolEvent::PingUnanswered { count: 2 },
            ProtocolEvent::Established,
            ProtocolEvent::Closed,
            ProtocolEvent::Failed(NackReason::Rst),
            ProtocolEvent::Rejected("why".into()),
            ProtocolEvent::ObserverGone { token: vec![3] },
        ];
        let mut get = Packet::new();
        get.header.code = MessageClass::Request(coap_lite::RequestType::Get);
        let request = IncomingRequest::new(get).expect("a GET is a request");
        let events = events
            .into_iter()
            .chain([ProtocolEvent::Request(Box::new(request))]);
        for event in events {
            let queued = QueuedEvent::from(event.clone());
            assert_eq!(ProtocolEvent::from(queued), event);
        }
        assert!(std::mem::size_of::<QueuedEvent>() <= 16);
    }

    #[test]
    fn a_keepalive_event_is_queued_as_the_event_it_translates_to() {
        use crate::proto::keepalive::KeepaliveEvent;
        for event in [
            KeepaliveEvent::Pong {
                rtt: Duration::from_nanos(1_234_567),
            },
            KeepaliveEvent::Pong { rtt: Duration::MAX },
            KeepaliveEvent::Unanswered { count: 3 },
            KeepaliveEvent::Failed(NackReason::TooManyRetries),
        ] {
            assert_eq!(
                ProtocolEvent::from(QueuedEvent::from(event)),
                ProtocolEvent::from_keepalive(event)
            );
        }
    }
}
