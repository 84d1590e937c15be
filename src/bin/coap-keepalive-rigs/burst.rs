//! `coap-keepalive-rigs burst`: N sessions start at once, as a fleet does when it comes back
//! after an outage, and each is timed from its first message to its first answer.
//!
//! Over TCP every connection is opened at the same instant (the sockets are made beforehand, so
//! the burst is only the SYNs); each sends its CSM and a 7.02 Ping as soon as it is connected,
//! and its first answer is the server's CSM and first Pong, both. Over UDP the sessions' first
//! pings (`40 00 MM MM`, each from its own source port) are spread evenly over `--spread`
//! (a burst over zero seconds would only measure the server's socket buffer), and the first
//! answer is the first RST to any of the session's pings. Then every session pings once a
//! second, open loop (a ping not yet answered does not hold the next one back), and the pongs
//! received within `--window` of the burst's start are counted. At the end of the window
//! everything is closed, whatever is still connecting: the run takes the window and no more.
//!
//! What `load` does not show: `load` opens TCP connections a few at a time, each once the
//! previous one was accepted, and spreads the pings, so a server's listen backlog and its cost of
//! creating sessions never meet a burst there.
//!
//! Bounded as `load` is: loopback peers only, never the CoAP ports 5683 / 5684, at most
//! [`MAX_SESSIONS`](crate::load::MAX_SESSIONS) sessions and [`MAX_WINDOW`] of measurement.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use coap_keepalive::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::{sleep_until, timeout_at};

use coap_keepalive::proto::wire::signal::{ABORT, CSM, PING, PONG, RELEASE};
use coap_keepalive::proto::wire::tcp::FrameDecoder;

use crate::args::parse_secs;
use crate::load::check_target;
use crate::proc::{cpu_secs, net_counter, status_kb};

/// Longest window: at one ping a second, a session's pings fit the 128 bits of
/// [`UdpPings::answered`].
pub const MAX_WINDOW: Duration = Duration::from_secs(120);
/// Between two pings of one session.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// From the moment the sockets are made to the burst: every task is spawned and waiting by
/// then, so the first connect does not run ahead of the last one's spawn.
const LEAD_TIME: Duration = Duration::from_millis(200);
/// Largest frame a session accepts from the server (a keepalive peer sends only small ones).
const MAX_FRAME: u32 = 4096;

/// Arguments of `burst`.
#[derive(Debug, Args)]
pub struct BurstArgs {
    /// Burst UDP sessions at the server at this address.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "tcp",
        required_unless_present = "tcp"
    )]
    udp: Option<SocketAddr>,
    /// Burst TCP connections at the server at this address.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Number of sessions, each with its own source port.
    #[arg(short = 'n', long, default_value_t = 9000)]
    sessions: usize,
    /// Seconds over which the sessions' first messages are spread evenly; 0 starts them all at
    /// the same instant.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    spread: Duration,
    /// Seconds from the start of the burst in which pongs are counted; then every session is
    /// closed.
    #[arg(short, long, value_name = "SECS", default_value = "8", value_parser = parse_secs)]
    window: Duration,
    /// A session whose first answer came within this many seconds of its first message counts
    /// as answered promptly.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    prompt: Duration,
    /// Process id of the server under test: its CPU time over the window and its peak RSS are
    /// reported too (Linux /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

/// What became of one session by the end of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// From its first message (the SYN, or the first datagram) to its first answer.
    first_answer: Option<Duration>,
    /// TCP: from the SYN to the connection made (the server's SYN-ACK came), which shows
    /// SYNs its kernel dropped apart from the server's own slowness.
    connected: Option<Duration>,
    /// TCP: the server's CSM came.
    csm: bool,
    /// Pongs received within the window.
    pongs: u64,
    /// Pings sent.
    pings: u64,
    /// TCP: the connect failed, or the server closed or aborted the connection.
    failed: bool,
}

