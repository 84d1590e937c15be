//! Bookkeeping of our requests to the peer, shared by the datagram and stream protocols:
//! pending requests matched by token (and Message ID over datagrams), their deadlines, and the
//! observations they turned into, with the RFC 7641 §3.4 freshness rule.

use std::time::{Duration, Instant};

use coap_lite::Packet;

use crate::proto::message::Response;

/// What [`Exchanges::judge_notification`] found a notification to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notified {
    /// It carries a later block than the first: it answers no request of ours.
    LaterBlock,
    /// No observation of ours, or older than (or the same as) what it had: not delivered.
    Ignored,
    /// Fresh; with `more`, only the first block of the representation came (RFC 7959 §3.4).
    Fresh {
        /// The rest of the representation is still to be fetched.
        more: bool,
    },
}

/// Why a request of ours ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// No response within the request timeout (or, over datagrams, no ACK after every
    /// retransmission — which also fails the session).
    TimedOut,
    /// The peer rejected the request with an RST.
    Reset,
    /// The session had already ended when the request was made.
    SessionEnded,
    /// The response carried a critical option this stack does not recognise (RFC 7252 §5.4.1):
    /// it was rejected, not delivered, since acting on it without that option could be wrong.
    UnrecognisedOption {
        /// The option number.
        number: u16,
    },
    /// A block-wise transfer (RFC 7959) of the request or its response failed.
    Blockwise(crate::proto::blockwise::BlockwiseError),
}

/// Retransmission state of a Confirmable message we sent.
#[derive(Debug, Clone)]
pub(crate) struct Retransmit {
    pub bytes: Vec<u8>,
    pub count: u32,
    pub timeout: Duration,
    pub next: Instant,
}

/// What a pending entry is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PendingKind {
    /// A request of ours, waiting for its response.
    Request,
    /// A Confirmable separate response of ours, waiting only for its ACK.
    SeparateResponse,
}

/// One message of ours that waits for something.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub kind: PendingKind,
    pub token: Vec<u8>,
    /// Message ID once sent over a datagram transport.
    pub message_id: Option<u16>,
    /// The request registered an observation (Observe = 0).
    pub observe: bool,
    /// The peer acknowledged it (a separate response will follow).
    pub acknowledged: bool,
    /// Give up waiting for the response at this instant.
    pub deadline: Instant,
    /// The request timeout it was sent with: each block of a block-wise transfer gets it anew.
    pub timeout: Duration,
    /// Confirmable and not yet acknowledged: retransmission state.
    pub retransmit: Option<Retransmit>,
    /// This request fetches the later blocks of a notification (or of the registration's
    /// first response) of the observation with this token (RFC 7959 §3.4): what it brings, or
    /// how it fails, is that observation's, and the application never sees this token.
    pub notification: Option<Vec<u8>>,
}

impl Pending {
    /// A request of ours under `token`, sent (or queued) at `now`, waiting up to `timeout` for
    /// its response. `observe`: it registers an observation (Observe = 0); `notification`: it
    /// fetches the later blocks of a notification of that observation.
    pub fn request(
        token: Vec<u8>,
        now: Instant,
        timeout: Duration,
        observe: bool,
        notification: Option<Vec<u8>>,
    ) -> Pending {
        Pending {
            kind: PendingKind::Request,
            token,
            message_id: None,
            observe,
            acknowledged: false,
            deadline: now + timeout,
            timeout,
            retransmit: None,
            notification,
        }
    }

    /// The earliest instant this entry needs attention.
    pub fn next_deadline(&self) -> Instant {
        match &self.retransmit {
            Some(r) => r.next.min(self.deadline),
            None => self.deadline,
        }
    }
}

/// An observation of ours (we registered; the peer notifies).
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub token: Vec<u8>,
    /// The registration as sent: a notification in blocks has its later blocks fetched with
    /// this request (without Observe, under another token; RFC 7959 §3.4). `None` only if the
    /// block-wise layer lost it, and then such a notification cannot be completed.
    pub registration: Option<Packet>,
    /// The request timeout of the registration, which each fetch of later blocks gets anew.
    pub timeout: Duration,
    last: Option<(u32, Instant)>,
    /// When the last fresh representation goes stale (its Max-Age, see [`reregister_after`])
    /// and the registration is sent again; `None` while a re-registration is out.
    stale_at: Option<Instant>,
}

