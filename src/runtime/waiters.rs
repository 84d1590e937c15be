//! Where the responses to a session's requests go: the application's waiting futures and
//! observation streams, by token. Held by the driver next to the session's protocol state.

use std::collections::HashMap;

use crate::proto::error::{Error, Result};
use crate::proto::message::Response;
use crate::runtime::session::Waiter;

/// The waiters of one session's requests by token, with the request's id.
type ByToken = HashMap<Vec<u8>, (u64, Waiter)>;

/// The waiters of one session.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// Allocated by the first request: most server sessions never send one, and an empty
    /// `HashMap` inline would cost 48 bytes in each of them (a `Box` costs 8).
    by_token: Option<Box<ByToken>>,
}

/// What became of a delivered response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Someone took it.
    Delivered,
    /// The observation's receiver is gone: cancel it.
    Abandoned,
    /// Nobody waits for this token.
    Unknown,
}

impl Waiters {
    pub fn add(&mut self, token: Vec<u8>, id: u64, waiter: Waiter) {
        self.by_token
            .get_or_insert_with(Box::default)
            .insert(token, (id, waiter));
    }

    /// Removes the waiter of request `id`, returning its token.
    pub fn remove_id(&mut self, id: u64) -> Option<Vec<u8>> {
        let by_token = self.by_token.as_mut()?;
        let token = by_token
            .iter()
            .find(|(_, (i, _))| *i == id)
            .map(|(t, _)| t.clone())?;
        by_token.remove(&token);
        Some(token)
    }

    /// Hands a response (or a notification) to whoever waits for `token`.
    pub fn deliver(&mut self, token: &[u8], response: Response) -> Delivery {
        let Some(by_token) = self.by_token.as_mut() else {
            return Delivery::Unknown;
        };
        let Some((_, waiter)) = by_token.get_mut(token) else {
            return Delivery::Unknown;
        };
        match waiter {
            Waiter::Once(_) => {
                if let Some((_, Waiter::Once(tx))) = by_token.remove(token) {
                    let _ = tx.send(Ok(response));
                }
                Delivery::Delivered
            }
            Waiter::Observe {
                first,
                notifications,
            } => {
                let accepted = response.observe.is_some();
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(response));
                    if !accepted {
                        // The server answered without registering us: nothing will follow.
                        by_token.remove(token);
                    }
                    return Delivery::Delivered;
                }
                // A notification that is not a 2.xx one, or has no Observe, is the last (RFC
                // 7641 §3.2): delivered, then the stream ends.
                let last = !response.is_success() || response.observe.is_none();
                if notifications.send(response).is_err() {
                    by_token.remove(token);
                    return Delivery::Abandoned;
                }
                if last {
                    by_token.remove(token);
                }
                Delivery::Delivered
            }
        }
    }

    /// Ends the wait for `token` with `error`.
    pub fn fail(&mut self, token: &[u8], error: Error) {
        if let Some((_, waiter)) = self.by_token.as_mut().and_then(|w| w.remove(token)) {
            finish(waiter, Err(error));
        }
    }

    /// Ends every wait: the session is over. Nothing is left waiting silently.
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        for (_, (_, waiter)) in self.by_token.take().into_iter().flat_map(|w| *w) {
            finish(waiter, Err(error()));
        }
    }
}

fn finish(waiter: Waiter, result: Result<Response>) {
    match waiter {
        Waiter::Once(tx) => {
            let _ = tx.send(result);
        }
        Waiter::Observe { first, .. } => {
            if let Some(tx) = first {
                let _ = tx.send(result);
            }
            // Dropping the notification sender ends the stream.
        }
    }
}
