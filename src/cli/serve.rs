//! `coap-keepalive serve`: a server on each address given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use coap_keepalive::credentials::{ServerCredentials, ServerPsk};
use coap_keepalive::Context;
use coap_keepalive::{Error, Result};
use coap_keepalive::{PeerPing, PingDecision, SessionEvent};
use coap_keepalive::{Session, Stats, Transport};

use super::output::{ms, refuse_multicast, Printer, Signals};
use super::secure;
use super::settings::{read_config, KeepaliveArgs, TableArgs};
use super::{http, json};
use serde_json::json;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve CoAP over UDP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    /// Serve CoAP over TCP on this address (repeatable).
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// Serve CoAP over DTLS on this address (repeatable); needs --psk-key or --psk-file, or
    /// --cert and --key, or both: PSK clients and certificate clients on one port.
    #[arg(long, value_name = "ADDR")]
    dtls: Vec<SocketAddr>,
    /// Serve CoAP over TLS on this address (repeatable); needs --cert and --key.
    #[arg(long, value_name = "ADDR")]
    tls: Vec<SocketAddr>,
    /// DTLS: the PSK identity clients use (any identity is given the key, as libcoap's -k does).
    #[arg(long, value_name = "ID", requires = "psk_key")]
    psk_identity: Option<String>,
    /// DTLS: the pre-shared key, as text, for any client identity.
    #[arg(long, value_name = "KEY", conflicts_with = "psk_file")]
    psk_key: Option<String>,
    /// DTLS: a key per client identity, one `identity:key` a line (the key as text, or hex
    /// after 0x; # starts a comment); an unknown identity is refused.
    #[arg(long, value_name = "FILE")]
    psk_file: Option<PathBuf>,
    /// DTLS: the PSK identity hint sent to clients (default CoAP, as libcoap; "" sends none).
    #[arg(long, value_name = "HINT")]
    psk_hint: Option<String>,
    /// The server's certificate chain (PEM), for TLS and DTLS (with a PSK too, DTLS serves
    /// both kinds of client, each by the cipher suites its ClientHello offers).
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM; ECDSA P-256 for DTLS).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    ca: Option<PathBuf>,
    #[command(flatten)]
    keepalive: KeepaliveArgs,
    #[command(flatten)]
    table: TableArgs,
    /// Read the keepalive, transmission and session-table settings from this TOML file, keys
    /// named as the flags (`keepalive = 30`, `ack-timeout = 2`, `max-sessions = 1000`); the
    /// flags given win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics and the session listing at /sessions
    /// (JSON; `coap-keepalive sessions ADDR` prints it). ADDR is PORT (on 127.0.0.1) or
    /// HOST:PORT. Unauthenticated: anyone who reaches it reads every peer's address. Off
    /// unless given.
    #[arg(long, value_name = "ADDR", value_parser = http::parse_listen_addr)]
    metrics: Option<SocketAddr>,
    /// Print one JSON object per event and one for the summary, instead of lines for people.
    #[arg(long)]
    json: bool,
    /// Seconds between notifications to the observers of /time (0: never; libcoap's example
    /// server notifies every second too).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = super::args::parse_secs)]
    notify_every: Duration,
    /// The largest request body, in bytes, reassembled from a client's blocks (RFC 7959) and
    /// kept by /echo; a larger one is answered 4.13 Request Entity Too Large. Default 1048576
    /// (1 MiB); all sessions together hold at most 16 such bodies.
    #[arg(long, value_name = "BYTES", value_parser = super::args::parse_body_size)]
    max_body_size: Option<usize>,
    /// Print only the summary, not a line per event (for load tests).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    probes: super::adaptive::ProbeServeArgs,
}

