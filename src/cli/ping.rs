//! `coap-keepalive ping`: pings to one peer, printed like ping(8).
//!
//! The command sends every ping itself (the session's own keepalive is off), one at a time
//! (NSTART = 1), so it numbers each: `seq` counts pings, not pongs, and a lost one leaves a
//! gap. A ping ends answered (a pong), given up (its RFC 7252 retransmissions exhausted over
//! UDP / DTLS, its pong timeout over TCP / TLS) or, when neither came in time, unanswered;
//! the next one follows `-i` seconds later.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::CoapUri;
use coap_keepalive::Context;
use coap_keepalive::KeepaliveConfig;
use coap_keepalive::PingStyle;
use coap_keepalive::Session;
use coap_keepalive::SessionEvent;
use coap_keepalive::{Events, ReconnectingSession};
use coap_keepalive::{NackReason, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::parse_secs;
use super::json;
use super::output::{ms, refuse_multicast, usage_error, Signals};
use super::reconnect::{self, ReconnectArgs};
use super::secure;
use super::settings::KeepaliveArgs;
use serde_json::json;

/// Arguments of `ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The peer: coap://, coaps:// (DTLS), coap+tcp:// or coaps+tcp:// (TLS) HOST[:PORT].
    uri: String,
    /// Stop after sending this many pings, whatever became of them (0: until interrupted).
    #[arg(short = 'c', long, default_value_t = 0)]
    count: u64,
    /// Seconds from the end of one ping (its pong, or giving up on it) to the next.
    #[arg(short = 'i', long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    interval: Duration,
    /// Stop after this many seconds in all, whatever was sent or received (as ping(8) -w).
    #[arg(short = 'w', long, value_name = "DEADLINE", value_parser = parse_secs)]
    deadline: Option<Duration>,
    /// Quiet: print the PING line and the summary only, no line per ping.
    #[arg(short, long)]
    quiet: bool,
    /// Print one JSON object per ping's fate and one for the summary, instead of lines for
    /// people.
    #[arg(long)]
    json: bool,
    /// The keepalive and transmission settings. `--pong-timeout` defaults to the interval
    /// (at least 1 s); `--max-unanswered` counts a UDP / DTLS ping unanswered when its
    /// retransmissions are exhausted, a TCP / TLS one at its pong timeout (raise it to keep
    /// pinging through loss). `-K` and `--jitter` are refused: this command sends every ping
    /// itself, every `-i` seconds.
    #[command(flatten)]
    settings: KeepaliveArgs,
    #[command(flatten)]
    security: secure::ClientSecurityArgs,
    #[command(flatten)]
    adaptive: super::adaptive::AdaptiveArgs,
    #[command(flatten)]
    reconnect: ReconnectArgs,
}

/// What the library reported about the session.
enum Outcome {
    Pong(Duration),
    Unanswered(u32),
    Nack(NackReason),
}

/// What the command saw, for the summary and the exit status.
#[derive(Default)]
struct Tally {
    sent: u64,
    rtts: Vec<Duration>,
    failure: Option<NackReason>,
}

impl Tally {
    fn received(&self) -> u64 {
        self.rtts.len() as u64
    }
}

