//! `coap-keepalive-rigs load`: a load generator for keepalive servers.
//!
//! N sessions, each from its own source port (a UDP socket or a TCP connection), ping a server
//! at a fixed rate. Their first pings are spread evenly over one interval, so the server sees a
//! steady stream. Each session is a closed loop: one ping in flight; a ping not answered within
//! the timeout counts as lost and the next one goes out on schedule (a slot that comes while a
//! ping is still in flight is skipped and counted as lost).
//!
//! Pings sent during the ramp are not counted; the measurement window is the `--duration` after
//! it. The report gives the pings due in the window, how many were answered, the p50 / p99
//! round-trip time of the answered ones and the timeouts. The sessions also answer the server's
//! own pings (empty CON -> RST over UDP, 7.02 -> 7.03 over TCP) and count them, which is how a
//! server's keepalive is measured at scale (`--rate 0`: one ping to open each session, then
//! only answers).
//!
//! It is a test tool, bounded on purpose: loopback peers only, never the CoAP ports 5683 / 5684,
//! at most [`MAX_SESSIONS`] sessions and [`MAX_DURATION`] of measurement.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use coap_keepalive::credentials::{ClientCredentials, PskCredentials};
use coap_keepalive::Context;
use coap_keepalive::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use coap_keepalive::proto::wire::signal::{ABORT, CSM, PING, PONG, RELEASE};
use coap_keepalive::proto::wire::tcp::FrameDecoder;

use crate::args::parse_secs;
use crate::proc::{cpu_secs, status_kb};

/// Most sessions one run may open (a UDP socket or TCP connection each).
pub const MAX_SESSIONS: usize = 60_000;
/// Longest measurement window.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Most pings per second per session.
const MAX_RATE: f64 = 100.0;
/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection being set up waits for the server's CSM before the next one starts.
const CSM_WAIT: Duration = Duration::from_secs(2);

/// Arguments of `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Ping the server at this UDP address.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["tcp", "dtls", "tls"],
        required_unless_present_any = ["tcp", "dtls", "tls"]
    )]
    udp: Option<SocketAddr>,
    /// Ping the server at this TCP address.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["dtls", "tls"])]
    tcp: Option<SocketAddr>,
    /// Ping the server at this TLS address as over --tcp, each connection after its handshake
    /// (needs --ca: the CA that signed the server's certificate, named localhost).
    #[arg(long, value_name = "ADDR", conflicts_with = "dtls", requires = "ca")]
    tls: Option<SocketAddr>,
    /// The CA certificate (PEM) --tls trusts, e.g. certs/ca.pem for `serve --tls` with
    /// certs/server.pem.
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// Keep DTLS-PSK sessions with the server at this address alive (needs --psk-key). The
    /// sessions are this crate's own DTLS clients: each pings after 1/rate idle seconds.
    #[arg(long, value_name = "ADDR", requires = "psk_key")]
    dtls: Option<SocketAddr>,
    /// PSK identity for --dtls.
    #[arg(long, value_name = "ID", default_value = "load")]
    psk_identity: String,
    /// PSK for --dtls, as text (libcoap's -k).
    #[arg(long, value_name = "KEY")]
    psk_key: Option<String>,
    /// Number of sessions, each with its own source port.
    #[arg(short = 'n', long, default_value_t = 1000)]
    sessions: usize,
    /// Pings per second of each session; 0 sends one ping to open each session and then only
    /// answers the server's pings.
    #[arg(short, long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds measured after the ramp.
    #[arg(short, long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Seconds of pinging before the measurement starts (not counted).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    ramp: Duration,
    /// Seconds a ping may wait for its answer before it counts as lost [default: the interval
    /// between pings, 1 s at --rate 0].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// TCP connections set up at once, each until the server's CSM arrived. Few by default:
    /// libcoap listens with a backlog of 5 and loses connections to bursts (see BENCHMARKS.md).
    #[arg(long, value_name = "N", default_value_t = 4)]
    connect_concurrency: usize,
    /// Process id of the server under test: its CPU time over the measurement window and its
    /// peak RSS are reported too (Linux /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