/// Runs the server until Ctrl-C or SIGTERM, then prints a summary. `verbose` (`-v`) adds a
/// line per request.
pub async fn run(mut args: ServeArgs, verbose: u8) -> Result<ExitCode> {
    if let Some(problem) = usage_problem(&args) {
        return Ok(super::output::usage_error(&problem));
    }
    if let Some(file) = args.config.clone() {
        if let Err(why) = read_config(&file, &mut args.keepalive, &mut args.table) {
            return Ok(super::output::usage_error(&why));
        }
    }
    let (dtls_credentials, tls_credentials) = credentials(&args)?;
    let ServeArgs {
        mut udp,
        mut tcp,
        dtls,
        tls,
        keepalive: keepalive_args,
        table,
        notify_every,
        max_body_size,
        quiet,
        metrics,
        json,
        probes,
        ..
    } = args;
    let keepalive = keepalive_args.keepalive.unwrap_or_default();
    if udp.is_empty() && tcp.is_empty() && dtls.is_empty() && tls.is_empty() {
        let default: SocketAddr = ([0, 0, 0, 0], coap_keepalive::COAP_PORT).into();
        udp.push(default);
        tcp.push(default);
    }
    let mut signals = Signals::new();
    let mut builder = table.apply(keepalive_args.apply(Context::builder()));
    if let Some(bytes) = max_body_size {
        builder = builder.max_body_size(bytes);
    }
    let ctx = match builder.build() {
        Ok(ctx) => ctx,
        Err(error) => return Ok(super::output::usage_error(&error.to_string())),
    };
    let printer = Printer::new();
    let out = Out { printer, json };
    let log_requests = (verbose > 0 && !quiet && !json).then_some(printer);
    super::resources::install(&ctx, Some(notify_every), log_requests);
    let probing = probes.install(&ctx)?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    install_handlers(&ctx, out, quiet, tally.clone());
    if let Some(addr) = metrics {
        match http::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(addr);
                if json {
                    out.event("metrics", None, json!({ "url": format!("http://{bound}/metrics"), "sessions_url": format!("http://{bound}/sessions") }));
                } else {
                    println!(
                        "serving metrics http://{bound}/metrics and /sessions (no authentication)"
                    );
                }
                tokio::spawn(http::serve(listener, ctx.clone()));
            }
            Err(error) => {
                eprintln!("coap-keepalive: cannot serve metrics on {addr}: {error}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let listeners = udp
        .into_iter()
        .map(|a| (Transport::Udp, a))
        .chain(tcp.into_iter().map(|a| (Transport::Tcp, a)))
        .chain(dtls.into_iter().map(|a| (Transport::Dtls, a)))
        .chain(tls.into_iter().map(|a| (Transport::Tls, a)));
    for (transport, addr) in listeners {
        let bound = match transport {
            Transport::Udp => ctx.listen_udp(addr).await,
            Transport::Tcp => ctx.listen_tcp(addr).await,
            // usage_problem made sure the credentials are there.
            Transport::Dtls => match dtls_credentials.clone() {
                Some(credentials) => ctx.listen_dtls(addr, credentials).await,
                None => Err(Error::Config("no DTLS credentials".into())),
            },
            _ => match tls_credentials.clone() {
                Some(credentials) => ctx.listen_tls(addr, credentials).await,
                None => Err(Error::Config("no TLS credentials".into())),
            },
        };
        let scheme = transport.scheme();
        let name = transport.name();
        match bound {
            Ok(endpoint) => {
                let mode = match transport {
                    Transport::Dtls => dtls_credentials.as_ref().map(mode),
                    Transport::Tls => tls_credentials.as_ref().map(mode),
                    _ => None,
                };
                if json {
                    let uri = format!("{scheme}://{}", endpoint.local_addr);
                    out.event(
                        "listening",
                        None,
                        json!({ "uri": uri, "transport": name, "mode": mode }),
                    );
                    continue;
                }
                let mode = mode.map(|m| format!(", {m}")).unwrap_or_default();
                println!("serving {scheme}://{} ({name}{mode})", endpoint.local_addr);
            }
            Err(error) => {
                eprintln!("coap-keepalive: cannot serve {scheme}://{addr} ({name}): {error}");
                ctx.shutdown().await;
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if !keepalive.is_zero() && !json {
        println!(
            "pinging clients after {} idle seconds",
            keepalive.as_secs_f64()
        );
    }
    if probing && !json {
        println!("answering keepalive probes at /.well-known/keepalive-probe");
    }
    signals.recv().await;
    // What the sessions were when the signal came: shutting down closes the open ones.
    let ended = lock(&tally).clone();
    ctx.shutdown().await;
    let stats = ctx.stats();
    if json {
        println!("{}", summary_json(&ended, printer.elapsed(), &stats));
    } else {
        println!("{}", summary(&ended, printer.elapsed(), &stats));
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary as one JSON object (`"event": "summary"`), with the figures of [`summary`].
fn summary_json(tally: &Tally, elapsed: Duration, stats: &Stats) -> String {
    json::event(
        "summary",
        elapsed,
        None,
        json!({
            "sessions_served": tally.served,
            "closed": tally.closed,
            "open_at_exit": tally.open(),
            "failed": tally.failed,
            "failed_before_session": tally.failed_early,
            "pings_received": stats.pings_received,
            "pings_sent": stats.pings_sent,
            "pongs": stats.pongs,
            "retransmissions": stats.retransmissions,
        }),
    )
}

/// Where events go: lines for people, or one JSON object each.
#[derive(Debug, Clone, Copy)]
struct Out {
    printer: Printer,
    json: bool,
}

impl Out {
    /// One event about `session`: `text` for people, `name` and `fields` in JSON.
    fn session(&self, session: &Session, text: &str, name: &str, fields: serde_json::Value) {
        if self.json {
            self.event(name, Some(session), fields);
        } else {
            self.printer.session(session, text);
        }
    }

    /// One JSON event line.
    fn event(&self, name: &str, session: Option<&Session>, fields: serde_json::Value) {
        println!(
            "{}",
            json::event(name, self.printer.elapsed(), session, fields)
        );
    }
}

/// How the sessions of a run ended, from the handlers' reports (each session counts once).
#[derive(Debug, Clone, Default)]
struct Tally {
    /// Sessions established so far.
    served: u64,
    /// Established sessions that ended normally (closed by the peer, Release, idle expiry).
    closed: u64,
    /// Established sessions that failed (a nack).
    failed: u64,
    /// Connections that failed before they became a session (handshake, CSM).
    failed_early: u64,
}

impl Tally {
    /// Sessions established and not ended yet. Each established session ends once, closed or
    /// failed, and says itself whether it was established ([`Session::was_established`]), so
    /// no set of ids is kept for every session.
    fn open(&self) -> u64 {
        self.served.saturating_sub(self.closed + self.failed)
    }
}

/// The exit summary: `served N sessions in Ts (C closed, O open at exit): P pings received,
/// S pings sent, Q pongs, F failed`, where N = C + O + F; then, if any, the connections that
/// failed before they became sessions.
fn summary(tally: &Tally, elapsed: std::time::Duration, stats: &Stats) -> String {
    let mut line = format!(
        "served {} sessions in {:.1}s ({} closed, {} open at exit): {} pings received, {} \
         pings sent, {} pongs, {} failed",
        tally.served,
        elapsed.as_secs_f64(),
        tally.closed,
        tally.open(),
        stats.pings_received,
        stats.pings_sent,
        stats.pongs,
        tally.failed
    );
    if tally.failed_early > 0 {
        line.push_str(&format!(
            "\n{} connections failed before becoming a session (handshake or CSM)",
            tally.failed_early
        ));
    }
    line
}

/// Options that do not fit together or would be ignored, and multicast addresses.
fn usage_problem(args: &ServeArgs) -> Option<String> {
    let all = args
        .udp
        .iter()
        .chain(&args.tcp)
        .chain(&args.dtls)
        .chain(&args.tls);
    for addr in all {
        if let Some(problem) = refuse_multicast(addr.ip()) {
            return Some(problem);
        }
    }
    let certificate = args.cert.is_some();
    let psk = args.psk_key.is_some() || args.psk_file.is_some();
    if !args.dtls.is_empty() && !psk && !certificate {
        return Some("--dtls needs --psk-key or --psk-file, or --cert and --key".into());
    }
    if args.psk_hint.is_some() && !psk {
        return Some("--psk-hint needs --psk-key or --psk-file".into());
    }
    if !args.tls.is_empty() && !certificate {
        return Some(
            "--tls needs --cert and --key (TLS with a PSK is not supported: rustls has no PSK \
             cipher suites)"
                .into(),
        );
    }
    if psk && args.dtls.is_empty() {
        return Some(
            "--psk-key and --psk-file apply to --dtls only (TLS has no PSK mode here)".into(),
        );
    }
    if certificate && args.tls.is_empty() && args.dtls.is_empty() {
        return Some("--cert applies to --tls and --dtls: here nothing would use it".into());
    }
    None
}

/// The credentials of the DTLS and the TLS endpoints, from the options given: DTLS serves the
/// PSK, the certificate, or both; TLS takes only certificates.
fn credentials(args: &ServeArgs) -> Result<(Option<ServerCredentials>, Option<ServerCredentials>)> {
    let identity = secure::identity(args.cert.as_deref(), args.key.as_deref())?;
    let client_ca_pem = secure::ca(args.ca.as_deref())?;
    let certificate = identity
        .clone()
        .map(|identity| ServerCredentials::Certificate {
            identity,
            client_ca_pem: client_ca_pem.clone(),
        });
    let psk = match (&args.psk_file, &args.psk_key) {
        (Some(file), _) => Some(ServerPsk::from_file(file)?),
        (None, Some(key)) => {
            // As libcoap's -k: whatever identity a client sends, --psk-identity included.
            tracing::debug!(identity = ?args.psk_identity, "every PSK identity gets --psk-key");
            Some(ServerPsk::any_identity(key.as_bytes()))
        }
        (None, None) => None,
    };
    let psk = match &args.psk_hint {
        Some(hint) => psk.map(|keys| keys.with_identity_hint(hint.as_bytes())),
        None => psk,
    };
    let dtls = match (psk, identity) {
        (Some(psk), Some(identity)) => Some(ServerCredentials::PskAndCertificate {
            psk,
            identity,
            client_ca_pem,
        }),
        (Some(psk), None) => Some(ServerCredentials::PskIdentities(psk)),
        (None, _) => certificate.clone(),
    };
    Ok((dtls, certificate))
}

/// How an endpoint authenticates, for its "serving" line.
fn mode(credentials: &ServerCredentials) -> &'static str {
    match credentials {
        ServerCredentials::Psk(_) | ServerCredentials::PskIdentities(_) => "PSK",
        ServerCredentials::PskAndCertificate {
            client_ca_pem: Some(_),
            ..
        } => "PSK and certificate, client certificate required",
        ServerCredentials::PskAndCertificate { .. } => "PSK and certificate",
        ServerCredentials::Certificate {
            client_ca_pem: Some(_),
            ..
        } => "certificate, client certificate required",
        _ => "certificate",
    }
}

/// Prints a line per event (unless `quiet`) and keeps the tally.
fn install_handlers(ctx: &Context, out: Out, quiet: bool, tally: Arc<Mutex<Tally>>) {
    let say = move |session: &Session, text: &str, name: &str, fields: serde_json::Value| {
        if !quiet {
            out.session(session, text, name, fields);
        }
    };
    ctx.register_ping_handler(move |session, ping| {
        if quiet {
            return PingDecision::Answer;
        }
        let (what, fields) = match ping {
            PeerPing::Datagram { message_id } => (
                format!("ping received (MID {message_id:#06x}), answered"),
                json!({ "message_id": message_id, "answered": true }),
            ),
            PeerPing::Stream { custody, .. } if *custody => (
                "ping received (custody), answered".into(),
                json!({ "custody": true, "answered": true }),
            ),
            _ => (
                "ping received, answered".into(),
                json!({ "custody": false, "answered": true }),
            ),
        };
        say(session, &what, "ping_received", fields);
        PingDecision::Answer
    });
    ctx.register_pong_handler(move |session, rtt| {
        let fields = json!({ "rtt_ms": json::ms(rtt) });
        say(session, &format!("pong in {}", ms(rtt)), "pong", fields);
    });
    let failures = tally.clone();
    ctx.register_nack_handler(move |session, reason| {
        let mut tally = lock(&failures);
        let established = session.was_established();
        if established {
            tally.failed += 1;
        } else {
            tally.failed_early += 1;
        }
        drop(tally);
        let cause = session.failure_cause();
        let fields = json!({
            "reason": reason.label(),
            "established": established,
            "cause": cause,
        });
        if established {
            say(
                session,
                &format!("session failed: {reason}"),
                "failed",
                fields,
            );
        } else {
            // Counted apart in the summary: it never became a session.
            let cause = cause.map(|cause| format!(": {cause}")).unwrap_or_default();
            say(
                session,
                &format!("connection failed before it became a session: {reason}{cause}"),
                "failed",
                fields,
            );
        }
    });
    ctx.register_event_handler(move |session, event| {
        match event {
            SessionEvent::Established => {
                let mut tally = lock(&tally);
                tally.served += 1;
            }
            SessionEvent::Closed => {
                let mut tally = lock(&tally);
                if session.was_established() {
                    tally.closed += 1;
                }
            }
            _ => {}
        }
        if quiet {
            return;
        }
        let (line, name, fields) = match event {
            SessionEvent::Established => (format!("session {event}"), "established", json!({})),
            SessionEvent::Closed => (format!("session {event}"), "closed", json!({})),
            SessionEvent::PingSent { retransmission } => (
                event.to_string(),
                "ping_sent",
                json!({ "retransmission": retransmission }),
            ),
            SessionEvent::PingUnanswered { count } => (
                event.to_string(),
                "ping_unanswered",
                json!({ "count": count }),
            ),
            _ => (
                event.to_string(),
                "event",
                json!({ "what": event.to_string() }),
            ),
        };
        say(session, &line, name, fields);
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
