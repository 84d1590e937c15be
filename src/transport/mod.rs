//! The tokio drivers: the only code that touches sockets. Each moves bytes and time between a
//! socket and a sans-IO session protocol, and hands the protocol's events to the runtime's
//! [`dispatch`](crate::runtime::dispatch). They take the [`Runtime`], never the `Context`.
//!
//! `udp` and `tcp` are the two drivers; `dtls` and `tls` run them over secured connections,
//! which `dtls_conn` and `tls_conn` set up (handshakes with deadlines, a DTLS listener that
//! handshakes with many peers at once).

pub(crate) mod dtls;
pub(crate) mod dtls_conn;
#[cfg(test)]
mod libcoap_handshake_tests;
pub(crate) mod stream;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod tls_conn;
pub(crate) mod tls_server_stream;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::proto::error::NackReason;
use crate::proto::keepalive::Counters;
use crate::runtime::dispatch::session_failed;
use crate::runtime::session::{EndpointLink, Role, Session, Transport};
use crate::runtime::Runtime;

/// A listening endpoint of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport it serves.
    pub transport: Transport,
    /// The address it is bound to (with the real port when port 0 was asked for).
    pub local_addr: SocketAddr,
}

/// Reports a session that failed before it started (a (D)TLS handshake that failed or timed
/// out, a connection refused) like any other failed session: it is registered, the nack handler
/// runs with `reason` (and `cause` in [`Session::failure_cause`]), and it leaves the table.
pub(crate) fn report_failed_start(
    rt: &Runtime,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    role: Role,
    reason: NackReason,
    cause: Option<String>,
) -> Session {
    let now = Instant::now();
    // Nobody serves its commands: the session is over before anyone could send one.
    let session = Session::new(
        rt.next_session_id(),
        peer,
        transport,
        role,
        EndpointLink::unserved(local),
        0,
        now,
    );
    if let Some(cause) = cause {
        session.set_failure_cause(cause);
    }
    rt.register(&session);
    session.publish_stats((&Counters::default(), true), false, false);
    // As the dispatch ends every failed session; nothing of it is waiting.
    session_failed(rt, &session, reason);
    session
}

/// Sleeps until the earlier of two deadlines (a session table's next one and a drain's),
/// for ever when neither is set: the timer branch of every endpoint driver's wait.
pub(crate) async fn sleep_until_earlier(a: Option<Instant>, b: Option<Instant>) {
    let deadline = match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The unspecified address of `peer`'s family, for a session whose local end never existed.
pub(crate) fn unspecified_like(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    }
}

/// The sessions of an endpoint that runs one connection per session (DTLS, TCP, TLS), held to
/// the context's `max_sessions`: a peer beyond it is refused (its connection closed), as a full
/// UDP table refuses new peers.
#[derive(Debug, Clone)]
pub(crate) struct SessionLimit {
    live: Arc<AtomicUsize>,
    max: usize,
}

impl SessionLimit {
    pub(crate) fn new(rt: &Runtime) -> SessionLimit {
        SessionLimit {
            live: Arc::new(AtomicUsize::new(0)),
            max: rt.settings.max_sessions,
        }
    }

    /// A place for one more session, given back when the returned guard drops; `None` when
    /// the endpoint is full.
    pub(crate) fn admit(&self) -> Option<Admitted> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(Arc::clone(&self.live)))
    }
}

/// One admitted session's place in its endpoint's [`SessionLimit`].
#[derive(Debug)]
pub(crate) struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
