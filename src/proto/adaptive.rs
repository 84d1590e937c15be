//! The adaptive keepalive interval: a sans-IO search for the longest idle time the path to a
//! server keeps a NAT binding alive, and the keepalive interval that follows from it.
//!
//! The search asks the server for probe-backs ([`crate::proto::keepalive_probe`]): "send me
//! something after `d` idle seconds" on a socket that carries nothing else. A probe-back that
//! arrives proves the binding lived at least `d` (the *lower* bound); one that does not says
//! it did not (the *upper* bound). Starting at the minimum, `d` doubles until a probe-back is
//! lost or the maximum is reached, then halves the gap between the bounds until it is within
//! the tolerance; the session's interval is then the safety fraction of the lower bound.
//!
//! Loss can only make a probe look dead, never alive, so every error of the search is towards
//! a shorter, safe interval. The timing rules:
//!
//! - never more than one probe outstanding, and at most the budget's count of probes in any
//!   window of its length (12 per hour by default);
//! - a probe-back not there by `d` plus the grace is lost;
//! - the settled finding is checked again every `recheck_every` with one probe at the lower
//!   bound (a loss restarts the search below it); a fallback is retried as often;
//! - a failed keepalive of the real session restarts the search below the interval that
//!   failed; a change of network restarts it from nothing;
//! - a server without the resource (4.04, 4.05, any refusal), or one never heard from while
//!   the search had no probe-back yet, puts the search in fallback: the fixed interval.
//!
//! Like the other cores it reads no clock: every input carries `now`, and what to do is polled
//! out ([`IntervalSearch::poll_probe`], [`IntervalSearch::poll_timeout`],
//! [`IntervalSearch::poll_event`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use coap_keepalive::proto::adaptive::{AdaptiveConfig, AdaptiveState, IntervalSearch, ProbeOutcome};
//!
//! let config = AdaptiveConfig::new(Duration::from_secs(5), Duration::from_secs(80))
//!     .with_fallback_interval(Duration::from_secs(15));
//! let mut now = Instant::now();
//! let mut search = IntervalSearch::new(config, now)?;
//! let lifetime = Duration::from_secs(30); // what the NAT keeps, unknown to the search
//! while search.state() == AdaptiveState::Searching {
//!     if let Some(probe) = search.poll_probe(now) {
//!         if probe.delay <= lifetime {
//!             now += probe.delay; // the probe-back arrives after the delay
//!             search.handle_outcome(now, probe.id, ProbeOutcome::Arrived);
//!         }
//!     } else if let Some(wake) = search.poll_timeout() {
//!         now = wake;
//!         search.handle_timeout(now); // a probe-back did not come
//!     }
//! }
//! let found = search.stats();
//! assert_eq!(found.lower, Some(Duration::from_secs(30)));
//! assert_eq!(found.interval, Duration::from_secs(24)); // 80 % of it
//! # Ok::<(), coap_keepalive::Error>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::proto::error::{Error, Result};

/// Settings of the adaptive search, checked once by [`IntervalSearch::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveConfig {
    min: Duration,
    max: Duration,
    safety_percent: u8,
    tolerance_percent: u8,
    budget: u32,
    budget_window: Duration,
    grace: Duration,
    recheck_every: Duration,
    fallback_interval: Duration,
}

impl AdaptiveConfig {
    /// A search for a lifetime between `min` and `max`, every other setting at its default.
    pub fn new(min: Duration, max: Duration) -> AdaptiveConfig {
        AdaptiveConfig {
            min,
            max,
            safety_percent: 80,
            tolerance_percent: 10,
            budget: 12,
            budget_window: Duration::from_secs(3600),
            grace: Duration::from_secs(2),
            recheck_every: Duration::from_secs(3600),
            fallback_interval: Duration::from_secs(15),
        }
    }

    /// The session's interval as a percentage of the lifetime found, 1 to 100. Default 80: a
    /// binding that lives 30 s is pinged every 24 s, which leaves room for the jitter of the
    /// NAT's own timers and for a ping's round trip.
    pub fn with_safety_percent(mut self, percent: u8) -> AdaptiveConfig {
        self.safety_percent = percent;
        self
    }

