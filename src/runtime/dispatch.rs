//! What every driver does the same way with a session: apply the application's commands to its
//! protocol, and turn each of the protocol's events into action — the handlers and event
//! receivers run, and what they decided goes back into the protocol (a ping's answer, a
//! response) or to the waiters of our requests. Drivers only move bytes and time.

use std::time::Instant;

use crate::proto::error::{Error, NackReason};
use crate::proto::exchange::RequestError;
use crate::proto::keepalive::PingTransmit;
use crate::proto::{ProtocolEvent, SessionProtocol};
use crate::runtime::handlers::SessionEvent;
use crate::runtime::resource::Routed;
use crate::runtime::session::{Command, Session, SessionState};
use crate::runtime::waiters::{Delivery, Waiters};
use crate::runtime::Runtime;

/// Applies one command of the application to the session's protocol.
pub(crate) fn apply_command<P: SessionProtocol>(
    rt: &Runtime,
    core: &mut P,
    waiters: &mut Waiters,
    session: &Session,
    now: Instant,
    command: Command,
) {
    match command {
        Command::SetKeepaliveInterval(interval) => core.keepalive_mut().set_interval(interval),
        Command::SetPongTimeout(timeout) => core.keepalive_mut().set_pong_timeout(Some(timeout)),
        Command::SetMaxUnanswered(n) => core.keepalive_mut().set_max_unanswered(n),
        Command::InheritKeepalive(config) => core.keepalive_mut().inherit_config(config),
        Command::MarkActive => {
            core.keepalive_mut().mark_active(now);
            session.note_receipt(now);
        }
        Command::PingNow { counted } => {
            core.ping_now(now);
            // Published now, with the ping `Session::ping` counted settled in the same step.
            let awaiting_pong = core.keepalive().is_awaiting_pong();
            let keepalive = core.keepalive_mut();
            // Marks them published.
            let _ = keepalive.poll_counters();
            session.publish_stats(keepalive.counters(), awaiting_pong, counted);
            if !awaiting_pong {
                // Not established (or no longer): no pong will come for `Session::ping`'s future.
                session.settle_unsent_pings();
            }
        }
        Command::Close => core.close(),
        Command::Request {
            id,
            request,
            timeout,
            waiter,
        } => {
            let token = core.send_request(now, &request, timeout);
            waiters.add(token, id, waiter);
        }
        Command::Cancel { id, deregister } => {
            if let Some(token) = waiters.remove_id(id) {
                core.cancel(now, &token);
                if let Some((mut request, waiter)) = deregister {
                    // RFC 7641 §3.6: deregister under the registration's token.
                    request.token = token;
                    let token = core.send_request(now, &request, session.request_timeout());
                    waiters.add(token, id, waiter);
                }
            }
        }
        Command::Notify { token, response } => core.notify(&token, &response),
        Command::SeparateResponse {
            method,
            token,
            confirmable,
            response,
        } => {
            rt.counters
                .request(session.transport(), method, response.status);
            core.respond_separate(now, &token, confirmable, &response);
        }
    }
}

/// Publishes the session's statistics to its handle when anything changed: called by the
/// drivers after every input, before each event's handlers run.
pub(crate) fn publish_stats<P: SessionProtocol>(core: &mut P, session: &Session) {
    let awaiting_pong = core.keepalive().is_awaiting_pong();
    if let Some(stats) = core.keepalive_mut().poll_counters() {
        session.publish_stats(stats, awaiting_pong, false);
    }
}