/// Runs the burst and prints the report.
pub async fn run(args: BurstArgs) -> Result<ExitCode> {
    let (transport, target) = match (args.udp, args.tcp) {
        (Some(addr), None) => ("udp", addr),
        (None, Some(addr)) => ("tcp", addr),
        _ => return Err(Error::Config("give one of --udp ADDR or --tcp ADDR".into())),
    };
    check(&args, target)?;
    let server_base_kb = args
        .server_pid
        .and_then(|pid| status_kb(&pid.to_string(), "VmRSS:"));

    // Every socket exists before the burst, so the burst is the first messages and nothing else.
    let sockets = match transport {
        "udp" => open_udp(target, args.sessions).await?,
        _ => make_tcp(target, args.sessions)?,
    };
    let start = Instant::now() + LEAD_TIME;
    let end = start + args.window;
    let mut tasks = Vec::with_capacity(args.sessions);
    for (index, socket) in sockets.into_iter().enumerate() {
        let first_at = start + args.spread.mul_f64(index as f64 / args.sessions as f64);
        tasks.push(tokio::spawn(async move {
            match socket {
                Unopened::Udp(socket) => udp_session(index, socket, first_at, end).await,
                Unopened::Tcp(socket) => tcp_session(socket, target, first_at, end).await,
            }
        }));
    }
    sleep_until(start.into()).await;
    let drops_before = kernel_drops(transport);
    let server_cpu_before = args.server_pid.and_then(cpu_secs);
    let own_cpu_before = cpu_secs(std::process::id());

    let mut outcomes = Vec::with_capacity(args.sessions);
    for task in tasks {
        // A task that panicked is a session that never answered.
        outcomes.push(task.await.unwrap_or_default());
    }
    let server_cpu = args
        .server_pid
        .and_then(cpu_secs)
        .zip(server_cpu_before)
        .map(|(after, before)| after - before);
    let server_peak_kb = args
        .server_pid
        .and_then(|pid| status_kb(&pid.to_string(), "VmHWM:"));
    let own_cpu = cpu_secs(std::process::id())
        .zip(own_cpu_before)
        .map(|(after, before)| after - before);
    let kernel_drops = kernel_drops(transport)
        .zip(drops_before)
        .map(|(after, before)| after.saturating_sub(before));

    Summary::of(&outcomes, args.prompt).print(&Report {
        transport,
        target,
        args: &args,
        server_cpu,
        server_peak_kb,
        server_base_kb,
        own_cpu,
        kernel_drops,
    });
    Ok(ExitCode::SUCCESS)
}

fn check(args: &BurstArgs, target: SocketAddr) -> Result<()> {
    check_target("the burst", target, args.sessions)?;
    if args.window.is_zero() || args.window > MAX_WINDOW || args.spread >= args.window {
        return Err(Error::Config(format!(
            "--window must be positive, at most {} s and longer than --spread",
            MAX_WINDOW.as_secs()
        )));
    }
    if args.prompt.is_zero() || args.prompt > args.window {
        return Err(Error::Config(
            "--prompt must be positive and at most --window".into(),
        ));
    }
    Ok(())
}

/// A session's socket before its first message.
enum Unopened {
    /// Bound and connected to the server (connecting a UDP socket sends nothing).
    Udp(UdpSocket),
    /// Made, not yet connected.
    Tcp(TcpSocket),
}

/// Binds one connected UDP socket per session on the target's loopback address.
async fn open_udp(target: SocketAddr, n: usize) -> Result<Vec<Unopened>> {
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
        sockets.push(Unopened::Udp(socket));
    }
    Ok(sockets)
}

/// Makes one TCP socket per session, not yet connected.
fn make_tcp(target: SocketAddr, n: usize) -> Result<Vec<Unopened>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|error| {
            Error::Config(format!(
                "cannot make TCP socket {} of {n} ({error}): raise `ulimit -n`",
                sockets.len() + 1
            ))
        })?;
        // Closed with RST at the end: no TIME_WAIT left to exhaust the ports of the next run.
        socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        socket.set_nodelay(true)?;
        sockets.push(Unopened::Tcp(socket));
    }
    Ok(sockets)
}

/// The pings one UDP session sent, by Message ID, and which of them were answered.
struct UdpPings {
    /// Message ID of the first ping; ping `k` has `first_id + k`.
    first_id: u16,
    sent: u16,
    /// Bit `k`: ping `k` was answered (a second answer to it is not a second pong).
    answered: u128,
}

impl UdpPings {
    /// Takes the answer with Message ID `id`: true when it answers a ping of ours for the first
    /// time.
    fn take_answer(&mut self, id: u16) -> bool {
        let k = id.wrapping_sub(self.first_id);
        if k >= self.sent || k >= 128 {
            return false;
        }
        let bit = 1u128 << k;
        let new = self.answered & bit == 0;
        self.answered |= bit;
        new
    }

