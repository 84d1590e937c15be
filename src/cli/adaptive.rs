//! The adaptive keepalive on the command line: `ping --adaptive MIN..MAX` (the client, which
//! lets the session's own keepalive ping at the interval found and prints what the search
//! does) and `serve`'s probe resource (on unless `--no-keepalive-probe`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::proto::adaptive::{
    AdaptiveConfig, AdaptiveEvent, AdaptiveState, AdaptiveStats, FallbackReason, RestartReason,
};
use coap_keepalive::{AdaptiveKeepalive, Context, EventKind, ProbeLimits, Result, Session};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::args::parse_secs;
use super::json;
use super::output::{ms, Signals};

/// The adaptive flags of `ping`.
#[derive(Debug, Args)]
pub struct AdaptiveArgs {
    /// coap:// only: find the longest idle time the path (its NAT) keeps alive, between MIN
    /// and MAX seconds ("5..180"; fractions allowed), by asking the server for probe-backs on
    /// a second socket; the session's own keepalive then pings at the safety fraction of it,
    /// and -i is the fixed interval used until then and against servers without probes. One
    /// line per step of the search; bound the run with -w.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    adaptive: Option<(Duration, Duration)>,
    /// With --adaptive: the interval as a percentage of the lifetime found (default 80).
    #[arg(long, value_name = "PERCENT", requires = "adaptive",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    adaptive_safety: Option<u8>,
    /// With --adaptive: at most this many probes in any hour (default 12).
    #[arg(long, value_name = "N", requires = "adaptive",
          value_parser = clap::value_parser!(u32).range(1..))]
    probes_per_hour: Option<u32>,
    /// With --adaptive: how long after its delay a probe-back may still arrive (default 2).
    #[arg(long, value_name = "SECS", requires = "adaptive", value_parser = parse_secs)]
    probe_grace: Option<Duration>,
}

impl AdaptiveArgs {
    /// The search's settings when --adaptive was given, with `fixed` (-i) as the fallback.
    pub fn config(&self, fixed: Duration) -> Option<AdaptiveConfig> {
        let (min, max) = self.adaptive?;
        let mut config = AdaptiveConfig::new(min, max).with_fallback_interval(fixed);
        if let Some(percent) = self.adaptive_safety {
            config = config.with_safety_percent(percent);
        }
        if let Some(probes) = self.probes_per_hour {
            config = config.with_probe_budget(probes, Duration::from_secs(3600));
        }
        if let Some(grace) = self.probe_grace {
            config = config.with_grace(grace);
        }
        Some(config)
    }
}

impl AdaptiveArgs {
    /// True when --adaptive was given.
    pub fn is_on(&self) -> bool {
        self.adaptive.is_some()
    }

    /// Why --adaptive cannot run against a peer of `transport`, if it cannot.
    pub fn problem(&self, transport: coap_keepalive::Transport) -> Option<String> {
        (self.adaptive.is_some() && transport != coap_keepalive::Transport::Udp).then(|| {
            format!(
                "--adaptive applies to coap:// only (it measures a UDP NAT binding), not {}://",
                transport.scheme()
            )
        })
    }
}

/// Parses `MIN..MAX` in seconds.
fn parse_range(s: &str) -> std::result::Result<(Duration, Duration), String> {
    let (min, max) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not MIN..MAX (seconds, e.g. 5..180)"))?;
    let (min, max) = (parse_secs(min)?, parse_secs(max)?);
    if min.is_zero() || max <= min {
        return Err(format!("{s:?}: MIN must be above 0 and MAX above MIN"));
    }
    Ok((min, max))
}

/// The probe flags of `serve`.
#[derive(Debug, Args)]
pub struct ProbeServeArgs {
    /// Do not serve POST /.well-known/keepalive-probe, the resource with which clients
    /// (`ping --adaptive`) measure their NAT's binding lifetime. It is on by default: it is
    /// bounded (one probe-back per client address, 8 per IP address, 1024 in all) and sends
    /// back, only to the requester, less than it received.
    #[arg(long)]
    no_keepalive_probe: bool,
    /// The longest probe delay served, in seconds (default 240).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, conflicts_with = "no_keepalive_probe")]
    probe_max_delay: Option<Duration>,
}

impl ProbeServeArgs {
    /// Adds the probe resource to `ctx` unless turned off; true when it did.
    pub fn install(&self, ctx: &Context) -> Result<bool> {
        if self.no_keepalive_probe {
            return Ok(false);
        }
        let mut limits = ProbeLimits::default();
        if let Some(max) = self.probe_max_delay {
            limits = limits.with_max_delay(max);
        }
        ctx.serve_keepalive_probes(limits)?;
        Ok(true)
    }
}

/// How `run` prints: lines for people, or (`--json`) one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`.
    pub json: bool,
    /// `-q`: the first line and the summary only.
    pub quiet: bool,
    /// When the command started, for JSON's `time_s`.
    pub started: Instant,
}

impl Output {
    fn print(&self, name: &str, fields: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                json::event(name, self.started.elapsed(), None, fields)
            );
        } else {
            println!("{}", text());
        }
    }
}