/// Pings until `-c` pings were sent, the `-w` deadline, the session fails, or Ctrl-C; then
/// prints the summary. Exits 0 when at least one pong came back (and, with both `-c` and
/// `-w`, all `-c` did; as ping(8)), and the session did not fail; 1 otherwise; 2 on a usage
/// error.
pub async fn run(args: PingArgs) -> Result<ExitCode> {
    let mut signals = Signals::new();
    let started = Instant::now();
    let deadline = args.deadline.map(|d| started + d);
    let uri = CoapUri::parse(&args.uri)?;
    if let Some(problem) = ignored_flag(&args, &uri) {
        return Ok(usage_error(&problem));
    }
    if let Some(problem) = args.adaptive.problem(uri.transport) {
        return Ok(usage_error(&problem));
    }
    if args.adaptive.is_on() && args.reconnect.reconnect {
        return Ok(usage_error(
            "--adaptive and --reconnect together are not supported yet: the search follows one session",
        ));
    }
    let peer = uri.resolve().await?;
    if let Some(problem) = refuse_multicast(peer.ip()) {
        return Ok(usage_error(&format!("{uri}: {problem}")));
    }
    // Keepalive off (-K is refused): this command sends every ping itself, so that it can
    // number them.
    let credentials = args.security.credentials(uri.transport)?;
    let built = args
        .settings
        .apply(Context::builder())
        .keepalive(Duration::ZERO)
        .pong_timeout(
            args.settings
                .pong_timeout
                .unwrap_or(args.interval.max(Duration::from_secs(1))),
        )
        .connect_timeout(
            args.security
                .handshake_timeout
                .max(Duration::from_millis(1)),
        )
        .build();
    let ctx = match built {
        Ok(ctx) => ctx,
        Err(error) => return Ok(usage_error(&error.to_string())),
    };
    let config: KeepaliveConfig = ctx.keepalive_config();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pongs = tx.clone();
    ctx.register_pong_handler(move |_, rtt| {
        let _ = pongs.send(Outcome::Pong(rtt));
    });
    let unanswered = tx.clone();
    ctx.register_event_handler(move |_, event| {
        if let SessionEvent::PingUnanswered { count } = event {
            let _ = unanswered.send(Outcome::Unanswered(count));
        }
    });
    ctx.register_nack_handler(move |_, reason| {
        let _ = tx.send(Outcome::Nack(reason));
    });

    let mut events = args.reconnect.reconnect.then(|| ctx.events());
    let connecting = async {
        match args.reconnect.policy() {
            Some(policy) => ctx
                .connect_reconnecting(&args.uri, &credentials, policy)
                .await
                .map(|client| (client.session(), Some(client))),
            None => ctx
                .connect_with(&args.uri, &credentials)
                .await
                .map(|session| (session, None)),
        }
    };
    let (mut session, client): (Session, Option<ReconnectingSession>) = tokio::select! {
        connected = connecting => match connected {
            Ok(connected) => connected,
            Err(error) => {
                let why = secure::explain(&error, uri.transport, &credentials);
                eprintln!("coap-keepalive: {uri}: {why}");
                return Ok(ExitCode::FAILURE);
            }
        },
        _ = until(deadline) => {
            eprintln!("coap-keepalive: {uri}: not connected within the -w deadline");
            return Ok(ExitCode::FAILURE);
        }
        _ = signals.recv() => return Ok(ExitCode::FAILURE),
    };
    if let Some(adaptive) = args.adaptive.config(args.interval) {
        let out = super::adaptive::Output {
            json: args.json,
            quiet: args.quiet,
            started,
        };
        let code = super::adaptive::run(&ctx, &session, adaptive, deadline, &mut signals, out);
        let code = code.await;
        ctx.shutdown().await;
        return code;
    }
    if args.json {
        let start = json!({
            "uri": uri.to_string(),
            "transport": uri.transport.name(),
            "peer": session.peer().to_string(),
            "interval_s": args.interval.as_secs_f64(),
        });
        println!("{}", json::event("start", started.elapsed(), None, start));
    } else {
        println!(
            "PING {uri} ({} {}) every {}s",
            uri.transport.name(),
            session.peer(),
            args.interval.as_secs_f64()
        );
    }
    let mut tally = Tally::default();
    loop {
        ping_loop(
            started,
            &args,
            &config,
            &session,
            &mut rx,
            &mut signals,
            deadline,
            &mut tally,
        )
        .await;
        let (Some(client), Some(events)) = (&client, events.as_mut()) else {
            break;
        };
        let done = args.count > 0 && tally.sent >= args.count;
        if tally.failure.is_none() || done {
            break;
        }
        if !reconnected(started, &args, events, &mut signals, deadline).await {
            break;
        }
        // Back: the failure was recovered from, and pinging goes on on the new session.
        session = client.session();
        tally.failure = None;
    }
    drop(client);
    let stats = session.stats();
    ctx.shutdown().await;
    let received = tally.received();
    let lost = tally.sent.saturating_sub(received);
    let loss = if tally.sent == 0 {
        0.0
    } else {
        100.0 * lost as f64 / tally.sent as f64
    };
    let rtt = RttSummary::of(&tally.rtts);
    if args.json {
        let mut summary = json!({
            "sent": tally.sent,
            "received": received,
            "retransmissions": stats.retransmissions,
            "loss_percent": loss,
            "failed": tally.failure.map(|r| r.label()),
        });
        if let Some(rtt) = &rtt {
            summary["rtt_min_ms"] = json::ms(rtt.min);
            summary["rtt_avg_ms"] = json::ms(rtt.avg);
            summary["rtt_max_ms"] = json::ms(rtt.max);
            summary["rtt_mdev_ms"] = json::ms(rtt.mdev);
        }
        println!(
            "{}",
            json::event("summary", started.elapsed(), None, summary)
        );
    } else {
        println!("--- {uri} ping statistics ---");
        println!(
            "{} pings sent, {received} pongs received, {} retransmissions, {loss:.0}% loss, time {:.0}ms",
            tally.sent,
            stats.retransmissions,
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Some(rtt) = rtt {
            println!("{rtt}");
        }
    }
    let incomplete = args.count > 0 && deadline.is_some() && received < args.count;
    Ok(if tally.failure.is_some() || received == 0 || incomplete {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The first option given that this URI's transport would ignore.
fn ignored_flag(args: &PingArgs, uri: &CoapUri) -> Option<String> {
    if let Some(problem) = args.security.ignored_by(uri.transport) {
        return Some(problem);
    }
    if args.settings.keepalive.is_some() || args.settings.jitter.is_some() {
        let flag = if args.settings.keepalive.is_some() {
            "-K"
        } else {
            "--jitter"
        };
        return Some(format!(
            "{flag} does not apply to ping: it sends every ping itself, every -i SECS"
        ));
    }
    let settings = &args.settings;
    let scheme = uri.transport.scheme();
    match uri.transport.ping_style() {
        PingStyle::Datagram if settings.pong_timeout.is_some() => Some(format!(
            "--pong-timeout applies to coap+tcp:// and coaps+tcp:// only: over {scheme}:// a \
             ping is retransmitted (--ack-timeout, --max-retransmit)"
        )),
        PingStyle::Stream
            if settings.ack_timeout.is_some()
                || settings.max_retransmit.is_some()
                || settings.ack_random_factor.is_some() =>
        {
            let flag = if settings.ack_timeout.is_some() {
                "--ack-timeout"
            } else if settings.ack_random_factor.is_some() {
                "--ack-random-factor"
            } else {
                "--max-retransmit"
            };
            Some(format!(
                "{flag} applies to coap:// and coaps:// only: over {scheme}:// a Ping is not \
                 retransmitted (--pong-timeout)"
            ))
        }
        _ => None,
    }
}

/// Sends the pings and prints a line for each, until the count, the deadline, a signal or the
/// session's failure.
#[allow(clippy::too_many_arguments)] // the loop's whole state, passed once
async fn ping_loop(
    started: Instant,
    args: &PingArgs,
    config: &KeepaliveConfig,
    session: &Session,
    rx: &mut mpsc::UnboundedReceiver<Outcome>,
    signals: &mut Signals,
    deadline: Option<Instant>,
    tally: &mut Tally,
) {
    let peer = session.peer();
    // Past this the library has given the ping up without a word: it drops a probe quietly
    // when the peer sent other traffic meanwhile (that proves it alive, not this ping answered).
    let give_up = match session.transport().ping_style() {
        PingStyle::Datagram => config.transmission.max_transmit_wait(),
        _ => config.effective_pong_timeout().unwrap_or_default(),
    } + Duration::from_secs(1);
    loop {
        if args.count > 0 && tally.sent >= args.count {
            return;
        }
        tally.sent += 1;
        let seq = tally.sent;
        session.ping();
        let no_answer = tokio::time::sleep(give_up);
        tokio::pin!(no_answer);
        // The ping's outcome.
        loop {
            tokio::select! {
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Pong(rtt)) => {
                        tally.rtts.push(rtt);
                        if args.json && !args.quiet {
                            let fields = json!({ "seq": seq, "peer": peer.to_string(), "rtt_ms": json::ms(rtt) });
                            println!("{}", json::event("pong", started.elapsed(), None, fields));
                        } else if !args.quiet {
                            println!("pong from {peer}: seq={seq} time={}", ms(rtt));
                        }
                        break;
                    }
                    // Over TCP / TLS the last unanswered ping is reported just before the
                    // nack: the nack line says it.
                    Some(Outcome::Unanswered(count)) if count < config.max_unanswered => {
                        if args.json && !args.quiet {
                            let fields = json!({ "seq": seq, "peer": peer.to_string(), "count": count, "max_unanswered": config.max_unanswered });
                            println!("{}", json::event("unanswered", started.elapsed(), None, fields));
                        } else if !args.quiet {
                            println!(
                                "no answer from {peer}: seq={seq} ({count} of {} unanswered)",
                                config.max_unanswered
                            );
                        }
                        break;
                    }
                    Some(Outcome::Unanswered(_)) => {}
                    Some(Outcome::Nack(reason)) => {
                        nack(started, args, tally, peer, seq, reason);
                        return;
                    }
                    None => return,
                },
                _ = &mut no_answer => {
                    if args.json && !args.quiet {
                        let fields = json!({ "seq": seq, "peer": peer.to_string(), "waited_s": give_up.as_secs_f64() });
                        println!("{}", json::event("no_answer", started.elapsed(), None, fields));
                    } else if !args.quiet {
                        println!("no answer from {peer}: seq={seq} (none within {}s)", give_up.as_secs_f64());
                    }
                    break;
                }
                _ = until(deadline) => return,
                _ = signals.recv() => return,
            }
        }
        if args.count > 0 && tally.sent >= args.count {
            return;
        }
        // The pause before the next ping; the session may still fail in it (a TCP reset).
        let pause = tokio::time::sleep(args.interval);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Nack(reason)) => {
                        nack(started, args, tally, peer, seq, reason);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = until(deadline) => return,
                _ = signals.recv() => return,
            }
        }
    }
}