    /// How close the bounds must come before the search settles, as a percentage of the upper
    /// bound, 1 to 50. Default 10: finer than that buys less than the safety fraction gives
    /// away, for a probe of the lifetime's length each.
    pub fn with_tolerance_percent(mut self, percent: u8) -> AdaptiveConfig {
        self.tolerance_percent = percent;
        self
    }

    /// At most `probes` probes in any window of `per`. Default 12 per hour.
    pub fn with_probe_budget(mut self, probes: u32, per: Duration) -> AdaptiveConfig {
        self.budget = probes;
        self.budget_window = per;
        self
    }

    /// How long after its delay a probe-back may still arrive: the round trip, and the
    /// server's timer. Default 2 s.
    pub fn with_grace(mut self, grace: Duration) -> AdaptiveConfig {
        self.grace = grace;
        self
    }

    /// How often a settled finding is checked again (one probe), and a fallback retried.
    /// Default one hour.
    pub fn with_recheck_every(mut self, every: Duration) -> AdaptiveConfig {
        self.recheck_every = every;
        self
    }

    /// The fixed interval used while nothing better is known and against servers without the
    /// probe resource. Default 15 s.
    pub fn with_fallback_interval(mut self, interval: Duration) -> AdaptiveConfig {
        self.fallback_interval = interval;
        self
    }

    /// The shortest delay probed.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay probed.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The grace after a probe's delay ([`AdaptiveConfig::with_grace`]).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The fixed interval ([`AdaptiveConfig::with_fallback_interval`]).
    pub fn fallback_interval(&self) -> Duration {
        self.fallback_interval
    }

    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.min.is_zero() {
            Some("adaptive min must be above zero".to_string())
        } else if self.max <= self.min {
            Some(format!(
                "adaptive max ({:?}) must be above min ({:?})",
                self.max, self.min
            ))
        } else if !(1..=100).contains(&self.safety_percent) {
            Some(format!(
                "adaptive safety_percent must be 1 to 100, got {}",
                self.safety_percent
            ))
        } else if !(1..=50).contains(&self.tolerance_percent) {
            Some(format!(
                "adaptive tolerance_percent must be 1 to 50, got {}",
                self.tolerance_percent
            ))
        } else if self.budget == 0 || self.budget_window.is_zero() {
            Some("adaptive probe budget must allow at least one probe per window".to_string())
        } else if self.recheck_every.is_zero() {
            Some("adaptive recheck_every must be above zero".to_string())
        } else if self.fallback_interval.is_zero() {
            Some("adaptive fallback_interval must be above zero".to_string())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }

    fn safe(&self, lifetime: Duration) -> Duration {
        (lifetime * u32::from(self.safety_percent) / 100).max(Duration::from_millis(1))
    }
}

/// Where the search is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AdaptiveState {
    /// Probing; the interval is the best known so far.
    #[default]
    Searching,
    /// The lifetime is known within the tolerance; the interval is its safety fraction.
    Settled,
    /// The server offers no probes (or never answered one): the fixed interval.
    Fallback,
}

impl fmt::Display for AdaptiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdaptiveState::Searching => "searching",
            AdaptiveState::Settled => "settled",
            AdaptiveState::Fallback => "fallback",
        })
    }
}

/// The search's state and findings, as the session's statistics show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AdaptiveStats {
    /// Searching, settled or fallback.
    pub state: AdaptiveState,
    /// The longest delay a probe-back survived in this search.
    pub lower: Option<Duration>,
    /// The shortest delay a probe-back did not survive in this search.
    pub upper: Option<Duration>,
    /// The keepalive interval the session should use now.
    pub interval: Duration,
    /// Probes sent since the search was created.
    pub probes_sent: u64,
    /// Probe-backs that arrived.
    pub probes_arrived: u64,
    /// Probes spent by the current search (since it last started over).
    pub search_probes: u32,
    /// The delay of the probe outstanding, if any.
    pub probing: Option<Duration>,
}