/// The timing every session follows.
#[derive(Debug, Clone, Copy)]
struct Plan {
    sessions: usize,
    /// Between two pings of one session; also the span the first pings are spread over.
    interval: Duration,
    /// False with `--rate 0`: one opening ping per session, then only answers.
    repeat: bool,
    timeout: Duration,
    /// First slot of session 0.
    start: Instant,
    /// Pings of slots in `[measure_from, measure_until)` are counted.
    measure_from: Instant,
    measure_until: Instant,
}

impl Plan {
    /// The first slot of session `index`.
    fn first_slot(&self, index: usize) -> Instant {
        self.start + self.interval.mul_f64(index as f64 / self.sessions as f64)
    }

    fn counts(&self, slot: Instant) -> bool {
        !self.repeat || (slot >= self.measure_from && slot < self.measure_until)
    }

    /// When a session stops: after its last slot's ping had its time to be answered.
    fn end(&self) -> Instant {
        self.measure_until + self.timeout
    }

    /// Counted slots of a session that never got going (they are all lost).
    fn counted_slots(&self, index: usize) -> u64 {
        let mut slot = self.first_slot(index);
        let mut n = 0;
        while slot < self.measure_until {
            n += u64::from(self.counts(slot));
            if !self.repeat {
                break;
            }
            slot += self.interval;
        }
        n
    }
}

/// Counters shared by every session task.
#[derive(Debug, Default)]
struct Counters {
    /// Counted slots: pings that should have gone out in the window.
    due: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    timeouts: AtomicU64,
    /// Slots that came while the previous ping was still in flight.
    skipped: AtomicU64,
    /// Counted slots never reached because the connection closed.
    abandoned: AtomicU64,
    /// Answers that came after their ping was given up.
    late: AtomicU64,
    /// Datagrams that were neither an answer nor a ping.
    unexpected: AtomicU64,
    /// Sessions whose socket / connection was opened.
    opened: AtomicU64,
    /// TCP: sessions whose peer sent its CSM. UDP: sessions with at least one answer.
    established: AtomicU64,
    /// Sessions with at least one counted ping answered.
    answering: AtomicU64,
    /// Pings from the server we answered.
    server_pings: AtomicU64,
    /// TCP connections the server closed or aborted.
    closed_by_peer: AtomicU64,
    /// Send or receive errors.
    errors: AtomicU64,
    rtt: Histogram,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A log-linear histogram of microseconds (the HDR histogram idea): exact below 128 µs, then 64
/// buckets per power of two, so any quantile is within 1.6 % of the true sample.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<AtomicU64>,
}

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 6;
/// Powers of two covered: up to 2^40 µs (12 days).
const MAX_SHIFT: u32 = 40 - SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        let len = ((MAX_SHIFT + 2) << SUB_BITS) as usize;
        Histogram {
            buckets: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(micros: u64) -> usize {
        if micros < 2 << SUB_BITS {
            return micros as usize;
        }
        let shift = (63 - micros.leading_zeros() - SUB_BITS).min(MAX_SHIFT);
        let mantissa = (micros >> shift).min((2 << SUB_BITS) - 1);
        ((u64::from(shift) << SUB_BITS) + mantissa) as usize
    }

    /// The middle of the range of bucket `index`, in microseconds.
    fn value(index: usize) -> f64 {
        let index = index as u64;
        if index < 2 << SUB_BITS {
            return index as f64;
        }
        let shift = (index >> SUB_BITS) - 1;
        let low = (index - (shift << SUB_BITS)) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    fn record(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1), `None` without samples.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_secs_f64(Self::value(index) / 1e6));
            }
        }
        None
    }
}

