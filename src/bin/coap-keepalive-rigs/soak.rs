//! `coap-keepalive-rigs soak`: a bounded long run that shows resources stay flat under churn.
//!
//! The soak runs, in this one process, a server context on loopback over UDP, DTLS (PSK), TCP
//! and TLS (a certificate made in memory) and a client context whose `--sessions` slots each
//! connect a session over one of the transports, ping every 200 ms, sometimes send a request,
//! and end it — by closing it after a random lifetime, by failing it (the server suppresses its
//! ping answers for every fifth session, so the client's keepalive gives up), by the server
//! closing it (a few sessions every second), or, for some UDP and TCP slots, by a raw peer that
//! simply vanishes — and then reconnect. Thousands of sessions come and go.
//!
//! Every sample interval it records the process's resident set (VmRSS) and its open file
//! descriptors. The verdict:
//! - **flat**: the first sample taken after the warm-up (the first 20% of the run) is the
//!   baseline; every later sample of the run must be within ±10% of it, for RSS and for the fd
//!   count alike;
//! - **nothing left behind**: once the run ends and every peer is gone, both contexts' session
//!   tables must be empty within [`DRAIN_LIMIT`] (the longest bound that applies: a vanished
//!   UDP peer is found dead by the server's keepalive in 2.4 s);
//! - **connects work**: at most 1% of connection attempts may fail.
//!
//! It prints a table of the samples and the verdict, and exits non-zero when any rule fails.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use coap_keepalive::credentials::{
    CertificateSet, ClientCredentials, PskCredentials, ServerCredentials,
};
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::wire::signal::{Signal, PING};
use coap_keepalive::proto::wire::tcp::FrameDecoder;
use coap_keepalive::Context;
use coap_keepalive::PingDecision;
use coap_keepalive::{Error, NackReason, Result};
use coap_keepalive::{Session, SessionState, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::args::parse_secs;
use crate::proc::{open_fds, status_kb};

/// Length of a full run.
const FULL_DURATION: Duration = Duration::from_secs(600);
/// Length of a `--quick` run (CI).
const QUICK_DURATION: Duration = Duration::from_secs(60);
/// Share of the run before the baseline sample.
const WARM_UP: f64 = 0.2;
/// How far a sample may stray from the baseline.
const TOLERANCE: f64 = 0.10;
/// How long the session tables may take to empty once every peer is gone.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Share of connection attempts allowed to fail.
const CONNECT_FAILURES_ALLOWED: f64 = 0.01;
/// Every this-many server sessions (by id) get no answer to their pings.
const SUPPRESS_EVERY: u64 = 5;
/// Shortest and longest lifetime of a session the client closes itself.
const LIFETIME_MS: (u64, u64) = (300, 3_000);
/// One slot in this many on UDP and TCP is a raw peer that vanishes without a word.
const RAW_EVERY: u64 = 8;
/// How often a raw peer pings.
const RAW_PING_EVERY: Duration = Duration::from_millis(200);
/// How long a connect (with its handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The transports, in slot order.
const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Dtls,
    Transport::Tcp,
    Transport::Tls,
];

/// Arguments of `soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Seconds of churn [default: 600, or 60 with --quick].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Client sessions live at once, spread evenly over UDP, DTLS, TCP and TLS.
    #[arg(long, value_name = "N", default_value_t = 200)]
    sessions: usize,
    /// The CI mode: a one-minute run.
    #[arg(long)]
    quick: bool,
    /// Seconds between samples [default: a thirtieth of the run, 2 to 10 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    sample_every: Option<Duration>,
}

/// Runs the soak.
pub async fn run(args: SoakArgs) -> Result<ExitCode> {
    if args.sessions == 0 {
        return Err(Error::Config("--sessions must be at least 1".into()));
    }
    let duration = args.duration.unwrap_or(if args.quick {
        QUICK_DURATION
    } else {
        FULL_DURATION
    });
    let sample_every = args
        .sample_every
        .unwrap_or_else(|| (duration / 30).clamp(Duration::from_secs(2), Duration::from_secs(10)));
    soak(duration, args.sessions, sample_every).await
}

// ---- the soak ----

