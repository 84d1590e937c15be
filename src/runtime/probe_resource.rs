//! The server side of the adaptive keepalive: `POST /.well-known/keepalive-probe`, which sends
//! one Non-confirmable `2.04 Changed` back to the requesting address after the idle delay the
//! request names (the contract is in [`crate::proto::keepalive_probe`]).
//!
//! Every probe-back holds a slot from the time it is accepted until it is sent (or its session
//! ends): one per requesting address, a few per IP address, a cap in all, so the resource can
//! neither be flooded into holding unbounded timers nor used to reflect traffic elsewhere.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proto::error::{Error, Result};
use crate::proto::keepalive_probe::{parse_probe_delay, PROBE_PATH};
use crate::proto::message::{Method, Request, Response, Status};
use crate::runtime::resource::{Reply, Resource, Responder};
use crate::runtime::session::{lock, Session};

/// The bounds of a context's keepalive probe resource
/// ([`Context::serve_keepalive_probes`](crate::Context::serve_keepalive_probes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLimits {
    max_delay: Duration,
    per_ip: u32,
    total: u32,
}

impl Default for ProbeLimits {
    /// At most 240 s of delay (beyond RFC 4787's two minutes, within the default 300 s idle
    /// timeout of a server's UDP sessions), 8 probe-backs outstanding per IP address (clients
    /// behind one carrier NAT share it) and 1024 in all.
    fn default() -> ProbeLimits {
        ProbeLimits {
            max_delay: Duration::from_secs(240),
            per_ip: 8,
            total: 1024,
        }
    }
}

impl ProbeLimits {
    /// The longest delay accepted; a longer one is answered 4.00 Bad Request naming it. It is
    /// also kept below nine tenths of the context's idle timeout, which would otherwise forget
    /// the silent session before its probe-back is due.
    pub fn with_max_delay(mut self, max_delay: Duration) -> ProbeLimits {
        self.max_delay = max_delay;
        self
    }

    /// Probe-backs outstanding per IP address; more get 5.03 Service Unavailable with Max-Age.
    /// (Each requesting address, IP and port, has at most one: a second gets 4.29.)
    pub fn with_per_ip(mut self, per_ip: u32) -> ProbeLimits {
        self.per_ip = per_ip;
        self
    }

    /// Probe-backs outstanding in all; more get 5.03 Service Unavailable with Max-Age.
    pub fn with_total(mut self, total: u32) -> ProbeLimits {
        self.total = total;
        self
    }

    /// The longest delay accepted.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Checks the limits; the error names the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.max_delay < Duration::from_millis(1) {
            return Err(Error::Config(
                "probe max_delay must be at least 1 ms".into(),
            ));
        }
        if self.per_ip == 0 || self.total == 0 {
            return Err(Error::Config(
                "probe per_ip and total must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The probe-backs outstanding, each with the instant it is due.
#[derive(Default)]
struct Book {
    by_address: HashMap<SocketAddr, Instant>,
    by_ip: HashMap<IpAddr, u32>,
}

impl Book {
    /// Seconds until the earliest of `due` (at least one), for a Max-Age.
    fn retry_after<'a>(now: Instant, due: impl Iterator<Item = &'a Instant>) -> u32 {
        let earliest = due
            .min()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        earliest
            .as_secs()
            .saturating_add(1)
            .min(u64::from(u32::MAX)) as u32
    }
}

/// Holds one probe-back's place in the book until it is dropped.
struct Slot {
    book: Arc<Mutex<Book>>,
    address: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut book = lock(&self.book);
        book.by_address.remove(&self.address);
        let ip = self.address.ip();
        if let Some(count) = book.by_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                book.by_ip.remove(&ip);
            }
        }
    }
}

/// The probe resource under `limits`, for a context whose sessions idle out after
/// `idle_timeout`.
pub(crate) fn resource(limits: ProbeLimits, idle_timeout: Duration) -> Resource {
    let max_delay = limits.max_delay.min(idle_timeout * 9 / 10);
    let book = Arc::new(Mutex::new(Book::default()));
    let handler = move |request: &Request, session: &Session| {
        answer(request, session, max_delay, limits, &book)
    };
    Resource::new(PROBE_PATH)
        .attribute("rt=\"keepalive-probe\"")
        .method_deciding(Method::Post, Arc::new(handler))
}

fn answer(
    request: &Request,
    session: &Session,
    max_delay: Duration,
    limits: ProbeLimits,
    book: &Arc<Mutex<Book>>,
) -> Reply {
    let delay = match parse_probe_delay(request, max_delay) {
        Ok(delay) => delay,
        Err(problem) => {
            tracing::debug!(session = %session, %problem, "keepalive probe refused");
            return Reply::Now(problem.response());
        }
    };
    let now = Instant::now();
    let address = session.peer();
    let slot = {
        let mut entries = lock(book);
        if let Some(due) = entries.by_address.get(&address) {
            let wait = Book::retry_after(now, std::iter::once(due));
            return Reply::Now(
                Response::new(Status::TooManyRequests)
                    .with_max_age(wait)
                    .with_payload("one at a time"),
            );
        }
        let of_ip = entries.by_ip.get(&address.ip()).copied().unwrap_or(0);
        if of_ip >= limits.per_ip || entries.by_address.len() >= limits.total as usize {
            let wait = Book::retry_after(now, entries.by_address.values());
            return Reply::Now(
                Response::new(Status::ServiceUnavailable)
                    .with_max_age(wait)
                    .with_payload("probes busy"),
            );
        }
        entries.by_address.insert(address, now + delay);
        *entries.by_ip.entry(address.ip()).or_insert(0) += 1;
        Slot {
            book: Arc::clone(book),
            address,
        }
    };
    // Our own pings would refresh the very binding the client measures.
    session.set_keepalive_interval(None);
    tracing::debug!(session = %session, delay_ms = delay.as_millis() as u64, "keepalive probe accepted");
    let session = session.clone();
    Reply::Later(Box::new(move |responder: Responder| {
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    tracing::debug!(session = %session, "keepalive probe-back sent");
                    responder.respond_non_confirmable(Response::new(Status::Changed));
                }
                // The session ended: nobody to answer (the Responder's 5.00 goes nowhere).
                _ = session.closed() => {}
            }
        });
    }))
}
