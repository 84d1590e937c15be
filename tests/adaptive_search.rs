//! The adaptive keepalive search in virtual time: the sans-IO `IntervalSearch` against a
//! simulated NAT whose binding lives a set time, every instant explicit. Each scenario covers
//! hours of probing in microseconds.

use std::time::{Duration, Instant};

use coap_keepalive::proto::adaptive::{
    AdaptiveConfig, AdaptiveEvent, AdaptiveState, FallbackReason, IntervalSearch, ProbeOutcome,
    RestartReason,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What the simulated server and NAT do with a probe.
#[derive(Clone, Copy)]
enum Path {
    /// A binding that lives this long: a probe-back after a longer delay is lost.
    Nat(Duration),
    /// The server answers 4.04.
    NoResource,
    /// Nothing comes back at all.
    Silent,
}

/// A search driven against `path`, with the clock in hand.
struct Sim {
    search: IntervalSearch,
    path: Path,
    now: Instant,
    start: Instant,
    events: Vec<(Duration, AdaptiveEvent)>,
    /// (when sent, delay) of every probe.
    probes: Vec<(Duration, Duration)>,
    /// The server's answer on its way: when it arrives, to which probe, what it says.
    answer: Option<(Instant, u64, ProbeOutcome)>,
}

impl Sim {
    fn new(config: AdaptiveConfig, path: Path) -> Sim {
        let start = Instant::now();
        let search = IntervalSearch::new(config, start).expect("valid config");
        Sim {
            search,
            path,
            now: start,
            start,
            events: Vec::new(),
            probes: Vec::new(),
            answer: None,
        }
    }

    fn at(&self) -> Duration {
        self.now - self.start
    }

    fn drain(&mut self) {
        while let Some(event) = self.search.poll_event() {
            self.events.push((self.at(), event));
        }
    }

    /// Runs until `until` (virtual time after the start), answering probes as the path does.
    fn run_until(&mut self, until: Duration) {
        let end = self.start + until;
        loop {
            self.drain();
            if let Some(probe) = self.search.poll_probe(self.now) {
                self.probes.push((self.at(), probe.delay));
                // The server's answers take 10 ms each way.
                let round_trip = Duration::from_millis(20);
                self.answer = match self.path {
                    Path::Nat(lifetime) if probe.delay <= lifetime => Some((
                        self.now + probe.delay + round_trip,
                        probe.id,
                        ProbeOutcome::Arrived,
                    )),
                    Path::NoResource => {
                        Some((self.now + round_trip, probe.id, ProbeOutcome::Unsupported))
                    }
                    _ => None,
                };
                continue;
            }
            let answer = self.answer.map(|(at, _, _)| at);
            let wake = [answer, self.search.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match wake {
                Some(wake) if wake <= end => {
                    assert!(wake >= self.now, "a deadline in the past");
                    self.now = wake;
                    match self.answer {
                        Some((at, id, outcome)) if at == wake => {
                            self.answer = None;
                            self.search.handle_outcome(self.now, id, outcome);
                        }
                        _ => self.search.handle_timeout(self.now),
                    }
                }
                _ => {
                    self.now = end;
                    self.drain();
                    return;
                }
            }
        }
    }

    fn run_until_settled(&mut self, limit: Duration) {
        let step = Duration::from_secs(1);
        while self.search.state() == AdaptiveState::Searching && self.at() < limit {
            let next = self.at() + step;
            self.run_until(next);
        }
        assert_eq!(
            self.search.state(),
            AdaptiveState::Settled,
            "{:#?}",
            self.events
        );
    }

    fn settled_events(&self) -> Vec<AdaptiveEvent> {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, AdaptiveEvent::Settled { .. }))
            .map(|(_, e)| *e)
            .collect()
    }
}

fn config() -> AdaptiveConfig {
    AdaptiveConfig::new(secs(5), secs(300))
        .with_fallback_interval(secs(15))
        .with_probe_budget(30, secs(3600))
}

#[test]
fn converges_to_the_true_lifetime_within_the_tolerance() {
    for lifetime in [7, 10, 29, 30, 31, 60, 117, 120, 299] {
        let lifetime = secs(lifetime);
        let mut sim = Sim::new(config(), Path::Nat(lifetime));
        sim.run_until_settled(secs(4 * 3600));
        let stats = sim.search.stats();
        let lower = stats.lower.expect("a lower bound");
        let upper = stats.upper.expect("an upper bound");
        assert!(
            lower <= lifetime && lifetime < upper,
            "{lifetime:?}: {stats:?}"
        );
        // Settled within the 10 % tolerance of the upper bound.
        assert!((upper - lower) * 10 <= upper, "{lifetime:?}: {stats:?}");
        // The interval is 80 % of what was proven, never of more.
        assert_eq!(stats.interval, lower * 80 / 100);
        assert!(stats.interval < lifetime);
        assert!(stats.search_probes <= 12, "{lifetime:?}: {stats:?}");
    }
}