/// Runs the load and prints the report.
pub async fn run(args: LoadArgs) -> Result<ExitCode> {
    let (transport, target) = match (args.udp, args.tcp, args.dtls, args.tls) {
        (Some(addr), None, None, None) => ("udp", addr),
        (None, Some(addr), None, None) => ("tcp", addr),
        (None, None, Some(addr), None) => ("dtls", addr),
        (None, None, None, Some(addr)) => ("tls", addr),
        _ => {
            return Err(Error::Config(
                "give one of --udp ADDR, --tcp ADDR, --dtls ADDR or --tls ADDR".into(),
            ))
        }
    };
    let tls = match (transport, &args.ca) {
        ("tls", Some(ca)) => Some(tls_connector(ca)?),
        _ => None,
    };
    check(&args, target)?;
    let server_base_kb = args.server_pid.and_then(rss_kb);
    if transport == "dtls" {
        return run_dtls(args, target, server_base_kb).await;
    }
    let repeat = args.rate > 0.0;
    let interval = if repeat {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::from_secs(1)
    };
    let timeout = args.timeout.unwrap_or(interval);
    let counters = Arc::new(Counters::default());

    // Open every session first, so that setting up does not eat into the schedule.
    let setup_started = Instant::now();
    let sessions = match transport {
        "udp" => open_udp(target, args.sessions, &counters)
            .await?
            .into_iter()
            .map(Opened::Udp)
            .collect::<Vec<_>>(),
        _ => {
            open_tcp(
                target,
                args.sessions,
                args.connect_concurrency,
                tls,
                &counters,
            )
            .await
        }
    };
    let setup = setup_started.elapsed();

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.ramp;
    let plan = Plan {
        sessions: args.sessions,
        interval,
        repeat,
        timeout,
        start,
        measure_from,
        measure_until: measure_from + args.duration,
    };
    let watcher = args
        .server_pid
        .map(|pid| tokio::spawn(watch_window(pid, plan)));
    let own = tokio::spawn(watch_window(std::process::id(), plan));

    let mut tasks = Vec::with_capacity(sessions.len());
    for (index, session) in sessions.into_iter().enumerate() {
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            match session {
                Opened::Udp(socket) => udp_session(index, socket, plan, &counters).await,
                Opened::Tcp(stream) => tcp_session(index, stream, plan, &counters).await,
                Opened::Tls(stream) => tcp_session(index, stream, plan, &counters).await,
                Opened::Failed => {
                    let lost = plan.counted_slots(index);
                    Counters::add(&counters.due, lost);
                    Counters::add(&counters.abandoned, lost);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let server = match watcher {
        Some(w) => w.await.ok().flatten(),
        None => None,
    };
    let own = own.await.ok().flatten();
    let report = Report {
        transport,
        target,
        sessions: args.sessions,
        rate: args.rate,
        window: args.duration,
        setup,
        counters: &counters,
        server,
        server_base_kb,
        own,
    };
    report.print();
    Ok(ExitCode::SUCCESS)
}

/// The bounds every rig that opens sessions keeps: loopback only, never the CoAP ports, at
/// most [`MAX_SESSIONS`] sessions. `rig` names it in the errors ("the load generator").
pub fn check_target(rig: &str, target: SocketAddr, sessions: usize) -> Result<()> {
    if !target.ip().is_loopback() {
        return Err(Error::Config(format!(
            "{target}: {rig} only targets loopback addresses"
        )));
    }
    if matches!(target.port(), 5683 | 5684) {
        return Err(Error::Config(format!(
            "{rig} never targets the CoAP ports 5683 / 5684: use another port"
        )));
    }
    if sessions == 0 || sessions > MAX_SESSIONS {
        return Err(Error::Config(format!(
            "--sessions must be between 1 and {MAX_SESSIONS}"
        )));
    }
    Ok(())
}

fn check(args: &LoadArgs, target: SocketAddr) -> Result<()> {
    check_target("the load generator", target, args.sessions)?;
    if !(args.rate.is_finite() && (0.0..=MAX_RATE).contains(&args.rate)) {
        return Err(Error::Config(format!(
            "--rate must be between 0 and {MAX_RATE}"
        )));
    }
    if args.duration.is_zero() || args.duration > MAX_DURATION {
        return Err(Error::Config(format!(
            "--duration must be positive and at most {} s",
            MAX_DURATION.as_secs()
        )));
    }
    if args.ramp > MAX_DURATION
        || args
            .timeout
            .is_some_and(|t| t.is_zero() || t > MAX_DURATION)
    {
        return Err(Error::Config(
            "--ramp and --timeout must be at most 600 s (and --timeout positive)".into(),
        ));
    }
    Ok(())
}

/// A session's socket once set up.
enum Opened {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The connection could not be made: every slot of the session is lost.
    Failed,
}

/// Binds one connected UDP socket per session on the target's loopback address.
async fn open_udp(target: SocketAddr, n: usize, counters: &Counters) -> Result<Vec<UdpSocket>> {
    let local: SocketAddr = (target.ip(), 0).into();
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = UdpSocket::bind(local).await.map_err(|error| {
            Error::Config(format!(
                "cannot open UDP socket {} of {n} ({error}): raise `ulimit -n`",
                sockets.len() + 1
            ))
        })?;
        socket.connect(target).await?;
        sockets.push(socket);
    }
    Counters::add(&counters.opened, n as u64);
    Ok(sockets)
}

/// A TLS client configuration trusting the CA certificates in `ca` (PEM).
fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|error| Error::Config(format!("--ca {}: {error}", ca.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|error| Error::Config(format!("--ca {}: {error}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|error| Error::Config(format!("--ca {}: {error}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Config(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens `n` TCP connections (TLS ones with `tls`), a bounded number at a time.
async fn open_tcp(
    target: SocketAddr,
    n: usize,
    concurrency: usize,
    tls: Option<tokio_rustls::TlsConnector>,
    counters: &Arc<Counters>,
) -> Vec<Opened> {
    let permits = Arc::new(Semaphore::new(concurrency.clamp(1, 1024)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permits = permits.clone();
        let counters = counters.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(stream)) if tls.is_some() => {
                    let _ = stream.set_nodelay(true);
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    let (Some(tls), Ok(name)) =
                        (tls, rustls_pki_types::ServerName::try_from("localhost"))
                    else {
                        return Opened::Failed;
                    };
                    let handshake = tls.connect(name, stream);
                    let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, handshake).await
                    else {
                        Counters::add(&counters.errors, 1);
                        return Opened::Failed;
                    };
                    if stream.write_all(&[0x00, CSM]).await.is_err() {
                        Counters::add(&counters.errors, 1);
                    }
                    let _ = stream.flush().await;
                    let _ = tokio::time::timeout(CSM_WAIT, stream.get_ref().0.readable()).await;
                    Counters::add(&counters.opened, 1);
                    Opened::Tls(Box::new(stream))
                }
                Ok(Ok(mut stream)) => {
                    let _ = stream.set_nodelay(true);
                    // Close with RST at the end: no TIME_WAIT left to exhaust the ports of the
                    // next run.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    // Our CSM goes first (RFC 8323 §5.3). The permit is held until the server
                    // answers with its own: a connection the kernel completed is not yet one the
                    // server accepted, and connecting faster than it accepts overflows its
                    // listen queue (SYN retransmissions of 1 s and more would follow).
                    if stream.write_all(&[0x00, CSM]).await.is_err() {
                        Counters::add(&counters.errors, 1);
                    }
                    let _ = tokio::time::timeout(CSM_WAIT, stream.readable()).await;
                    Counters::add(&counters.opened, 1);
                    Opened::Tcp(stream)
                }
                _ => {
                    Counters::add(&counters.errors, 1);
                    Opened::Failed
                }
            }
        }));
    }
    let mut opened = Vec::with_capacity(n);
    for task in tasks {
        opened.push(task.await.unwrap_or(Opened::Failed));
    }
    opened
}

/// The ping a session has in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    message_id: u16,
    sent: Instant,
    /// Its slot is in the measurement window.
    counted: bool,
    /// When it is given up.
    lost_at: Instant,
}

/// Where a session is in its schedule; the same for both transports.
struct Schedule {
    plan: Plan,
    next_slot: Option<Instant>,
    in_flight: Option<InFlight>,
    /// At least one ping answered (counted or not).
    answered_any: bool,
    /// At least one counted ping answered.
    answered_counted: bool,
}

impl Schedule {
    fn new(plan: Plan, index: usize) -> Self {
        Schedule {
            plan,
            next_slot: Some(plan.first_slot(index)),
            in_flight: None,
            answered_any: false,
            answered_counted: false,
        }
    }

    /// The next instant something is due: a loss, a slot, or the end.
    fn wake_at(&self) -> Instant {
        let slot = self.next_slot.unwrap_or_else(|| self.plan.end());
        match self.in_flight {
            Some(f) => f.lost_at.min(slot),
            None => slot,
        }
    }

    /// Handles what is due at `now`. True when a ping must go out now: it is in flight from
    /// `now` with `message_id`.
    fn on_wake(&mut self, now: Instant, message_id: u16, counters: &Counters) -> bool {
        if let Some(f) = self.in_flight {
            if now >= f.lost_at {
                if f.counted {
                    Counters::add(&counters.timeouts, 1);
                }
                self.in_flight = None;
            }
        }
        let Some(slot) = self.next_slot else {
            return false;
        };
        if now < slot {
            return false;
        }
        let next = slot + self.plan.interval;
        self.next_slot = (self.plan.repeat && next < self.plan.measure_until).then_some(next);
        let counted = self.plan.counts(slot);
        if counted {
            Counters::add(&counters.due, 1);
        }
        if self.in_flight.is_some() {
            if counted {
                Counters::add(&counters.skipped, 1);
            }
            return false;
        }
        if counted {
            Counters::add(&counters.sent, 1);
        }
        self.in_flight = Some(InFlight {
            message_id,
            sent: now,
            counted,
            lost_at: slot + self.plan.timeout,
        });
        true
    }

    /// The answer to the ping in flight arrived at `now`.
    fn answered(&mut self, now: Instant, counters: &Counters) {
        let Some(f) = self.in_flight.take() else {
            Counters::add(&counters.late, 1);
            return;
        };
        self.answered_any = true;
        if f.counted {
            if !self.answered_counted {
                self.answered_counted = true;
                Counters::add(&counters.answering, 1);
            }
            Counters::add(&counters.answered, 1);
            counters.rtt.record(now.saturating_duration_since(f.sent));
        }
    }

    /// True once the session has nothing left to do at `now`. With `--rate 0` a session stays
    /// until the end to answer the server's pings.
    fn finished(&self, now: Instant) -> bool {
        now >= self.plan.end()
            || self.plan.repeat && self.next_slot.is_none() && self.in_flight.is_none()
    }

    /// The session ends early (its connection was closed): its ping in flight and the counted
    /// slots it will not reach are lost.
    fn abandon(mut self, counters: &Counters) {
        if self.in_flight.take().is_some_and(|f| f.counted) {
            Counters::add(&counters.timeouts, 1);
        }
        while let Some(slot) = self.next_slot {
            if self.plan.counts(slot) {
                Counters::add(&counters.due, 1);
                Counters::add(&counters.abandoned, 1);
            }
            let next = slot + self.plan.interval;
            self.next_slot = (self.plan.repeat && next < self.plan.measure_until).then_some(next);
        }
    }
}

async fn udp_session(index: usize, socket: UdpSocket, plan: Plan, counters: &Counters) {
    let mut schedule = Schedule::new(plan, index);
    let mut message_id = (index as u16).wrapping_mul(7919);
    let mut buf = [0u8; 64];
    loop {
        if schedule.on_wake(Instant::now(), message_id.wrapping_add(1), counters) {
            message_id = message_id.wrapping_add(1);
            let [hi, lo] = message_id.to_be_bytes();
            if socket.send(&[0x40, 0x00, hi, lo]).await.is_err() {
                Counters::add(&counters.errors, 1);
            }
        }
        if schedule.finished(Instant::now()) {
            break;
        }
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(4) if buf[1] == 0x00 && (buf[0] == 0x70 || buf[0] == 0x60) => {
                    // An RST (or empty ACK) to one of our pings.
                    let id = u16::from_be_bytes([buf[2], buf[3]]);
                    if schedule.in_flight.is_some_and(|f| f.message_id == id) {
                        let first = !schedule.answered_any;
                        schedule.answered(Instant::now(), counters);
                        if first {
                            Counters::add(&counters.established, 1);
                        }
                    } else {
                        Counters::add(&counters.late, 1);
                    }
                }
                Ok(4) if buf[..2] == [0x40, 0x00] => {
                    // The server's keepalive ping: answer it as any CoAP peer must.
                    Counters::add(&counters.server_pings, 1);
                    if socket.send(&[0x70, 0x00, buf[2], buf[3]]).await.is_err() {
                        Counters::add(&counters.errors, 1);
                    }
                }
                Ok(_) => Counters::add(&counters.unexpected, 1),
                // ICMP port unreachable for an earlier ping: nobody listens there.
                Err(_) => Counters::add(&counters.errors, 1),
            },
            _ = sleep_until(schedule.wake_at().into()) => {}
        }
    }
}