/// Carries out one protocol event of `session`: runs the handlers and event receivers, and
/// hands what they decided back to the session's protocol (the answer to a ping, a response)
/// or to the waiters of its requests. Returns the error the session ended with when this event
/// ended it; the driver then drops the session.
///
/// The driver has published the session's statistics before (see [`publish_stats`]), so the
/// handlers read them up to date.
pub(crate) fn react<P: SessionProtocol>(
    rt: &Runtime,
    core: &mut P,
    waiters: &mut Waiters,
    session: &Session,
    now: Instant,
    event: ProtocolEvent,
) -> Option<Error> {
    let handlers = &rt.handlers;
    let transport = session.transport();
    match event {
        ProtocolEvent::PeerPing(ping) => {
            session.note_receipt(now);
            // Queued by the protocol: it leaves through `poll_transmit` like every other
            // transmission, under the same send-error rule.
            if handlers.ping(session, &ping, || core.answer_ping(&ping)) {
                rt.counters.peer_ping_answered(transport);
            }
        }
        ProtocolEvent::Pong { rtt } => {
            session.note_receipt(now);
            rt.registry.note_rtt(rtt);
            rt.counters.pong(transport, rtt);
            handlers.pong(session, rtt);
            session.settle_pings(|| Ok(rtt));
        }
        ProtocolEvent::PingSent(ping) => {
            let retransmission = matches!(
                ping,
                PingTransmit::Datagram {
                    retransmission: true,
                    ..
                }
            );
            handlers.event(session, SessionEvent::PingSent { retransmission }, || {});
        }
        ProtocolEvent::PingUnanswered { count } => {
            rt.counters.ping_unanswered(transport);
            handlers.event(session, SessionEvent::PingUnanswered { count }, || {});
            session.settle_unanswered_pings(count);
        }
        ProtocolEvent::Established => {
            session.set_state(SessionState::Established);
            handlers.event(session, SessionEvent::Established, || {});
        }
        ProtocolEvent::Request(incoming) => {
            session.note_receipt(now);
            let request = incoming.request();
            tracing::debug!(session = %session, method = ?request.method, path = %request.path_str(), "request");
            match rt.router.route(request, session) {
                Routed::Now(response) => {
                    rt.counters
                        .request(transport, request.method, response.status);
                    core.respond(&incoming, &response);
                }
                Routed::Later => core.respond_later(&incoming),
            }
        }
        ProtocolEvent::Response { token, response } => {
            session.note_receipt(now);
            if waiters.deliver(&token, *response) == Delivery::Abandoned {
                core.cancel(now, &token);
            }
        }
        ProtocolEvent::RequestFailed { token, error } => {
            let error = match error {
                RequestError::TimedOut => {
                    Error::Timeout(format!("no response from {}", session.peer()))
                }
                RequestError::Reset => Error::Reset,
                RequestError::SessionEnded => session.ended_error(),
                RequestError::UnrecognisedOption { number } => Error::UnrecognisedOption { number },
                RequestError::Blockwise(error) => {
                    Error::Protocol(format!("block-wise transfer failed: {error}"))
                }
            };
            waiters.fail(&token, error);
        }
        ProtocolEvent::ObserverGone { token } => rt.router.forget(session.id(), &token),
        ProtocolEvent::Closed => {
            let state = SessionState::Closed;
            handlers.event(session, SessionEvent::Closed, || rt.remove(session, state));
            session.settle_pings(|| Err(Error::Closed));
            session.set_state(state);
            return Some(ended(waiters, Error::Closed));
        }
        ProtocolEvent::Failed(reason) => {
            let error = session_failed(rt, session, reason);
            return Some(ended(waiters, error));
        }
        ProtocolEvent::Rejected(why) => {
            // At info: what a peer was refused (4.02, an Abort, an RST) is what an operator
            // running `serve -v` needs to see.
            tracing::info!(session = %session, %why, "input rejected");
            rt.counters.rejected_input(transport);
        }
    }
    None
}

/// Ends a session that failed: the nack handler sees the failure, the session leaves the
/// registry, then its event goes out, its `ping()` futures fail and `closed()` wakes. Also for a
/// session that failed before it started (a handshake that failed), which has no protocol.
pub(crate) fn session_failed(rt: &Runtime, session: &Session, reason: NackReason) -> Error {
    let state = SessionState::Failed(reason);
    rt.counters.nack(session.transport(), reason);
    session.record_state(state);
    rt.handlers
        .failed(session, reason, || rt.remove(session, state));
    session.settle_pings(|| Err(Error::SessionFailed(reason)));
    session.set_state(state);
    Error::SessionFailed(reason)
}

/// The session ended with `error`: nothing is lost silently, every request still waiting
/// learns why.
fn ended(waiters: &mut Waiters, error: Error) -> Error {
    waiters.fail_all(|| clone_error(&error));
    error
}

/// A copy of an error for each waiter of an ended session.
pub(crate) fn clone_error(error: &Error) -> Error {
    match error {
        Error::SessionFailed(reason) => Error::SessionFailed(*reason),
        Error::Closed => Error::Closed,
        other => Error::Protocol(other.to_string()),
    }
}