/// What the run counts.
#[derive(Default)]
struct Counters {
    opened: [AtomicU64; 4],
    raw_peers: AtomicU64,
    connect_attempts: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_client: AtomicU64,
    closed_by_server: AtomicU64,
    failed_silent_server: AtomicU64,
    failed_other: AtomicU64,
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    server_closes: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The server, the client context and how to reach each endpoint.
struct Env {
    server: Context,
    client: Context,
    addrs: [SocketAddr; 4],
    psk: ClientCredentials,
    verify: ClientCredentials,
    counters: Counters,
}

impl Env {
    async fn start() -> Result<Env> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        // The server pings idle clients every second and gives a silent UDP peer up after
        // 0.2 + 0.4 + 0.8 s of retransmissions (a TCP peer after a 0.5 s late Pong).
        let server = context(1_000, 200, 500)?;
        server.register_ping_handler(|session, _| {
            if session.id().0 % SUPPRESS_EVERY == 0 {
                PingDecision::Suppress
            } else {
                PingDecision::Answer
            }
        });
        crate::server::install_resources(&server);

        let psk = PskCredentials::new("soak", "soak-secret");
        let certificates = CertificateSet::generate()?;
        let udp = server.listen_udp(loopback).await?;
        let dtls = server
            .listen_dtls(loopback, ServerCredentials::Psk(psk.clone()))
            .await?;
        let tcp = server.listen_tcp(loopback).await?;
        let tls = server
            .listen_tls(
                loopback,
                ServerCredentials::Certificate {
                    identity: certificates.server_identity(),
                    client_ca_pem: None,
                },
            )
            .await?;

        // Clients ping every 200 idle ms and give up after 0.1 + 0.2 + 0.4 s (UDP, DTLS) or a
        // Pong 200 ms late (TCP, TLS).
        let client = context(200, 100, 200)?;
        Ok(Env {
            server,
            client,
            addrs: [
                udp.local_addr,
                dtls.local_addr,
                tcp.local_addr,
                tls.local_addr,
            ],
            psk: ClientCredentials::Psk(psk),
            verify: ClientCredentials::Certificate {
                ca_pem: Some(certificates.ca_cert_pem),
                identity: None,
                insecure: false,
            },
            counters: Counters::default(),
        })
    }

    async fn connect(&self, slot: usize) -> Result<Session> {
        let addr = self.addrs[slot];
        match TRANSPORTS[slot] {
            Transport::Udp => self.client.connect_udp(addr).await,
            Transport::Dtls => self.client.connect_dtls(addr, &self.psk).await,
            Transport::Tcp => self.client.connect_tcp(addr).await,
            _ => {
                self.client
                    .connect_tls(addr, "localhost", &self.verify)
                    .await
            }
        }
    }
}

/// A context that pings after `interval_ms`, retransmits per RFC 7252 from `ack_timeout_ms` (no
/// randomness, two retransmissions) and wants a Pong within `pong_timeout_ms`.
fn context(interval_ms: u64, ack_timeout_ms: u64, pong_timeout_ms: u64) -> Result<Context> {
    let ms = Duration::from_millis;
    Context::builder()
        .keepalive(ms(interval_ms))
        .ack_timeout(ms(ack_timeout_ms))
        .ack_random_factor(1.0)
        .max_retransmit(2)
        .pong_timeout(ms(pong_timeout_ms))
        .connect_timeout(CONNECT_TIMEOUT)
        .input_timeout(Duration::from_secs(2))
        .build()
}

/// One sample of the process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    opened: u64,
    client_sessions: usize,
    server_sessions: usize,
    rss_kb: u64,
    fds: usize,
}

fn sample(env: &Env, start: Instant) -> Sample {
    Sample {
        at: start.elapsed(),
        opened: env.counters.opened.iter().map(get).sum::<u64>() + get(&env.counters.raw_peers),
        client_sessions: env.client.sessions().len(),
        server_sessions: env.server.sessions().len(),
        rss_kb: status_kb("self", "VmRSS:").unwrap_or(0),
        fds: open_fds(),
    }
}