#[test]
fn the_probe_sequence_is_exact() {
    let mut sim = Sim::new(config(), Path::Nat(secs(30)));
    sim.run_until_settled(secs(3600));
    let delays: Vec<u64> = sim
        .probes
        .iter()
        .map(|(_, d)| d.as_millis() as u64)
        .collect();
    // Doubling from the minimum until the first loss, then halving the gap.
    assert_eq!(
        delays,
        [5_000, 10_000, 20_000, 40_000, 30_000, 35_000, 32_500]
    );
    // Each probe follows the previous one's end: an arrival (delay + 20 ms) or a loss
    // (delay + the 2 s grace).
    let sent: Vec<u64> = sim
        .probes
        .iter()
        .map(|(at, _)| at.as_millis() as u64)
        .collect();
    assert_eq!(sent, [0, 5_020, 15_040, 35_060, 77_060, 107_080, 144_080]);
    assert_eq!(
        sim.settled_events(),
        [AdaptiveEvent::Settled {
            lifetime: Some(secs(30)),
            interval: secs(24),
            probes: 7
        }]
    );
    assert_eq!(sim.search.stats().probes_sent, 7);
    assert_eq!(sim.search.stats().probes_arrived, 4);
}

#[test]
fn never_more_than_one_probe_outstanding() {
    let t = Instant::now();
    let mut search = IntervalSearch::new(config(), t).unwrap();
    let first = search.poll_probe(t).expect("the first probe at once");
    assert_eq!(first.delay, secs(5));
    assert_eq!(search.poll_probe(t), None);
    assert_eq!(search.poll_probe(t + secs(6)), None);
    assert_eq!(search.poll_timeout(), Some(t + secs(7)), "delay + grace");
    search.handle_timeout(t + secs(7));
    // Lost before any probe-back ever came: the server does not answer.
    assert_eq!(search.state(), AdaptiveState::Fallback);
    assert_eq!(search.poll_probe(t + secs(8)), None);
}

#[test]
fn the_probe_budget_per_hour_is_respected() {
    // 4 probes an hour, a binding that lives 100 s: the search needs more than 4 probes.
    let config = AdaptiveConfig::new(secs(5), secs(300)).with_probe_budget(4, secs(3600));
    let mut sim = Sim::new(config, Path::Nat(secs(100)));
    sim.run_until(secs(5 * 3600));
    assert_eq!(sim.search.state(), AdaptiveState::Settled);
    let sent: Vec<Duration> = sim.probes.iter().map(|(at, _)| *at).collect();
    for (i, at) in sent.iter().enumerate() {
        let in_window = sent[i..].iter().filter(|s| **s < *at + secs(3600)).count();
        assert!(
            in_window <= 4,
            "{} probes within the hour from {at:?}",
            in_window
        );
    }
    // The fifth probe waited for the first to leave the window: exactly an hour later.
    assert_eq!(sent[4], sent[0] + secs(3600));
    // The hourly recheck is one probe at the lower bound, within the budget too.
    let settled = sim.search.stats();
    assert!(sim.probes.len() as u32 > settled.search_probes);
}

#[test]
fn falls_back_against_a_server_without_the_resource() {
    let mut sim = Sim::new(config(), Path::NoResource);
    sim.run_until(secs(10));
    assert_eq!(sim.search.state(), AdaptiveState::Fallback);
    assert_eq!(sim.search.interval(), secs(15));
    assert!(sim.events.iter().any(|(_, e)| *e
        == AdaptiveEvent::Fallback {
            reason: FallbackReason::Unsupported
        }));
    assert_eq!(sim.probes.len(), 1);
    // Retried after the recheck period (an hour), not before.
    sim.run_until(secs(3599));
    assert_eq!(sim.probes.len(), 1);
    sim.run_until(secs(3601));
    assert_eq!(sim.probes.len(), 2);
    assert_eq!(sim.probes[1].0, secs(3600) + Duration::from_millis(20));
}

#[test]
fn falls_back_when_nothing_ever_comes_back() {
    let mut sim = Sim::new(config(), Path::Silent);
    sim.run_until(secs(60));
    assert_eq!(sim.search.state(), AdaptiveState::Fallback);
    assert_eq!(sim.search.interval(), secs(15));
    assert!(sim.events.contains(&(
        secs(7),
        AdaptiveEvent::Fallback {
            reason: FallbackReason::NoAnswer
        }
    )));
}