    /// Takes a datagram from the server: true when it is an RST (or an empty ACK) answering a
    /// ping of ours for the first time.
    fn take_pong(&mut self, datagram: &[u8]) -> bool {
        match *datagram {
            [0x70 | 0x60, 0x00, high, low] => self.take_answer(u16::from_be_bytes([high, low])),
            _ => false,
        }
    }

    /// The Message ID of the next ping, counted as sent.
    fn next_id(&mut self) -> u16 {
        let id = self.first_id.wrapping_add(self.sent);
        self.sent += 1;
        id
    }
}

async fn udp_session(index: usize, socket: UdpSocket, first_at: Instant, end: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    let mut pings = UdpPings {
        first_id: (index as u16).wrapping_mul(7919),
        sent: 0,
        answered: 0,
    };
    let mut buf = [0u8; 64];
    sleep_until(first_at.into()).await;
    let first = Instant::now();
    let mut next_ping = first;
    loop {
        let now = Instant::now();
        if now >= end {
            return outcome;
        }
        if now >= next_ping {
            let [hi, lo] = pings.next_id().to_be_bytes();
            outcome.pings += 1;
            // A send that fails (the server's port unreachable) is a ping that is not answered.
            let _ = socket.send(&[0x40, 0x00, hi, lo]).await;
            next_ping += PING_INTERVAL;
            continue;
        }
        tokio::select! {
            received = socket.recv(&mut buf) => {
                let now = Instant::now();
                match received {
                    Ok(len) if pings.take_pong(&buf[..len]) && now < end => {
                        outcome.pongs += 1;
                        outcome.first_answer.get_or_insert(now - first);
                    }
                    // The server's keepalive ping: answered as any CoAP peer must.
                    Ok(4) if buf[..2] == [0x40, 0x00] => {
                        let _ = socket.send(&[0x70, 0x00, buf[2], buf[3]]).await;
                    }
                    _ => {}
                }
            }
            _ = sleep_until(next_ping.min(end).into()) => {}
        }
    }
}

async fn tcp_session(
    socket: TcpSocket,
    target: SocketAddr,
    first_at: Instant,
    end: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    sleep_until(first_at.into()).await;
    let first = Instant::now();
    let mut stream = match timeout_at(end.into(), socket.connect(target)).await {
        Ok(Ok(stream)) => stream,
        // Refused or reset: the server (or its kernel) turned the connection away.
        Ok(Err(_)) => {
            outcome.failed = true;
            return outcome;
        }
        // Still connecting when the window closed (SYNs dropped and retransmitted).
        Err(_) => return outcome,
    };
    outcome.connected = Some(first.elapsed());
    // Our CSM goes first (RFC 8323 §5.3), the first ping right behind it: a client need not
    // wait for the server's CSM.
    if timeout_at(end.into(), stream.write_all(&[0x00, CSM, 0x00, PING]))
        .await
        .is_ok_and(|written| written.is_ok())
    {
        outcome.pings = 1;
    } else {
        outcome.failed = true;
        return outcome;
    }
    let _ = timeout_at(end.into(), tcp_pings(stream, first, &mut outcome)).await;
    outcome
}

/// A connected session until the window closes (the caller's timeout): a ping a second,
/// counting pongs, answering the server's own pings.
async fn tcp_pings(mut stream: TcpStream, first: Instant, outcome: &mut Outcome) {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 4096];
    let mut answers = Vec::new();
    let mut first_pong = None;
    let mut csm_at = None;
    let mut next_ping = Instant::now() + PING_INTERVAL;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let now = Instant::now();
                match read {
                    Ok(0) | Err(_) => {
                        outcome.failed = true;
                        return;
                    }
                    Ok(n) => decoder.push(&buf[..n]),
                }
                loop {
                    let frame = match decoder.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(_) => {
                            outcome.failed = true;
                            return;
                        }
                    };
                    match frame.code {
                        CSM => {
                            outcome.csm = true;
                            csm_at.get_or_insert(now);
                        }
                        PONG => {
                            outcome.pongs += 1;
                            first_pong.get_or_insert(now);
                        }
                        PING => {
                            answers.push(frame.token.len() as u8);
                            answers.push(PONG);
                            answers.extend_from_slice(&frame.token);
                        }
                        RELEASE | ABORT => {
                            outcome.failed = true;
                            return;
                        }
                        _ => {}
                    }
                }
                // The first answer is the CSM and the first Pong, whichever came last.
                if outcome.first_answer.is_none() {
                    if let (Some(csm), Some(pong)) = (csm_at, first_pong) {
                        outcome.first_answer = Some(csm.max(pong) - first);
                    }
                }
                if !answers.is_empty() {
                    if stream.write_all(&answers).await.is_err() {
                        outcome.failed = true;
                        return;
                    }
                    answers.clear();
                }
            }
            _ = sleep_until(next_ping.into()) => {
                if stream.write_all(&[0x00, PING]).await.is_err() {
                    outcome.failed = true;
                    return;
                }
                outcome.pings += 1;
                next_ping += PING_INTERVAL;
            }
        }
    }
}