/// Why the search started over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// The real session's keepalive failed at this interval.
    KeepaliveFailed {
        /// The interval that failed; the new search stays below it.
        interval: Duration,
    },
    /// The network changed (a new local address): nothing found before holds.
    NetworkChanged,
    /// The periodic check of the finding lost its probe-back.
    RecheckFailed,
    /// The periodic retry of a fallback, or of a finding below the minimum.
    Periodic,
}

/// Why the search fell back to the fixed interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The server refused the probe (4.04 Not Found: no such resource, or another 4.xx).
    Unsupported,
    /// Nothing came back from a server that never sent a probe-back before.
    NoAnswer,
}

/// What the search reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptiveEvent {
    /// A probe went out: a probe-back is asked for after `delay`.
    ProbeSent {
        /// The idle delay asked for.
        delay: Duration,
    },
    /// The probe-back arrived: the binding lived at least `delay`.
    ProbeArrived {
        /// The probe's delay.
        delay: Duration,
    },
    /// The probe-back did not arrive within the delay and the grace.
    ProbeLost {
        /// The probe's delay.
        delay: Duration,
    },
    /// The search settled.
    Settled {
        /// The longest delay the binding survived; `None` when it did not survive even the
        /// minimum.
        lifetime: Option<Duration>,
        /// The interval that follows.
        interval: Duration,
        /// Probes the search spent.
        probes: u32,
    },
    /// The search fell back to the fixed interval.
    Fallback {
        /// Why.
        reason: FallbackReason,
    },
    /// The search started over.
    Restarted {
        /// Why.
        reason: RestartReason,
    },
    /// The interval the session should use changed.
    IntervalChanged {
        /// The new interval.
        interval: Duration,
    },
}

impl fmt::Display for AdaptiveEvent {
    /// `probe sent (30.000 s)`, `settled: lifetime 30.000 s, interval 24.000 s, 7 probes`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| format!("{:.3} s", d.as_secs_f64());
        match self {
            AdaptiveEvent::ProbeSent { delay } => write!(f, "probe sent ({})", s(delay)),
            AdaptiveEvent::ProbeArrived { delay } => write!(f, "probe-back arrived ({})", s(delay)),
            AdaptiveEvent::ProbeLost { delay } => write!(f, "probe-back lost ({})", s(delay)),
            AdaptiveEvent::Settled {
                lifetime: Some(lifetime),
                interval,
                probes,
            } => write!(
                f,
                "settled: lifetime {}, interval {}, {probes} probes",
                s(lifetime),
                s(interval)
            ),
            AdaptiveEvent::Settled {
                lifetime: None,
                interval,
                probes,
            } => write!(
                f,
                "settled: lifetime below the minimum, interval {}, {probes} probes",
                s(interval)
            ),
            AdaptiveEvent::Fallback {
                reason: FallbackReason::Unsupported,
            } => f.write_str("fallback: the server offers no keepalive probes"),
            AdaptiveEvent::Fallback {
                reason: FallbackReason::NoAnswer,
            } => f.write_str("fallback: no answer to the keepalive probe"),
            AdaptiveEvent::Restarted { reason } => {
                let why = match reason {
                    RestartReason::KeepaliveFailed { interval } => {
                        format!("keepalive failed at {}", s(interval))
                    }
                    RestartReason::NetworkChanged => "network changed".into(),
                    RestartReason::RecheckFailed => "recheck lost its probe-back".into(),
                    RestartReason::Periodic => "periodic retry".into(),
                };
                write!(f, "search restarted: {why}")
            }
            AdaptiveEvent::IntervalChanged { interval } => {
                write!(f, "keepalive interval {}", s(interval))
            }
        }
    }
}

/// A probe to send: ask the server for a probe-back after `delay`, and report what became of
/// it with [`IntervalSearch::handle_outcome`] and this `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Names the probe in [`IntervalSearch::handle_outcome`].
    pub id: u64,
    /// The idle delay to ask for.
    pub delay: Duration,
}