/// Runs the adaptive keepalive of `session` until the deadline, a signal or the session's
/// failure, printing each step of the search and each pong; then a summary. Exits 1 when the
/// session failed.
pub async fn run(
    ctx: &Context,
    session: &Session,
    config: AdaptiveConfig,
    deadline: Option<Instant>,
    signals: &mut Signals,
    out: Output,
) -> Result<ExitCode> {
    let mut events = ctx.events();
    let adaptive = AdaptiveKeepalive::start(ctx, session, config)?;
    let peer = session.peer();
    let start = json!({
        "peer": peer.to_string(),
        "min_s": json::secs(config.min()),
        "max_s": json::secs(config.max()),
        "fixed_interval_s": json::secs(config.fallback_interval()),
    });
    out.print("adaptive_start", start, || {
        format!(
            "ADAPTIVE PING coap://{peer}: searching {}..{} (fixed {} meanwhile)",
            secs(config.min()),
            secs(config.max()),
            secs(config.fallback_interval())
        )
    });
    let quiet = out.quiet;
    let mut failed = false;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(Ok(event)) = event else { break };
                if event.session.id() != session.id() {
                    continue;
                }
                match &event.kind {
                    EventKind::Adaptive(step) if !quiet => {
                        let (name, fields) = step_json(step);
                        let name = format!("adaptive_{name}");
                        out.print(&name, fields, || format!("adaptive: {step}"));
                    }
                    EventKind::Pong { rtt } if !quiet => {
                        let fields = json!({ "peer": peer.to_string(), "rtt_ms": json::ms(*rtt) });
                        out.print("pong", fields, || format!("pong from {peer}: time={}", ms(*rtt)));
                    }
                    EventKind::PingUnanswered { count } if !quiet => {
                        let fields = json!({ "peer": peer.to_string(), "count": count });
                        out.print("unanswered", fields, || format!("no answer from {peer} ({count} unanswered)"));
                    }
                    EventKind::Failed(reason) => {
                        let fields = json!({ "peer": peer.to_string(), "reason": reason.label() });
                        out.print("failed", fields, || format!("{peer}: {reason}, the session failed"));
                        failed = true;
                        break;
                    }
                    kind if kind.is_terminal() => break,
                    _ => {}
                }
            }
            _ = until(deadline) => break,
            _ = signals.recv() => break,
        }
    }
    let stats = adaptive.stats();
    drop(adaptive);
    let pings = session.stats();
    let fields = json!({
        "peer": peer.to_string(),
        "state": stats.state.to_string(),
        "lower_ms": stats.lower.map(json::ms),
        "upper_ms": stats.upper.map(json::ms),
        "interval_ms": json::ms(stats.interval),
        "search_probes": stats.search_probes,
        "probes_sent": stats.probes_sent,
        "probes_arrived": stats.probes_arrived,
        "pings_sent": pings.pings_sent,
        "pongs": pings.pongs,
    });
    out.print("adaptive_summary", fields, || {
        format!(
            "--- coap://{peer} adaptive keepalive ---\n{}\n{} pings sent, {} pongs received",
            summary(&stats),
            pings.pings_sent,
            pings.pongs
        )
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The JSON event of one step of the search: its name and fields.
fn step_json(step: &AdaptiveEvent) -> (&'static str, Value) {
    match step {
        AdaptiveEvent::ProbeSent { delay } => {
            ("probe_sent", json!({ "delay_ms": json::ms(*delay) }))
        }
        AdaptiveEvent::ProbeArrived { delay } => {
            ("probe_arrived", json!({ "delay_ms": json::ms(*delay) }))
        }
        AdaptiveEvent::ProbeLost { delay } => {
            ("probe_lost", json!({ "delay_ms": json::ms(*delay) }))
        }
        AdaptiveEvent::Settled {
            lifetime,
            interval,
            probes,
        } => (
            "settled",
            json!({
                "lifetime_ms": lifetime.map(json::ms),
                "interval_ms": json::ms(*interval),
                "probes": probes,
            }),
        ),
        AdaptiveEvent::Fallback { reason } => {
            let reason = match reason {
                FallbackReason::Unsupported => "unsupported",
                _ => "no_answer",
            };
            ("fallback", json!({ "reason": reason }))
        }
        AdaptiveEvent::Restarted { reason } => {
            let (reason, interval) = match reason {
                RestartReason::KeepaliveFailed { interval } => {
                    ("keepalive_failed", Some(*interval))
                }
                RestartReason::NetworkChanged => ("network_changed", None),
                RestartReason::RecheckFailed => ("recheck_failed", None),
                _ => ("periodic", None),
            };
            (
                "restarted",
                json!({ "reason": reason, "interval_ms": interval.map(json::ms) }),
            )
        }
        AdaptiveEvent::IntervalChanged { interval } => {
            ("interval", json!({ "interval_ms": json::ms(*interval) }))
        }
        _ => ("adaptive", json!({ "text": step.to_string() })),
    }
}

/// `settled: lifetime 30.000 s (lost at 32.500 s), interval 24.000 s, 7 probes (7 sent, 4 arrived)`.
fn summary(stats: &AdaptiveStats) -> String {
    let found = match (stats.state, stats.lower) {
        (AdaptiveState::Fallback, _) => "fixed interval".to_string(),
        (_, Some(lower)) => format!("lifetime {}", secs(lower)),
        (_, None) => "lifetime below the minimum".to_string(),
    };
    let lost = stats
        .upper
        .map(|u| format!(" (lost at {})", secs(u)))
        .unwrap_or_default();
    format!(
        "{}: {found}{lost}, interval {}, {} probes ({} sent, {} arrived)",
        stats.state,
        secs(stats.interval),
        stats.search_probes,
        stats.probes_sent,
        stats.probes_arrived
    )
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
