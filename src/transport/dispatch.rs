//! What every driver does the same way with a session: apply the application's commands to its
//! protocol, and carry out the context's reactions to its events.

use std::time::Instant;

use crate::context::Reaction;
use crate::error::Error;
use crate::protocol::SessionProtocol;
use crate::session::{Command, Session};
use crate::transport::waiters::{Delivery, Waiters};

/// What the driver itself must still do after a reaction.
#[derive(Debug)]
pub(crate) enum FollowUp {
    /// Nothing.
    None,
    /// Send these bytes to the peer (a ping's answer).
    Send(Vec<u8>),
    /// The session ended; its waiters were told with this error.
    Ended(Error),
}

/// Applies one command of the application to the session's protocol.
pub(crate) fn apply_command<P: SessionProtocol>(
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
            let stats = core.keepalive_mut().poll_stats();
            let stats = stats.unwrap_or_else(|| core.keepalive().stats());
            let awaiting_pong = core.keepalive().is_awaiting_pong();
            session.publish_stats(stats, awaiting_pong, counted);
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
            token,
            confirmable,
            response,
        } => core.respond_separate(now, &token, confirmable, &response),
    }
}

/// Publishes the session's statistics to its handle when anything changed: called by the
/// drivers after every input, before each event's handlers run.
pub(crate) fn publish_stats<P: SessionProtocol>(core: &mut P, session: &Session) {
    if let Some(stats) = core.keepalive_mut().poll_stats() {
        session.publish_stats(stats, core.keepalive().is_awaiting_pong(), false);
    }
}

/// Carries out the context's reaction to one protocol event.
pub(crate) fn apply_reaction<P: SessionProtocol>(
    core: &mut P,
    waiters: &mut Waiters,
    now: Instant,
    reaction: Reaction,
) -> FollowUp {
    match reaction {
        Reaction::None => FollowUp::None,
        Reaction::Send(bytes) => FollowUp::Send(bytes),
        Reaction::Respond(exchange) => {
            let (request, response) = *exchange;
            core.respond(&request, &response);
            FollowUp::None
        }
        Reaction::RespondLater(request) => {
            core.respond_later(&request);
            FollowUp::None
        }
        Reaction::Deliver(token, outcome) => {
            let delivery = match outcome {
                Ok(response) => waiters.deliver(&token, response),
                Err(error) => {
                    waiters.fail(&token, error);
                    Delivery::Delivered
                }
            };
            if delivery == Delivery::Abandoned {
                core.cancel(now, &token);
            }
            FollowUp::None
        }
        Reaction::Ended(error) => {
            // Nothing is lost silently: every request still waiting learns why.
            waiters.fail_all(|| clone_error(&error));
            FollowUp::Ended(error)
        }
    }
}

/// A copy of an error for each waiter of an ended session.
pub(crate) fn clone_error(error: &Error) -> Error {
    match error {
        Error::SessionFailed(reason) => Error::SessionFailed(*reason),
        Error::Closed => Error::Closed,
        other => Error::Protocol(other.to_string()),
    }
}