/// What became of a probe, as its driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeOutcome {
    /// The probe-back arrived.
    Arrived,
    /// The probe-back will not come (the request failed without an answer); without it the
    /// search decides the same at the probe's deadline.
    Lost,
    /// The server offers probes but is busy: ask again after `retry_after`.
    Busy {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The server does not offer probes (4.04 and every other refusal).
    Unsupported,
}

/// Whether a probe searches or checks a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Search,
    Recheck,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    id: u64,
    delay: Duration,
    deadline: Instant,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy)]
struct Wanted {
    delay: Duration,
    not_before: Instant,
    purpose: Purpose,
}

/// The adaptive search of one path: see the [module documentation](self).
#[derive(Debug)]
pub struct IntervalSearch {
    config: AdaptiveConfig,
    state: AdaptiveState,
    lower: Option<Duration>,
    upper: Option<Duration>,
    /// The server has sent a probe-back at least once: a later loss is the path's, not a
    /// server that does not answer.
    supported: bool,
    outstanding: Option<Outstanding>,
    wanted: Option<Wanted>,
    recheck_at: Option<Instant>,
    /// When the probes of the budget's window went out, oldest first.
    sent_at: VecDeque<Instant>,
    next_id: u64,
    probes_sent: u64,
    probes_arrived: u64,
    search_probes: u32,
    reported_interval: Duration,
    events: VecDeque<AdaptiveEvent>,
}

impl IntervalSearch {
    /// A search that wants its first probe, at the minimum, at `now`.
    pub fn new(config: AdaptiveConfig, now: Instant) -> Result<IntervalSearch> {
        config.validate()?;
        let mut search = IntervalSearch {
            config,
            state: AdaptiveState::Searching,
            lower: None,
            upper: None,
            supported: false,
            outstanding: None,
            wanted: None,
            recheck_at: None,
            sent_at: VecDeque::new(),
            next_id: 1,
            probes_sent: 0,
            probes_arrived: 0,
            search_probes: 0,
            reported_interval: config.fallback_interval,
            events: VecDeque::new(),
        };
        search.advance(now);
        Ok(search)
    }

    /// The settings.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// Searching, settled or fallback.
    pub fn state(&self) -> AdaptiveState {
        self.state
    }

    /// The keepalive interval the session should use now: the fixed interval in fallback; the
    /// safety fraction of the lower bound once settled (of the minimum, when even that was
    /// not survived); while searching, the fixed interval unless a probe-back proved a longer
    /// one safe, or a lost one proved the fixed interval too long.
    pub fn interval(&self) -> Duration {
        let config = &self.config;
        let proven = self.lower.map(|lower| config.safe(lower));
        match self.state {
            AdaptiveState::Fallback => config.fallback_interval,
            AdaptiveState::Settled => proven.unwrap_or_else(|| config.safe(config.min)),
            AdaptiveState::Searching => {
                let fixed = config.fallback_interval;
                let fixed_too_long = self.upper.is_some_and(|upper| fixed >= config.safe(upper));
                match proven {
                    Some(proven) if fixed_too_long => proven,
                    Some(proven) => proven.max(fixed),
                    None if fixed_too_long => config.safe(config.min).min(fixed),
                    None => fixed,
                }
            }
        }
    }

    /// The state and findings.
    pub fn stats(&self) -> AdaptiveStats {
        AdaptiveStats {
            state: self.state,
            lower: self.lower,
            upper: self.upper,
            interval: self.interval(),
            probes_sent: self.probes_sent,
            probes_arrived: self.probes_arrived,
            search_probes: self.search_probes,
            probing: self.outstanding.map(|o| o.delay),
        }
    }