async fn tcp_session<S>(index: usize, mut stream: S, plan: Plan, counters: &Counters)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut schedule = Schedule::new(plan, index);
    let mut established = false;
    let mut buf = vec![0u8; 4096];
    // The crate's own RFC 8323 decoder; frames above its limit end the session (not a
    // keepalive peer).
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut answers = Vec::new();
    // Our CSM went out when the connection was opened; pings follow on schedule whether or not
    // the server's arrived (a server that never sends it loses them).
    let open = loop {
        if schedule.on_wake(Instant::now(), 0, counters)
            && send(&mut stream, &[0x00, 0xe2]).await.is_err()
        {
            Counters::add(&counters.errors, 1);
        }
        if schedule.finished(Instant::now()) {
            break true;
        }
        tokio::select! {
            read = stream.read(&mut buf) => {
                let now = Instant::now();
                match read {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => decoder.push(&buf[..n]),
                }
                let mut closed = false;
                loop {
                    let frame = match decoder.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    };
                    match frame.code {
                        CSM if !established => {
                            established = true;
                            Counters::add(&counters.established, 1);
                        }
                        PONG => schedule.answered(now, counters),
                        PING => {
                            // The server's keepalive ping: a Pong echoing its token.
                            Counters::add(&counters.server_pings, 1);
                            answers.push(frame.token.len() as u8);
                            answers.push(PONG);
                            answers.extend_from_slice(&frame.token);
                        }
                        RELEASE | ABORT => closed = true,
                        _ => {}
                    }
                }
                if !answers.is_empty() {
                    if send(&mut stream, &answers).await.is_err() {
                        Counters::add(&counters.errors, 1);
                    }
                    answers.clear();
                }
                if closed {
                    break false;
                }
            }
            _ = sleep_until(schedule.wake_at().into()) => {}
        }
    };
    if !open {
        Counters::add(&counters.closed_by_peer, 1);
        schedule.abandon(counters);
    }
}

