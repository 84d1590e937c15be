//! The sans-IO protocol of one session, per transport family: decoding what the peer sent,
//! the protocol's answers (RST, Pong, CSM, Abort, Release), requests handed up, and the keepalive
//! machine fed and polled. Drivers move bytes and time in and out; every decision is made here.

pub mod datagram;
pub mod exchange;
pub mod stream;

use std::time::Duration;

use crate::error::NackReason;
use crate::handler::PeerPing;
use crate::message::Response;
use crate::protocol::exchange::RequestError;

/// Something a session's protocol reports to its driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ProtocolEvent {
    /// The peer pinged us. The driver runs the ping handler and, unless it suppresses the answer,
    /// sends `answer` (already encoded: an RST or a 7.03 Pong).
    PeerPing {
        /// The ping, for the handler.
        ping: PeerPing,
        /// The protocol's answer.
        answer: Vec<u8>,
    },
    /// One of our pings was answered.
    Pong {
        /// Round-trip time.
        rtt: Duration,
    },
    /// A stream ping timed out without failing the session yet.
    PingUnanswered {
        /// Consecutive unanswered pings.
        count: u32,
    },
    /// The session is ready (stream: the peer's CSM arrived).
    Established,
    /// The peer sent a request; answer it with the session's `respond`.
    Request(coap_lite::Packet),
    /// A response (or a notification) to our request with `token`.
    Response {
        /// The token of our request.
        token: Vec<u8>,
        /// The response.
        response: Response,
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
    /// The session ended gracefully (Release sent or received, or closed by us).
    Closed,
    /// The session failed; the driver runs the nack handler and removes it.
    Failed(NackReason),
    /// Something the peer sent was rejected (already answered as the protocol requires); for logs.
    Rejected(String),
}

impl ProtocolEvent {
    /// Translates a keepalive event.
    pub(crate) fn from_keepalive(event: crate::keepalive::KeepaliveEvent) -> Self {
        use crate::keepalive::KeepaliveEvent;
        match event {
            KeepaliveEvent::Pong { rtt } => ProtocolEvent::Pong { rtt },
            KeepaliveEvent::Unanswered { count } => ProtocolEvent::PingUnanswered { count },
            KeepaliveEvent::Failed(reason) => ProtocolEvent::Failed(reason),
        }
    }
}