/// The run's figures, from every session's outcome.
#[derive(Debug)]
struct Summary {
    sessions: usize,
    connected: usize,
    established: usize,
    answered: usize,
    failed: usize,
    /// Answered within `--prompt` of the first message.
    prompt: usize,
    pings: u64,
    pongs: u64,
    /// Time to first answer of every session, ascending; `None` (never answered) last.
    first_answers: Vec<Option<Duration>>,
    /// TCP: time to connect of every session, in the same order.
    connects: Vec<Option<Duration>>,
}

impl Summary {
    fn of(outcomes: &[Outcome], prompt: Duration) -> Self {
        let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        // `None` sorts first in `Option`'s order; a session never answered is the slowest.
        let ascending = |mut times: Vec<Option<Duration>>| {
            times.sort_by_key(|d| (d.is_none(), *d));
            times
        };
        let first_answers = ascending(outcomes.iter().map(|o| o.first_answer).collect());
        let connects = ascending(outcomes.iter().map(|o| o.connected).collect());
        Summary {
            sessions: outcomes.len(),
            connected: count(|o| o.connected.is_some()),
            established: count(|o| o.csm),
            answered: count(|o| o.first_answer.is_some()),
            failed: count(|o| o.failed),
            prompt: outcomes
                .iter()
                .filter(|o| o.first_answer.is_some_and(|d| d <= prompt))
                .count(),
            pings: outcomes.iter().map(|o| o.pings).sum(),
            pongs: outcomes.iter().map(|o| o.pongs).sum(),
            first_answers,
            connects,
        }
    }

    /// The `q` quantile (0..=1) of the time to first answer over every session: `None` when it
    /// falls on a session that was never answered in the window.
    fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.first_answers, q)
    }

    fn print(&self, report: &Report<'_>) {
        let args = report.args;
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "none".into(),
                |d| format!("{:.1}", d.as_secs_f64() * 1e3),
            )
        };
        let (p50, p99, max) = (self.quantile(0.5), self.quantile(0.99), self.quantile(1.0));
        let prompt_pct = 100.0 * self.prompt as f64 / self.sessions as f64;
        let tcp = if report.transport == "tcp" {
            format!(
                "{} connected (p50 {} p99 {} ms), {} established (CSM), ",
                self.connected,
                ms(quantile(&self.connects, 0.5)),
                ms(quantile(&self.connects, 0.99)),
                self.established
            )
        } else {
            String::new()
        };
        println!(
            "burst {} {}: {} sessions in {:.1} s, {tcp}{} answered ({} within {:.0} s, \
             {:.2}%), {} failed; first answer p50 {} p99 {} max {} ms; {} pings, {} pongs in \
             the {:.0} s window; the kernel dropped {} ({})",
            report.transport,
            report.target,
            self.sessions,
            args.spread.as_secs_f64(),
            self.answered,
            self.prompt,
            args.prompt.as_secs_f64(),
            prompt_pct,
            self.failed,
            ms(p50),
            ms(p99),
            ms(max),
            self.pings,
            self.pongs,
            args.window.as_secs_f64(),
            report
                .kernel_drops
                .map_or_else(|| "?".into(), |n| n.to_string()),
            if report.transport == "tcp" {
                "TcpExt ListenOverflows"
            } else {
                "Udp RcvbufErrors"
            },
        );
        println!(
            "RESULT transport={} sessions={} spread_s={:.1} window_s={:.1} prompt_s={:.1} \
             connected={} connect_p50_ms={} connect_p99_ms={} established={} answered={} \
             failed={} prompt={} prompt_pct={:.2} first_p50_ms={} first_p99_ms={} \
             first_max_ms={} pings={} pongs={} \
             server_cpu_s={} server_rss_kb={} server_base_kb={} load_cpu_s={} kernel_drops={}",
            report.transport,
            self.sessions,
            args.spread.as_secs_f64(),
            args.window.as_secs_f64(),
            args.prompt.as_secs_f64(),
            self.connected,
            ms(quantile(&self.connects, 0.5)),
            ms(quantile(&self.connects, 0.99)),
            self.established,
            self.answered,
            self.failed,
            self.prompt,
            prompt_pct,
            ms(p50),
            ms(p99),
            ms(max),
            self.pings,
            self.pongs,
            report
                .server_cpu
                .map_or_else(|| "-".into(), |s| format!("{s:.2}")),
            report.server_peak_kb.unwrap_or(0),
            report.server_base_kb.unwrap_or(0),
            report
                .own_cpu
                .map_or_else(|| "-".into(), |s| format!("{s:.2}")),
            report
                .kernel_drops
                .map_or_else(|| "-".into(), |n| n.to_string()),
        );
    }
}

