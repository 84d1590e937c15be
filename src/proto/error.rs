//! Errors of the crate and the reasons a session fails.

use std::fmt;
use std::io;

/// Why a session was given up: the reason passed to the nack handler.
///
/// A session that fails is closed and removed from its context's session table after the nack
/// handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NackReason {
    /// The peer stopped answering: `max_unanswered` consecutive keepalive pings (default 1) got no
    /// answer — over UDP / DTLS each after all its RFC 7252 retransmissions, over TCP / TLS each
    /// within the pong timeout — or a Confirmable request, which stands in for the ping while it
    /// is out, exhausted its retransmissions.
    TooManyRetries,
    /// Something of ours was left undelivered: the peer closed or reset the connection (or sent
    /// 7.04 Release) while a ping or request of ours was outstanding, or before its CSM; or a
    /// datagram could not be sent. A peer that closes with nothing of ours outstanding ended the
    /// session normally: [`SessionEvent::Closed`](crate::SessionEvent::Closed), no nack.
    NotDeliverable,
    /// The peer answered our Confirmable message with a Reset.
    Rst,
    /// The (D)TLS handshake failed, timed out, or the peer sent a fatal alert.
    TlsFailed,
    /// The network reported the peer unreachable (an ICMP destination or port unreachable for
    /// a UDP session's peer, libcoap's `COAP_NACK_ICMP_ISSUE`), under the default
    /// [`IcmpPolicy::Fail`](crate::proto::config::IcmpPolicy::Fail).
    IcmpError,
    /// The peer violated the protocol badly enough that the session was aborted (for instance a
    /// first TCP message that was not a CSM); a 7.05 Abort was sent where the transport has one.
    ProtocolError,
}

impl NackReason {
    /// A short human-readable description, as the command line prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            NackReason::TooManyRetries => "too many retries",
            NackReason::NotDeliverable => "not deliverable",
            NackReason::Rst => "reset by peer",
            NackReason::TlsFailed => "TLS failed",
            NackReason::IcmpError => "destination unreachable (ICMP)",
            NackReason::ProtocolError => "protocol error",
        }
    }

    /// A short machine-readable name, in snake case (`too_many_retries`): the label value of
    /// the `coap_nacks_total` metric and the `reason` of the command line's JSON output.
    pub fn label(self) -> &'static str {
        match self {
            NackReason::TooManyRetries => "too_many_retries",
            NackReason::NotDeliverable => "not_deliverable",
            NackReason::Rst => "rst",
            NackReason::TlsFailed => "tls_failed",
            NackReason::IcmpError => "icmp_error",
            NackReason::ProtocolError => "protocol_error",
        }
    }
}

impl fmt::Display for NackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A URI could not be parsed or names an unsupported scheme.
    #[error("invalid URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is invalid or incomplete (for example a secured endpoint without credentials).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificates or keys could not be generated, read or parsed.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// The (D)TLS handshake failed or timed out, or the peer sent a fatal alert.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The operation did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The session failed; the reason is the one given to the nack handler.
    #[error("session failed: {0}")]
    SessionFailed(NackReason),
    /// The session or context was closed before the operation completed.
    #[error("session closed")]
    Closed,
    /// The peer rejected our message with an RST.
    #[error("rejected by the peer (RST)")]
    Reset,
    /// The peer sent something that violates the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The response to our request carried a critical option this stack does not recognise
    /// (RFC 7252 §5.4.1): it was rejected
    /// rather than delivered, and the request failed. The session itself is unharmed.
    #[error(
        "response rejected: it carries {}, which this stack does not support",
        crate::proto::wire::options::name(*number)
    )]
    UnrecognisedOption {
        /// The option number.
        number: u16,
    },
    /// An option value its option does not allow (a length out of range, text that is not
    /// UTF-8, a second value of a non-repeatable option): from a builder such as
    /// [`Request::with_option`](crate::Request::with_option), or from
    /// [`Session::request`](crate::Session::request), which did not send the request.
    #[error("invalid option: {0}")]
    InvalidOption(#[from] crate::proto::option::OptionError),
}

impl Error {
    /// True when the error means that a deadline passed (a handshake or request timeout, or a
    /// keepalive that got no answer).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Timeout(_) | Error::SessionFailed(NackReason::TooManyRetries)
        )
    }

    /// The nack reason this error corresponds to, for reporting a failed session.
    pub fn nack_reason(&self) -> NackReason {
        match self {
            Error::Tls(_) | Error::Certificate(_) => NackReason::TlsFailed,
            Error::SessionFailed(reason) => *reason,
            Error::Timeout(_) => NackReason::TooManyRetries,
            Error::Protocol(_) => NackReason::ProtocolError,
            Error::Reset => NackReason::Rst,
            _ => NackReason::NotDeliverable,
        }
    }
}

/// A `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