async fn soak(duration: Duration, sessions: usize, sample_every: Duration) -> Result<ExitCode> {
    let env = Arc::new(Env::start().await?);
    println!(
        "soak: {sessions} sessions live at once over udp {} dtls {} tcp {} tls {} for {:.0} s; \
         sample every {:.0} s, baseline after {:.0} s",
        env.addrs[0],
        env.addrs[1],
        env.addrs[2],
        env.addrs[3],
        duration.as_secs_f64(),
        sample_every.as_secs_f64(),
        duration.as_secs_f64() * WARM_UP,
    );
    println!(
        "{:>8} {:>9} {:>7} {:>7} {:>9} {:>6}",
        "time", "sessions", "client", "server", "rss kB", "fds"
    );
    let start = Instant::now();
    let end = start + duration;
    let seed = Rng::from_entropy().next_u64();
    let slots: Vec<_> = (0..sessions)
        .map(|index| tokio::spawn(slot(Arc::clone(&env), index, end, seed)))
        .collect();
    let closer = tokio::spawn(server_closer(Arc::clone(&env), end, seed));

    let mut samples = Vec::new();
    let mut next = start + sample_every;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let s = sample(&env, start);
        print_sample(&s);
        samples.push(s);
        next += sample_every;
    }
    tokio::time::sleep_until(end.into()).await;
    for slot in slots {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT * 2, slot).await;
    }
    let _ = closer.await;

    // Every peer is gone: the tables must empty within the bound.
    let drain_start = Instant::now();
    while !(env.client.sessions().is_empty() && env.server.sessions().is_empty())
        && drain_start.elapsed() < DRAIN_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain_start.elapsed();
    let after = sample(&env, start);
    println!(
        "after the last peer left ({:.1} s later):",
        drained_in.as_secs_f64()
    );
    print_sample(&after);

    let verdict = judge(&env, duration, &samples, &after, drained_in);
    report(&env.counters, duration);
    env.client.shutdown().await;
    env.server.shutdown().await;
    for line in &verdict.lines {
        println!("{line}");
    }
    if verdict.pass {
        println!("soak: PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("soak: FAIL");
        Ok(ExitCode::FAILURE)
    }
}

fn print_sample(s: &Sample) {
    println!(
        "{:>7.1}s {:>9} {:>7} {:>7} {:>9} {:>6}",
        s.at.as_secs_f64(),
        s.opened,
        s.client_sessions,
        s.server_sessions,
        s.rss_kb,
        s.fds
    );
}

/// The rules' outcome, one line per rule.
struct Verdict {
    pass: bool,
    lines: Vec<String>,
}

fn judge(
    env: &Env,
    duration: Duration,
    samples: &[Sample],
    after: &Sample,
    drained_in: Duration,
) -> Verdict {
    let mut verdict = Verdict {
        pass: true,
        lines: Vec::new(),
    };
    let mut rule = |ok: bool, line: String| {
        verdict.pass &= ok;
        verdict
            .lines
            .push(format!("{} {line}", if ok { "ok  " } else { "FAIL" }));
    };
    let warm_up = duration.mul_f64(WARM_UP);
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    match measured.split_first() {
        Some((baseline, rest)) if !rest.is_empty() => {
            let within = |value: f64, base: f64| (value - base).abs() <= base * TOLERANCE;
            let flat = |name: &str, value: fn(&Sample) -> f64| {
                let base = value(baseline);
                let (low, high) = measured
                    .iter()
                    .map(|s| value(s))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(v), hi.max(v))
                    });
                let ok = measured.iter().all(|s| within(value(s), base));
                (
                    ok,
                    format!(
                        "{name} flat: baseline {base:.0} at {:.0} s, samples {low:.0}..{high:.0} \
                         ({:+.1}%..{:+.1}%), allowed ±{:.0}%",
                        baseline.at.as_secs_f64(),
                        (low / base - 1.0) * 100.0,
                        (high / base - 1.0) * 100.0,
                        TOLERANCE * 100.0
                    ),
                )
            };
            let (ok, line) = flat("rss kB", |s| s.rss_kb as f64);
            rule(ok, line);
            let (ok, line) = flat("open fds", |s| s.fds as f64);
            rule(ok, line);
        }
        _ => rule(
            false,
            "too few samples after the warm-up to judge flatness (lengthen the run)".into(),
        ),
    }
    rule(
        after.client_sessions == 0 && after.server_sessions == 0,
        format!(
            "session tables empty after the peers left: client {}, server {} after {:.1} s \
             (bound {:.0} s)",
            after.client_sessions,
            after.server_sessions,
            drained_in.as_secs_f64(),
            DRAIN_LIMIT.as_secs_f64()
        ),
    );
    let attempts = get(&env.counters.connect_attempts);
    let failures = get(&env.counters.connect_failures);
    rule(
        failures as f64 <= attempts as f64 * CONNECT_FAILURES_ALLOWED,
        format!(
            "connects: {failures} of {attempts} failed (allowed {:.0}%)",
            CONNECT_FAILURES_ALLOWED * 100.0
        ),
    );
    verdict
}

fn report(c: &Counters, duration: Duration) {
    let opened: u64 = c.opened.iter().map(get).sum();
    println!(
        "sessions: {} library sessions (udp {}, dtls {}, tcp {}, tls {}) and {} raw peers in \
         {:.0} s",
        opened,
        get(&c.opened[0]),
        get(&c.opened[1]),
        get(&c.opened[2]),
        get(&c.opened[3]),
        get(&c.raw_peers),
        duration.as_secs_f64()
    );
    println!(
        "ended: {} closed by the client, {} failed on a silent server (too many retries), {} \
         closed by the server ({} server-side closes), {} failed otherwise; requests {} ok, {} \
         failed",
        get(&c.closed_by_client),
        get(&c.failed_silent_server),
        get(&c.closed_by_server),
        get(&c.server_closes),
        get(&c.failed_other),
        get(&c.requests_ok),
        get(&c.requests_failed)
    );
}