/// What the kernel dropped before the server saw it, so far: over TCP `ListenOverflows` (a SYN
/// or a handshake's last ACK dropped because a listener's accept queue was full), over UDP
/// `RcvbufErrors` (datagrams dropped because a socket's receive buffer was full). Both count
/// for the whole network namespace, which is why a row says they are the server's only while
/// nothing else bursts on loopback; they tell a server that is slow to answer from one whose
/// kernel never handed it the message.
fn kernel_drops(transport: &str) -> Option<u64> {
    match transport {
        "tcp" => net_counter("/proc/net/netstat", "TcpExt:", "ListenOverflows"),
        _ => net_counter("/proc/net/snmp", "Udp:", "RcvbufErrors"),
    }
}

/// The `q` quantile (0..=1) of `times`, ascending with `None` last: `None` when it falls on one.
fn quantile(times: &[Option<Duration>], q: f64) -> Option<Duration> {
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
    times.get(rank - 1).copied().flatten()
}

/// What the report says beside the sessions' figures.
struct Report<'a> {
    transport: &'static str,
    target: SocketAddr,
    args: &'a BurstArgs,
    /// The server's utime + stime over the window.
    server_cpu: Option<f64>,
    server_peak_kb: Option<u64>,
    /// The server's RSS before the burst.
    server_base_kb: Option<u64>,
    own_cpu: Option<f64>,
    /// What [`kernel_drops`] counted over the window.
    kernel_drops: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_answer_counts_once_and_only_for_a_ping_sent() {
        let mut pings = UdpPings {
            first_id: 0xfffe,
            sent: 0,
            answered: 0,
        };
        assert!(!pings.take_answer(0xfffe), "nothing sent yet");
        assert_eq!(pings.next_id(), 0xfffe);
        assert_eq!(pings.next_id(), 0xffff);
        assert_eq!(pings.next_id(), 0x0000, "Message IDs wrap");
        assert!(pings.take_answer(0x0000));
        assert!(
            !pings.take_answer(0x0000),
            "a duplicate answer is no second pong"
        );
        assert!(pings.take_answer(0xfffe));
        assert!(!pings.take_answer(0x0001), "not sent");
        assert!(!pings.take_answer(0x1234));
        assert!(pings.take_pong(&[0x70, 0x00, 0xff, 0xff]), "an RST");
        assert!(
            !pings.take_pong(&[0x40, 0x00, 0xff, 0xff]),
            "a ping is no answer"
        );
        assert!(!pings.take_pong(&[0x70, 0x00, 0xff]));
    }

    #[test]
    fn kernel_drops_are_read_for_both_transports() {
        assert!(kernel_drops("tcp").is_some() && kernel_drops("udp").is_some());
    }

    #[test]
    fn sessions_never_answered_are_the_slowest() {
        let answered = |ms| Outcome {
            first_answer: Some(Duration::from_millis(ms)),
            ..Outcome::default()
        };
        let mut outcomes = vec![answered(300), answered(100), answered(2500)];
        outcomes.push(Outcome::default());
        let summary = Summary::of(&outcomes, Duration::from_secs(2));
        assert_eq!(summary.answered, 3);
        assert_eq!(summary.prompt, 2);
        assert_eq!(summary.quantile(0.5), Some(Duration::from_millis(300)));
        assert_eq!(summary.quantile(0.75), Some(Duration::from_millis(2500)));
        assert_eq!(summary.quantile(0.99), None);
        assert_eq!(summary.quantile(1.0), None);
        assert_eq!(summary.quantile(0.0), Some(Duration::from_millis(100)));
    }
}