    /// The probe to send now, if one is due, none is outstanding and the budget allows it. It
    /// counts as sent at `now`.
    pub fn poll_probe(&mut self, now: Instant) -> Option<ProbeRequest> {
        let wanted = self.wanted?;
        if self.outstanding.is_some() || now < self.send_time(&wanted) {
            return None;
        }
        self.wanted = None;
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding = Some(Outstanding {
            id,
            delay: wanted.delay,
            deadline: now + wanted.delay + self.config.grace,
            purpose: wanted.purpose,
        });
        self.sent_at.push_back(now);
        self.probes_sent += 1;
        if wanted.purpose == Purpose::Search {
            self.search_probes += 1;
        }
        tracing::debug!(
            delay_ms = wanted.delay.as_millis() as u64,
            "keepalive probe sent"
        );
        self.events.push_back(AdaptiveEvent::ProbeSent {
            delay: wanted.delay,
        });
        Some(ProbeRequest {
            id,
            delay: wanted.delay,
        })
    }

    /// When to call [`IntervalSearch::handle_timeout`] (a probe's deadline, a periodic check)
    /// or [`IntervalSearch::poll_probe`] (a probe that waited for the budget or a busy server).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.outstanding.map(|o| o.deadline);
        let send = match (self.outstanding, &self.wanted) {
            (None, Some(wanted)) => Some(self.send_time(wanted)),
            _ => None,
        };
        [deadline, send, self.recheck_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Advances the timers: a probe-back past its deadline is lost; a periodic check that is
    /// due starts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(outstanding) = self.outstanding.filter(|o| now >= o.deadline) {
            self.outstanding = None;
            self.lost(now, outstanding);
        }
        if self.recheck_at.is_some_and(|at| now >= at) {
            self.recheck_at = None;
            match (self.state, self.lower) {
                (AdaptiveState::Settled, Some(lower)) => {
                    self.wanted = Some(Wanted {
                        delay: lower,
                        not_before: now,
                        purpose: Purpose::Recheck,
                    });
                }
                _ => self.restart(now, RestartReason::Periodic, None),
            }
        }
        self.report_interval();
    }

    /// What became of probe `id`. Reports for a probe no longer outstanding (past its
    /// deadline, or from before a restart) are ignored.
    pub fn handle_outcome(&mut self, now: Instant, id: u64, outcome: ProbeOutcome) {
        let Some(outstanding) = self.outstanding.filter(|o| o.id == id) else {
            return;
        };
        self.outstanding = None;
        match outcome {
            ProbeOutcome::Arrived => self.arrived(now, outstanding),
            ProbeOutcome::Lost => self.lost(now, outstanding),
            ProbeOutcome::Busy { retry_after } => {
                self.wanted = Some(Wanted {
                    delay: outstanding.delay,
                    not_before: now + retry_after,
                    purpose: outstanding.purpose,
                });
            }
            ProbeOutcome::Unsupported => {
                self.supported = false;
                self.fall_back(now, FallbackReason::Unsupported);
            }
        }
        self.report_interval();
    }

    /// The real session's keepalive failed: the binding no longer lives as long as the
    /// interval it was pinged at, so the search starts over below that interval.
    pub fn handle_keepalive_failure(&mut self, now: Instant) {
        let interval = self.interval();
        self.restart(
            now,
            RestartReason::KeepaliveFailed { interval },
            Some(interval),
        );
        self.report_interval();
    }

    /// The network changed (a new local address, another interface): the search starts over
    /// from nothing.
    pub fn handle_network_change(&mut self, now: Instant) {
        self.restart(now, RestartReason::NetworkChanged, None);
        self.report_interval();
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<AdaptiveEvent> {
        self.events.pop_front()
    }

    /// When `wanted` may go out: its own time, and the budget's (a window's count of probes
    /// sent: the next when the oldest leaves the window).
    fn send_time(&self, wanted: &Wanted) -> Instant {
        let window = self.config.budget_window;
        let in_window = |at: &&Instant| **at + window > wanted.not_before;
        let recent: Vec<&Instant> = self.sent_at.iter().filter(in_window).collect();
        let budget = self.config.budget as usize;
        if recent.len() < budget {
            return wanted.not_before;
        }
        // The probe that must leave the window before one more fits.
        let oldest = recent[recent.len() - budget];
        (*oldest + window).max(wanted.not_before)
    }

    fn arrived(&mut self, now: Instant, probe: Outstanding) {
        self.supported = true;
        self.probes_arrived += 1;
        self.events
            .push_back(AdaptiveEvent::ProbeArrived { delay: probe.delay });
        match probe.purpose {
            Purpose::Recheck => self.recheck_at = Some(now + self.config.recheck_every),
            Purpose::Search => {
                self.lower = Some(self.lower.map_or(probe.delay, |l| l.max(probe.delay)));
                // A binding that now outlives what it once did not: the old bound is stale.
                if self.upper.is_some_and(|u| u <= probe.delay) {
                    self.upper = None;
                }
                self.advance(now);
            }
        }
    }

    fn lost(&mut self, now: Instant, probe: Outstanding) {
        self.events
            .push_back(AdaptiveEvent::ProbeLost { delay: probe.delay });
        if !self.supported {
            self.fall_back(now, FallbackReason::NoAnswer);
            return;
        }
        match probe.purpose {
            Purpose::Recheck => {
                self.restart(now, RestartReason::RecheckFailed, Some(probe.delay));
            }
            Purpose::Search => {
                self.upper = Some(self.upper.map_or(probe.delay, |u| u.min(probe.delay)));
                // The binding shrank below what it once survived: that bound is stale.
                if self.lower.is_some_and(|l| l >= probe.delay) {
                    self.lower = None;
                }
                self.advance(now);
            }
        }
    }

    /// The next delay of the search, or settling when there is none.
    fn advance(&mut self, now: Instant) {
        let config = self.config;
        let next = match (self.lower, self.upper) {
            (None, Some(upper)) if upper <= config.min => None,
            (None, _) => Some(config.min),
            (Some(lower), None) if lower >= config.max => None,
            (Some(lower), None) => Some((lower * 2).min(config.max)),
            (Some(lower), Some(upper)) => {
                let gap = upper.saturating_sub(lower);
                let middle = lower + gap / 2;
                let close = gap * 100 <= upper * u32::from(config.tolerance_percent);
                (!close && middle > lower).then_some(middle)
            }
        };
        match next {
            Some(delay) => {
                self.wanted = Some(Wanted {
                    delay,
                    not_before: now,
                    purpose: Purpose::Search,
                })
            }
            None => self.settle(now),
        }
    }

    fn settle(&mut self, now: Instant) {
        self.state = AdaptiveState::Settled;
        self.wanted = None;
        self.recheck_at = Some(now + self.config.recheck_every);
        let interval = self.interval();
        tracing::info!(
            lifetime_ms = self.lower.map(|l| l.as_millis() as u64),
            interval_ms = interval.as_millis() as u64,
            probes = self.search_probes,
            "adaptive keepalive settled"
        );
        self.events.push_back(AdaptiveEvent::Settled {
            lifetime: self.lower,
            interval,
            probes: self.search_probes,
        });
    }

    fn fall_back(&mut self, now: Instant, reason: FallbackReason) {
        self.state = AdaptiveState::Fallback;
        self.wanted = None;
        self.lower = None;
        self.upper = None;
        self.recheck_at = Some(now + self.config.recheck_every);
        tracing::info!(
            ?reason,
            "adaptive keepalive falls back to the fixed interval"
        );
        self.events.push_back(AdaptiveEvent::Fallback { reason });
    }

    /// Starts the search over, below `ceiling` when given; a probe outstanding is forgotten.
    fn restart(&mut self, now: Instant, reason: RestartReason, ceiling: Option<Duration>) {
        tracing::info!(?reason, "adaptive keepalive search restarts");
        self.events.push_back(AdaptiveEvent::Restarted { reason });
        self.state = AdaptiveState::Searching;
        self.outstanding = None;
        self.recheck_at = None;
        self.lower = None;
        self.upper = ceiling;
        self.search_probes = 0;
        self.advance(now);
    }

    fn report_interval(&mut self) {
        let interval = self.interval();
        if interval != self.reported_interval {
            self.reported_interval = interval;
            self.events
                .push_back(AdaptiveEvent::IntervalChanged { interval });
        }
    }
}