/// Writes `bytes` and flushes them (a TLS stream may hold records until flushed).
async fn send<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Largest frame a session accepts from the server (a keepalive peer sends only small ones).
const MAX_FRAME: u32 = 4096;

/// CPU seconds and peak memory of a process over the measurement window.
#[derive(Debug, Clone, Copy)]
struct ProcWindow {
    cpu_secs: f64,
    peak_rss_kb: u64,
}

/// Reads a process's CPU time at the start and the end of the window, and its peak RSS at the
/// end. `None` when the process is gone or /proc is not there.
async fn watch_window(pid: u32, plan: Plan) -> Option<ProcWindow> {
    sleep_until(plan.measure_from.into()).await;
    let before = cpu_secs(pid)?;
    sleep_until(plan.measure_until.into()).await;
    let after = cpu_secs(pid)?;
    Some(ProcWindow {
        cpu_secs: after - before,
        peak_rss_kb: peak_rss_kb(pid)?,
    })
}

/// VmHWM of `pid`, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(&pid.to_string(), "VmHWM:")
}

/// VmRSS of `pid`, in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(&pid.to_string(), "VmRSS:")
}

/// Everything the run measured.
struct Report<'a> {
    transport: &'static str,
    target: SocketAddr,
    sessions: usize,
    rate: f64,
    window: Duration,
    setup: Duration,
    counters: &'a Counters,
    server: Option<ProcWindow>,
    /// The server's RSS before the sessions were opened.
    server_base_kb: Option<u64>,
    own: Option<ProcWindow>,
}