/// The shortest wait before a re-registration, whatever Max-Age says: a representation with
/// Max-Age 0 ("do not cache") must not make the client re-register in a loop.
pub const MIN_REREGISTER_AFTER: Duration = Duration::from_secs(5);

/// How long past a representation's Max-Age a client waits for a notification before it
/// registers again: room for the notification that replaces it to be sent and retransmitted.
pub const REREGISTER_GRACE: Duration = Duration::from_secs(2);

/// RFC 7641 §3.3.1: a client re-registers when the representation it has is no longer fresh
/// (its Max-Age passed) and no notification came. That is also what finds a server again
/// when a NAT forgot the client's binding: the server's notifications to the old mapping are
/// lost, and the re-registration, sent from the client, reaches it through a new one.
pub fn reregister_after(max_age_secs: u32) -> Duration {
    Duration::from_secs(u64::from(max_age_secs)).max(MIN_REREGISTER_AFTER) + REREGISTER_GRACE
}

impl Observation {
    pub fn new(token: Vec<u8>, registration: Option<Packet>, timeout: Duration) -> Self {
        Observation {
            token,
            registration,
            timeout,
            last: None,
            stale_at: None,
        }
    }

    /// Records a notification received at `now`; false when it is older than the last one
    /// (RFC 7641 §3.4) and must not be delivered.
    pub fn accept(&mut self, now: Instant, response: &Response) -> bool {
        let Some(sequence) = response.observe else {
            return true;
        };
        let fresh = match self.last {
            None => true,
            Some((last, at)) => is_fresher(last, at, sequence, now),
        };
        if fresh {
            self.last = Some((sequence, now));
            self.stale_at = Some(now + reregister_after(response.max_age_or_default()));
        }
        fresh
    }
}

/// RFC 7641 §3.4: notification `v2` received at `t2` is newer than `v1` received at `t1` when
/// the 24-bit sequence number advanced (modulo wrap-around) or 128 s passed.
pub fn is_fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + Duration::from_secs(128)
}

/// Pending messages and observations of one session. Sessions rarely have more than a few, so
/// lookups scan.
#[derive(Debug, Default)]
pub(crate) struct Exchanges {
    pub pending: Vec<Pending>,
    pub observations: Vec<Observation>,
}