/// One slot: sessions over one transport, one after another, until `end`.
async fn slot(env: Arc<Env>, index: usize, end: Instant, seed: u64) {
    let transport = index % TRANSPORTS.len();
    let mut rng = Rng::seeded(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Start spread over the first second, not all at once.
    tokio::time::sleep(Duration::from_millis(rng.next_u64() % 1_000)).await;
    while Instant::now() < end {
        let lifetime =
            Duration::from_millis(LIFETIME_MS.0 + rng.next_u64() % (LIFETIME_MS.1 - LIFETIME_MS.0));
        let until = (Instant::now() + lifetime).min(end);
        let raw = matches!(TRANSPORTS[transport], Transport::Udp | Transport::Tcp)
            && rng.next_u64().is_multiple_of(RAW_EVERY);
        if raw {
            add(&env.counters.raw_peers);
            let _ = match TRANSPORTS[transport] {
                Transport::Udp => raw_udp_peer(env.addrs[transport], until).await,
                _ => raw_tcp_peer(env.addrs[transport], until).await,
            };
            continue;
        }
        add(&env.counters.connect_attempts);
        let session = match env.connect(transport).await {
            Ok(session) => session,
            Err(error) => {
                add(&env.counters.connect_failures);
                tracing::warn!(%error, "soak: connect failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        add(&env.counters.opened[transport]);
        let session_ends = async {
            if rng.next_u64().is_multiple_of(3) {
                match session.get("/").await {
                    Ok(_) => add(&env.counters.requests_ok),
                    Err(_) => add(&env.counters.requests_failed),
                }
            }
            session.closed().await
        };
        tokio::select! {
            state = session_ends => match state {
                SessionState::Failed(NackReason::TooManyRetries) => {
                    add(&env.counters.failed_silent_server)
                }
                SessionState::Closed => add(&env.counters.closed_by_server),
                _ => add(&env.counters.failed_other),
            },
            _ = tokio::time::sleep_until(until.into()) => {
                session.close();
                let _ = tokio::time::timeout(Duration::from_secs(2), session.closed()).await;
                add(&env.counters.closed_by_client);
            }
        }
    }
}

/// Closes a few server sessions every second: the server ending sessions on its own.
async fn server_closer(env: Arc<Env>, end: Instant, seed: u64) {
    let mut rng = Rng::seeded(seed.rotate_left(17));
    while Instant::now() + Duration::from_secs(1) < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sessions = env.server.sessions();
        for _ in 0..(sessions.len() / 50).max(1) {
            if sessions.is_empty() {
                break;
            }
            let session = &sessions[(rng.next_u64() % sessions.len() as u64) as usize];
            if session.state() == SessionState::Established {
                session.close();
                add(&env.counters.server_closes);
            }
        }
    }
}

/// A UDP peer outside the library: pings, answers the server's pings, then vanishes.
async fn raw_udp_peer(server: SocketAddr, until: Instant) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    socket.connect(server).await?;
    let mut message_id: u16 = 0;
    let mut buf = [0u8; 1500];
    let mut tick = tokio::time::interval(RAW_PING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                message_id = message_id.wrapping_add(1);
                let [high, low] = message_id.to_be_bytes();
                socket.send(&[0x40, 0x00, high, low]).await?;
            }
            received = socket.recv(&mut buf) => {
                let n = received?;
                // The server's ping: answer it with an RST.
                if n == 4 && buf[0] == 0x40 && buf[1] == 0x00 {
                    socket.send(&[0x70, 0x00, buf[2], buf[3]]).await?;
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return Ok(()),
        }
    }
}

/// A TCP peer outside the library: CSM, pings, answers the server's pings, then drops the
/// connection without a Release.
async fn raw_tcp_peer(server: SocketAddr, until: Instant) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(server).await?;
    stream.write_all(&[0x00, 0xe1]).await?;
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    let mut tick = tokio::time::interval(RAW_PING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => stream.write_all(&[0x00, 0xe2]).await?,
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    if frame.code == PING {
                        let pong = Signal::Pong { custody: false }.encode(&frame.token);
                        stream.write_all(&pong).await?;
                    }
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return Ok(()),
        }
    }
}