/// With `--reconnect`, after a failure: prints the reconnection's events until the session is
/// back (true) or will not be, the deadline passed or a signal came (false).
async fn reconnected(
    started: Instant,
    args: &PingArgs,
    events: &mut Events,
    signals: &mut Signals,
    deadline: Option<Instant>,
) -> bool {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    let Some(said) = reconnect::said(&event) else { continue };
                    if args.json {
                        println!("{}", json::event(said.name, started.elapsed(), None, said.fields));
                    } else if !args.quiet {
                        println!("{}", said.line);
                    }
                    if let Some(back) = said.settled {
                        return back;
                    }
                }
                Some(Err(_lagged)) => {}
                None => return false,
            },
            _ = until(deadline) => return false,
            _ = signals.recv() => return false,
        }
    }
}

/// Records and prints the session's failure: it ends the run, so with `-q` too, on stderr.
fn nack(
    started: Instant,
    args: &PingArgs,
    tally: &mut Tally,
    peer: std::net::SocketAddr,
    seq: u64,
    reason: NackReason,
) {
    let line = format!("{peer}: seq={seq}: {reason}, the session failed");
    if args.json {
        let fields = json!({ "seq": seq, "peer": peer.to_string(), "reason": reason.label() });
        println!("{}", json::event("nack", started.elapsed(), None, fields));
    } else if args.quiet {
        eprintln!("coap-keepalive: {line}");
    } else {
        println!("{line}");
    }
    tally.failure = Some(reason);
}