impl Exchanges {
    pub fn by_token(&self, token: &[u8], kind: PendingKind) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.kind == kind && p.token == token)
    }

    pub fn by_message_id(&self, message_id: u16) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.message_id == Some(message_id))
    }

    pub fn observation(&mut self, token: &[u8]) -> Option<&mut Observation> {
        self.observations.iter_mut().find(|o| o.token == token)
    }

    /// True when an observation of ours has `token`. Read-only, unlike
    /// [`Exchanges::observation`], so a lookup through a shared empty state stays possible.
    pub fn is_observing(&self, token: &[u8]) -> bool {
        self.observations.iter().any(|o| o.token == token)
    }

    /// Judges a notification (`packet`, read as `response`) of the observation its token
    /// names, for both session protocols: it carries block 0 or no block (RFC 7959 §3.4: the
    /// later blocks are fetched, never notified), and it must be fresher than what the
    /// observation had (RFC 7641 §3.4), which it then becomes.
    pub(crate) fn judge_notification(
        &mut self,
        now: Instant,
        packet: &Packet,
        response: &Response,
    ) -> Notified {
        let block =
            crate::proto::blockwise::block_option(packet, crate::proto::wire::options::BLOCK2);
        if block.is_some_and(|b| b.num > 0) {
            return Notified::LaterBlock;
        }
        let fresh = self
            .observation(packet.get_token())
            .is_some_and(|observation| observation.accept(now, response));
        if fresh && (!response.is_success() || response.observe.is_none()) {
            // RFC 7641 §3.2: a notification that is not a 2.xx one (or, a 2.xx without
            // Observe, no longer a notification) is the last: the server has removed us.
            self.forget_observation(packet.get_token());
        }
        if fresh {
            Notified::Fresh {
                more: block.is_some_and(|b| b.more),
            }
        } else {
            Notified::Ignored
        }
    }

    /// The token for a new request: `preset` when given and free (an Observe deregistration
    /// reuses its registration's), else a fresh random one no exchange uses.
    pub fn choose_token(&self, preset: &[u8], rng: &mut crate::proto::rng::Rng) -> Vec<u8> {
        if !preset.is_empty() && !self.token_in_use(preset) {
            return preset.to_vec();
        }
        loop {
            let token = (rng.next_u64() as u32).to_be_bytes().to_vec();
            if !self.token_in_use(&token) {
                return token;
            }
        }
    }

    pub fn token_in_use(&self, token: &[u8]) -> bool {
        self.pending.iter().any(|p| p.token == token)
            || self.observations.iter().any(|o| o.token == token)
    }

    /// True while a Confirmable message of ours is unacknowledged (NSTART = 1).
    pub fn confirmable_in_flight(&self) -> bool {
        self.pending.iter().any(|p| p.retransmit.is_some())
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(Pending::next_deadline);
        pending
            .chain(self.observations.iter().filter_map(|o| o.stale_at))
            .min()
    }

    /// The response to a registration (Observe = 0) that the peer accepted: a new observation,
    /// or, for a re-registration of one we have, the same observation with this response as
    /// its current representation. A re-registration's response answers our request, so it is
    /// fresh whatever its sequence number (a server that lost us, or sees us through a new NAT
    /// binding, numbers from anew). `registration` is kept unless `None`.
    pub fn registered(
        &mut self,
        now: Instant,
        token: &[u8],
        registration: Option<Packet>,
        timeout: Duration,
        response: &Response,
    ) {
        if let Some(observation) = self.observation(token) {
            observation.last = None;
            if registration.is_some() {
                observation.registration = registration;
            }
            observation.accept(now, response);
            return;
        }
        let mut observation = Observation::new(token.to_vec(), registration, timeout);
        observation.accept(now, response);
        self.observations.push(observation);
    }

    /// Observations whose representation went stale at `now` with no notification since
    /// (RFC 7641 §3.3.1), and with no request of ours under their token: their registrations
    /// to send again, with their tokens and request timeouts. Each is marked as re-registering
    /// until its response comes ([`Exchanges::registered`]).
    pub fn due_reregistrations(&mut self, now: Instant) -> Vec<(Vec<u8>, Packet, Duration)> {
        let mut due = Vec::new();
        for index in 0..self.observations.len() {
            if self.observations[index].stale_at.is_none_or(|at| at > now) {
                continue;
            }
            self.observations[index].stale_at = None;
            let observation = &self.observations[index];
            // A request of ours under the token already asks (its response renews the
            // observation), and a registration the block-wise layer lost cannot be sent.
            let asking = self.pending.iter().any(|p| p.token == observation.token);
            if let Some(registration) = observation.registration.clone().filter(|_| !asking) {
                due.push((observation.token.clone(), registration, observation.timeout));
            }
        }
        due
    }

    pub fn forget_observation(&mut self, token: &[u8]) {
        self.observations.retain(|o| o.token != token);
    }

    /// The request fetching the later blocks of a notification of the observation `token`.
    pub fn fetch_of(&self, token: &[u8]) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.notification.as_deref() == Some(token))
    }

    /// The token under which the failure of `pending` (just removed) is reported: its own, or,
    /// for the fetch of a notification's later blocks, its observation's, which ends with it
    /// (a notification that cannot be had whole is not delivered in part). `None` when that
    /// observation is already gone: nobody waits.
    pub fn failure_token(&mut self, pending: Pending) -> Option<Vec<u8>> {
        match pending.notification {
            None => {
                if pending.observe {
                    // A re-registration that failed ends its observation.
                    self.forget_observation(&pending.token);
                }
                Some(pending.token)
            }
            Some(owner) => {
                let known = self.observations.iter().any(|o| o.token == owner);
                self.forget_observation(&owner);
                known.then_some(owner)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_rfc7641() {
        let t = Instant::now();
        assert!(is_fresher(1, t, 2, t));
        assert!(!is_fresher(2, t, 1, t));
        assert!(!is_fresher(5, t, 5, t));
        // wrap-around of the 24-bit number
        assert!(is_fresher((1 << 24) - 1, t, 0, t));
        // an old number is fresh again after 128 s
        assert!(is_fresher(9, t, 3, t + Duration::from_secs(129)));
    }

    #[test]
    fn observation_drops_reordered_notifications() {
        let t = Instant::now();
        let mut o = Observation::new(vec![1], None, Duration::from_secs(60));
        let n = |seq| {
            let mut r = Response::content_text("x");
            r.observe = Some(seq);
            r
        };
        assert!(o.accept(t, &n(3)));
        assert!(!o.accept(t, &n(2)));
        assert!(o.accept(t, &n(4)));
    }
}