impl Report<'_> {
    fn print(&self) {
        let c = self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let due = get(&c.due);
        let answered = get(&c.answered);
        let pct = if due == 0 {
            0.0
        } else {
            100.0 * answered as f64 / due as f64
        };
        let p50 = c.rtt.quantile(0.50);
        let p99 = c.rtt.quantile(0.99);
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        let fmt_ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".into(),
                |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
            )
        };
        let mut line = format!(
            "{} {}: {} sessions ({} opened, {} established, {} answered), {} pings due in {:.0} s, \
             {} sent, {} answered ({:.2}%), rtt p50 {} p99 {}, {} timeouts, {} late, \
             {} server pings answered",
            self.transport,
            self.target,
            self.sessions,
            get(&c.opened),
            get(&c.established),
            get(&c.answering),
            due,
            self.window.as_secs_f64(),
            get(&c.sent),
            answered,
            pct,
            fmt_ms(p50),
            fmt_ms(p99),
            get(&c.timeouts),
            get(&c.late),
            get(&c.server_pings),
        );
        if let Some(own) = self.own {
            line += &format!("; load cpu {:.2} s", own.cpu_secs);
        }
        if let Some(server) = self.server {
            line += &format!(
                "; server cpu {:.2} s, peak rss {} kB",
                server.cpu_secs, server.peak_rss_kb
            );
        }
        println!("{line}");
        let (server_cpu, server_rss) = self
            .server
            .map_or((f64::NAN, 0), |s| (s.cpu_secs, s.peak_rss_kb));
        println!(
            "RESULT transport={} sessions={} rate={} window_s={:.1} setup_s={:.2} opened={} \
             established={} answering={} due={} sent={} answered={} answered_pct={:.2} \
             p50_ms={:.3} p99_ms={:.3} timeouts={} skipped={} abandoned={} late={} \
             unexpected={} errors={} closed_by_peer={} server_pings={} load_cpu_s={:.2} \
             server_cpu_s={:.2} server_rss_kb={} server_base_kb={}",
            self.transport,
            self.sessions,
            self.rate,
            self.window.as_secs_f64(),
            self.setup.as_secs_f64(),
            get(&c.opened),
            get(&c.established),
            get(&c.answering),
            due,
            get(&c.sent),
            answered,
            pct,
            ms(p50),
            ms(p99),
            get(&c.timeouts),
            get(&c.skipped),
            get(&c.abandoned),
            get(&c.late),
            get(&c.unexpected),
            get(&c.errors),
            get(&c.closed_by_peer),
            get(&c.server_pings),
            self.own.map_or(f64::NAN, |o| o.cpu_secs),
            server_cpu,
            server_rss,
            self.server_base_kb.unwrap_or(0),
        );
    }
}