/// Sleeps until `deadline`, forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// ping(8)'s last line: minimum, mean, maximum and mean deviation of the round-trip times.
struct RttSummary {
    min: Duration,
    avg: Duration,
    max: Duration,
    mdev: Duration,
}

impl RttSummary {
    /// The summary of `rtts`; `None` when there are none.
    fn of(rtts: &[Duration]) -> Option<RttSummary> {
        let min = *rtts.iter().min()?;
        let max = *rtts.iter().max()?;
        let n = rtts.len() as f64;
        let secs: Vec<f64> = rtts.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / n;
        let mean_square = secs.iter().map(|s| s * s).sum::<f64>() / n;
        // As ping(8): sqrt(mean(rtt^2) - mean(rtt)^2).
        let mdev = (mean_square - mean * mean).max(0.0).sqrt();
        Some(RttSummary {
            min,
            avg: Duration::from_secs_f64(mean),
            max,
            mdev: Duration::from_secs_f64(mdev),
        })
    }
}

impl std::fmt::Display for RttSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "rtt min/avg/max/mdev = {:.3}/{:.3}/{:.3}/{:.3} ms",
            ms(self.min),
            ms(self.avg),
            ms(self.max),
            ms(self.mdev)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::RttSummary;
    use std::time::Duration;

    #[test]
    fn rtt_summary_as_ping8() {
        let ms = Duration::from_millis;
        let summary = RttSummary::of(&[ms(1), ms(2), ms(3), ms(6)]).unwrap();
        // mean 3 ms; mean square 12.5 ms^2; mdev sqrt(3.5) = 1.871 ms
        assert_eq!(
            summary.to_string(),
            "rtt min/avg/max/mdev = 1.000/3.000/6.000/1.871 ms"
        );
        assert!(RttSummary::of(&[]).is_none());
    }
}