#[test]
fn the_safety_fraction_sets_the_interval() {
    for percent in [50u8, 80, 100] {
        let config = config().with_safety_percent(percent);
        let mut sim = Sim::new(config, Path::Nat(secs(40)));
        sim.run_until_settled(secs(3600));
        let stats = sim.search.stats();
        assert_eq!(stats.lower, Some(secs(40)));
        assert_eq!(stats.interval, secs(40) * u32::from(percent) / 100);
        assert!(sim.events.iter().any(|(_, e)| *e
            == AdaptiveEvent::IntervalChanged {
                interval: stats.interval
            }));
    }
}

#[test]
fn a_keepalive_failure_restarts_the_search_below_the_failed_interval() {
    let mut sim = Sim::new(config(), Path::Nat(secs(60)));
    sim.run_until_settled(secs(3600));
    assert_eq!(sim.search.stats().interval, secs(48));
    // The NAT now drops bindings after 20 s: the session's keepalive at 48 s fails.
    sim.path = Path::Nat(secs(20));
    let failed_at = sim.at();
    sim.search.handle_keepalive_failure(sim.now);
    sim.drain();
    assert_eq!(sim.search.state(), AdaptiveState::Searching);
    let stats = sim.search.stats();
    assert_eq!(stats.upper, Some(secs(48)));
    assert_eq!(stats.lower, None);
    // Meanwhile the fixed 15 s (below 80 % of 48 s) is the interval.
    assert_eq!(stats.interval, secs(15));
    assert!(sim.events.contains(&(
        failed_at,
        AdaptiveEvent::Restarted {
            reason: RestartReason::KeepaliveFailed { interval: secs(48) }
        }
    )));
    // The next probe goes out at once, at the minimum.
    let probes_before = sim.probes.len();
    sim.run_until_settled(failed_at + secs(3600));
    assert_eq!(sim.probes[probes_before], (failed_at, secs(5)));
    let stats = sim.search.stats();
    let lower = stats.lower.unwrap();
    assert!(
        lower <= secs(20) && secs(20) < stats.upper.unwrap(),
        "{stats:?}"
    );
    assert!(stats.interval < secs(20));
}

#[test]
fn a_network_change_restarts_from_nothing_and_forgets_the_probe_out() {
    let mut sim = Sim::new(config(), Path::Nat(secs(30)));
    sim.run_until(secs(3)); // the first probe (5 s) is out
    assert_eq!(sim.search.stats().probing, Some(secs(5)));
    sim.search.handle_network_change(sim.now);
    assert_eq!(sim.search.stats().probing, None);
    assert_eq!(sim.search.state(), AdaptiveState::Searching);
    // A late report about the old probe is ignored.
    sim.search.handle_outcome(sim.now, 1, ProbeOutcome::Arrived);
    assert_eq!(sim.search.stats().lower, None);
    sim.path = Path::Nat(secs(90));
    sim.run_until_settled(secs(3600));
    let stats = sim.search.stats();
    assert!(stats.lower.unwrap() <= secs(90) && secs(90) < stats.upper.unwrap());
    assert_eq!(sim.probes[1], (secs(3), secs(5)), "a new probe at once");
}

#[test]
fn the_periodic_recheck_confirms_or_restarts() {
    let config = config().with_recheck_every(secs(1800));
    let mut sim = Sim::new(config, Path::Nat(secs(30)));
    sim.run_until_settled(secs(600));
    let settled_at = sim
        .events
        .iter()
        .find(|(_, e)| matches!(e, AdaptiveEvent::Settled { .. }))
        .map(|(at, _)| *at)
        .unwrap();
    let n = sim.probes.len();
    sim.run_until(settled_at + secs(1800) + secs(60));
    // One probe, at the lower bound, exactly one recheck period after settling.
    assert_eq!(sim.probes.len(), n + 1);
    assert_eq!(sim.probes[n], (settled_at + secs(1800), secs(30)));
    assert_eq!(sim.search.state(), AdaptiveState::Settled);
    // The binding shrinks to 12 s: the next recheck loses its probe-back and searches below.
    sim.path = Path::Nat(secs(12));
    sim.run_until(settled_at + secs(2 * 1800) + secs(600));
    assert!(sim.events.iter().any(|(_, e)| *e
        == AdaptiveEvent::Restarted {
            reason: RestartReason::RecheckFailed
        }));
    let stats = sim.search.stats();
    assert_eq!(stats.state, AdaptiveState::Settled);
    assert!(stats.lower.unwrap() <= secs(12) && secs(12) < stats.upper.unwrap());
}

#[test]
fn a_binding_below_the_minimum_settles_at_the_minimums_fraction() {
    let mut sim = Sim::new(config(), Path::Nat(secs(3)));
    // Support proven first with a lifetime of 30 s, then the path gets worse.
    sim.path = Path::Nat(secs(30));
    sim.run_until(secs(1));
    sim.run_until(secs(6));
    sim.path = Path::Nat(secs(3));
    sim.search.handle_network_change(sim.now);
    sim.run_until_settled(secs(600));
    let stats = sim.search.stats();
    assert_eq!(stats.lower, None);
    assert_eq!(stats.upper, Some(secs(5)));
    assert_eq!(stats.interval, secs(4));
    assert!(sim.settled_events().contains(&AdaptiveEvent::Settled {
        lifetime: None,
        interval: secs(4),
        probes: 1
    }));
}