/// `--dtls`: N DTLS-PSK sessions of this crate's client, handshaken a few at a time and then
/// kept alive by their own keepalive (a ping after 1/rate idle seconds). Reports the handshake
/// rate, the pings answered in the window, their RTT, and the server's memory per session.
async fn run_dtls(
    args: LoadArgs,
    target: SocketAddr,
    server_base_kb: Option<u64>,
) -> Result<ExitCode> {
    if args.rate <= 0.0 {
        return Err(Error::Config("--dtls needs a --rate above 0".into()));
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let credentials = ClientCredentials::Psk(PskCredentials::new(
        args.psk_identity.as_bytes(),
        args.psk_key.clone().unwrap_or_default().into_bytes(),
    ));
    let ctx = Context::new();
    ctx.set_keepalive_interval(Some(interval));
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (counters, measuring) = (counters.clone(), measuring.clone());
        ctx.register_pong_handler(move |_, rtt| {
            if measuring.load(Ordering::Relaxed) {
                counters.rtt.record(rtt);
            }
        });
    }
    {
        let counters = counters.clone();
        ctx.register_nack_handler(move |_, _| Counters::add(&counters.closed_by_peer, 1));
    }

    let setup_started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.clamp(1, 1024)));
    let mut tasks = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let (ctx, credentials, permits) = (ctx.clone(), credentials.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            ctx.connect_dtls(target, &credentials).await
        }));
    }
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(session)) => sessions.push(session),
            Ok(Err(error)) => {
                Counters::add(&counters.errors, 1);
                first_error.get_or_insert_with(|| error.to_string());
            }
            Err(_) => Counters::add(&counters.errors, 1),
        }
    }
    let setup = setup_started.elapsed();
    Counters::add(&counters.opened, sessions.len() as u64);
    Counters::add(&counters.established, sessions.len() as u64);
    if let Some(error) = first_error {
        eprintln!(
            "load: {} handshakes failed, the first: {error}",
            counters.errors.load(Ordering::Relaxed)
        );
    }

    let start = Instant::now();
    let plan = Plan {
        sessions: args.sessions,
        interval,
        repeat: true,
        timeout: interval,
        start,
        measure_from: start + args.ramp,
        measure_until: start + args.ramp + args.duration,
    };
    let watcher = args
        .server_pid
        .map(|pid| tokio::spawn(watch_window(pid, plan)));
    let own = tokio::spawn(watch_window(std::process::id(), plan));
    sleep_until(plan.measure_from.into()).await;
    let before = ctx.stats();
    measuring.store(true, Ordering::Relaxed);
    sleep_until(plan.measure_until.into()).await;
    let sent = ctx.stats().pings_sent - before.pings_sent;
    // Pings sent in the window may be answered just after it.
    tokio::time::sleep(Duration::from_secs(1).min(interval)).await;
    measuring.store(false, Ordering::Relaxed);
    let after = ctx.stats();
    let answered = (after.pongs - before.pongs).min(sent);
    Counters::add(&counters.due, sent);
    Counters::add(&counters.sent, sent);
    Counters::add(&counters.answered, answered);
    Counters::add(&counters.timeouts, sent - answered);
    let alive = ctx.sessions().len() as u64;
    Counters::add(&counters.answering, alive);
    let server = match watcher {
        Some(w) => w.await.ok().flatten(),
        None => None,
    };
    let own = own.await.ok().flatten();
    ctx.shutdown().await;
    println!(
        "dtls handshakes: {} of {} in {:.2} s ({:.0} per second, {} at a time)",
        sessions.len(),
        args.sessions,
        setup.as_secs_f64(),
        sessions.len() as f64 / setup.as_secs_f64().max(1e-9),
        args.connect_concurrency,
    );
    Report {
        transport: "dtls",
        target,
        sessions: args.sessions,
        rate: args.rate,
        window: args.duration,
        setup,
        counters: &counters,
        server,
        server_base_kb,
        own,
    }
    .print();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let h = Histogram::default();
        for micros in 1..=10_000u64 {
            h.record(Duration::from_micros(micros));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1e6;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1e6;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.02, "p50 {p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.02, "p99 {p99}");
        for micros in [0, 1, 127, 128, 129, 1 << 20, u64::MAX / 2] {
            let i = Histogram::index(micros);
            assert!(i < h.buckets.len());
        }
        assert_eq!(Histogram::quantile(&Histogram::default(), 0.5), None);
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_ordered() {
        let mut last = 0;
        for micros in 0..100_000u64 {
            let i = Histogram::index(micros);
            assert!(i == last || i == last + 1, "gap at {micros}");
            last = i;
            let mid = Histogram::value(i);
            assert!((mid - micros as f64).abs() <= micros as f64 / 64.0 + 0.5);
        }
    }

    #[test]
    fn slots_spread_over_one_interval_and_only_the_window_counts() {
        let start = Instant::now();
        let plan = Plan {
            sessions: 4,
            interval: Duration::from_secs(1),
            repeat: true,
            timeout: Duration::from_secs(1),
            start,
            measure_from: start + Duration::from_secs(2),
            measure_until: start + Duration::from_secs(5),
        };
        assert_eq!(plan.first_slot(2), start + Duration::from_millis(500));
        for i in 0..4 {
            assert_eq!(plan.counted_slots(i), 3);
        }
        let counters = Counters::default();
        let mut s = Schedule::new(plan, 1);
        let mut now = start;
        let mut sends = 0;
        while !s.finished(now) {
            now = s.wake_at();
            if s.on_wake(now, 1, &counters) {
                sends += 1;
                s.answered(now + Duration::from_millis(1), &counters);
            }
        }
        assert_eq!(sends, 5);
        assert_eq!(counters.due.load(Ordering::Relaxed), 3);
        assert_eq!(counters.answered.load(Ordering::Relaxed), 3);
        assert_eq!(counters.timeouts.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn silent_server_loses_every_counted_ping() {
        let start = Instant::now();
        let plan = Plan {
            sessions: 1,
            interval: Duration::from_secs(1),
            repeat: true,
            timeout: Duration::from_secs(1),
            start,
            measure_from: start + Duration::from_secs(1),
            measure_until: start + Duration::from_secs(4),
        };
        let counters = Counters::default();
        let mut s = Schedule::new(plan, 0);
        let mut now = start;
        while !s.finished(now) {
            now = s.wake_at();
            s.on_wake(now, 1, &counters);
        }
        assert_eq!(counters.due.load(Ordering::Relaxed), 3);
        assert_eq!(counters.sent.load(Ordering::Relaxed), 3);
        assert_eq!(counters.timeouts.load(Ordering::Relaxed), 3);
        assert_eq!(counters.skipped.load(Ordering::Relaxed), 0);
    }
}