#[test]
fn a_binding_beyond_the_maximum_settles_at_the_maximum() {
    let mut sim = Sim::new(config(), Path::Nat(secs(10_000)));
    sim.run_until_settled(secs(3600));
    let stats = sim.search.stats();
    assert_eq!(stats.lower, Some(secs(300)));
    assert_eq!(stats.upper, None);
    assert_eq!(stats.interval, secs(240));
    let delays: Vec<u64> = sim.probes.iter().map(|(_, d)| d.as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300]);
}

#[test]
fn a_busy_server_is_asked_again_after_its_max_age() {
    let t = Instant::now();
    let mut search = IntervalSearch::new(config(), t).unwrap();
    let probe = search.poll_probe(t).unwrap();
    search.handle_outcome(
        t,
        probe.id,
        ProbeOutcome::Busy {
            retry_after: secs(30),
        },
    );
    assert_eq!(search.poll_probe(t + secs(29)), None);
    assert_eq!(search.poll_timeout(), Some(t + secs(30)));
    let again = search.poll_probe(t + secs(30)).unwrap();
    assert_eq!(again.delay, probe.delay);
}

#[test]
fn while_searching_the_interval_is_the_best_known() {
    let t = Instant::now();
    let mut search = IntervalSearch::new(config(), t).unwrap();
    assert_eq!(
        search.interval(),
        secs(15),
        "the fixed interval before anything is known"
    );
    let mut now = t;
    // 5, 10, 20 arrive: 80 % of 20 s = 16 s beats the fixed 15 s.
    for _ in 0..3 {
        let probe = search.poll_probe(now).unwrap();
        now += probe.delay;
        search.handle_outcome(now, probe.id, ProbeOutcome::Arrived);
    }
    assert_eq!(search.interval(), secs(16));
    assert_eq!(search.state(), AdaptiveState::Searching);
}

#[test]
fn invalid_settings_name_the_field() {
    let bad = [
        AdaptiveConfig::new(secs(0), secs(10)),
        AdaptiveConfig::new(secs(10), secs(10)),
        config().with_safety_percent(0),
        config().with_safety_percent(101),
        config().with_tolerance_percent(0),
        config().with_probe_budget(0, secs(3600)),
        config().with_recheck_every(Duration::ZERO),
        config().with_fallback_interval(Duration::ZERO),
    ];
    for config in bad {
        let error = IntervalSearch::new(config, Instant::now()).unwrap_err();
        assert!(error.to_string().contains("adaptive"), "{error}");
    }
}

/// The figures of the BENCHMARKS.md table (virtual time, default settings: 5..180 s, 80 %,
/// 10 % tolerance, 12 probes an hour, 2 s grace): against NAT bindings of 10, 30 and 60 s, the
/// interval the search settles on, the probes and the time it spends, and the pings an hour
/// that follow, beside a fixed 15 s interval (240 an hour, and dead behind the 10 s NAT).
#[test]
fn the_benchmark_table() {
    let expected = [
        // lifetime s, interval ms, probes, settled after ms
        (10, 8_000, 7, 94_415),
        (30, 24_000, 7, 178_580),
        (60, 48_000, 8, 356_100),
    ];
    println!("| NAT binding | settles on | probes | time to settle | pings / hour | fixed 15 s |");
    println!("|---|---|---|---|---|---|");
    for (lifetime, interval_ms, probes, settled_ms) in expected {
        let config = AdaptiveConfig::new(secs(5), secs(180));
        let mut sim = Sim::new(config, Path::Nat(secs(lifetime)));
        sim.run_until_settled(secs(3600));
        let stats = sim.search.stats();
        let settled_at = sim
            .events
            .iter()
            .find(|(_, e)| matches!(e, AdaptiveEvent::Settled { .. }))
            .map(|(at, _)| *at)
            .unwrap();
        let per_hour = 3_600_000 / stats.interval.as_millis();
        let fixed = if lifetime <= 15 {
            "240 / h, binding lost"
        } else {
            "240 / h"
        };
        println!(
            "| {lifetime} s | {:.1} s | {} | {:.1} s | {per_hour} | {fixed} |",
            stats.interval.as_secs_f64(),
            stats.search_probes,
            settled_at.as_secs_f64()
        );
        assert_eq!(stats.interval, Duration::from_millis(interval_ms));
        assert_eq!(stats.search_probes, probes);
        assert_eq!(settled_at, Duration::from_millis(settled_ms));
    }
}
