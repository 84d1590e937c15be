//! Keepalive under packet loss: does the stack tell a lossy path from a dead peer?
//!
//! A UDP keepalive ping is an empty CON retransmitted per RFC 7252: 1 + MAX_RETRANSMIT
//! transmissions, each answered by an RST. A ping cycle fails only when every transmission or
//! its RST is lost, so with a loss rate `l` each way the probability that a cycle of a live peer
//! ends in `TooManyRetries` is
//!
//! ```text
//!     p = (1 - (1 - l)^2) ^ (1 + MAX_RETRANSMIT)       l = 20 %, MAX_RETRANSMIT 4:
//!       = 0.36^5 = 0.605 % per cycle                     6.05 expected in 1,000 cycles,
//!                                                        P(none in 1,000) = 0.23 %
//! ```
//!
//! so with the RFC 7252 defaults 20 % loss *does* cause failures of a live peer over 1,000
//! cycles: that is what the parameters imply, not something the stack can avoid without
//! changing them. What the stack must get right, and what these tests assert, is that it fails
//! exactly when the path ate every transmission of a ping or its answer — never when an answer
//! got through (a *spurious* failure) and never later than the parameters allow — and that the
//! measured rate matches `p`.
//!
//! - `relay_with_20_percent_loss_*`: real sockets through a loopback relay that drops 20 % of
//!   the datagrams each way (seeded, deterministic), with the RFC 7252 schedule scaled down
//!   (ACK_TIMEOUT 20 ms, random factor 1.5, MAX_RETRANSMIT 4, interval 30 ms): every
//!   `TooManyRetries` is checked against the relay's log.
//! - `simulated_*`: the sans-IO `DatagramSession` on both ends of a seeded lossy channel in
//!   virtual time, with the real default parameters (ACK_TIMEOUT 2 s, ...), over 100,000 ping
//!   cycles.
//! - `*_total_loss_*`: 100 % loss is detected within [ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1) - 1),
//!   that * ACK_RANDOM_FACTOR] of the ping (62 s to 93 s with the defaults; 620 ms to 930 ms
//!   scaled down).
//!
//! Run with `--nocapture` to see the measured rates and detection times.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use coap_keepalive::config::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::context::{Context, ContextSettings};
use coap_keepalive::error::NackReason;
use coap_keepalive::protocol::datagram::DatagramSession;
use coap_keepalive::protocol::ProtocolEvent;
use coap_keepalive::rng::Rng;
use coap_keepalive::wire::udp;

/// Loss each way in the lossy tests.
const LOSS: f64 = 0.2;

/// Probability that one ping cycle of a live peer fails: every one of the
/// `1 + max_retransmit` transmissions, or its answer, lost.
fn analytic_failure_rate(loss_up: f64, loss_down: f64, max_retransmit: u32) -> f64 {
    let exchange_lost = 1.0 - (1.0 - loss_up) * (1.0 - loss_down);
    exchange_lost.powi(max_retransmit as i32 + 1)
}

/// ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1) - 1): the earliest a ping can be given up.
fn min_give_up(params: &TransmissionParams) -> Duration {
    params.ack_timeout * ((1u32 << (params.max_retransmit + 1)) - 1)
}

/// The timing of the real-socket tests: the RFC 7252 schedule divided by 100.
fn scaled_params() -> TransmissionParams {
    TransmissionParams::default()
        .with_ack_timeout(Duration::from_millis(20))
        .with_ack_random_factor(1.5)
        .with_max_retransmit(4)
}

// ---------------------------------------------------------------------------------------------
// The relay

/// One ping as the relay saw it: its transmissions from the client and the server's answers.
#[derive(Debug, Clone)]
struct PingRecord {
    client_port: u16,
    first_seen: Instant,
    transmissions: u32,
    answers_forwarded: u32,
}

#[derive(Debug, Default)]
struct RelayLog {
    pings: Vec<PingRecord>,
    by_id: HashMap<(u16, u16), usize>,
    dropped_up: u64,
    dropped_down: u64,
    forwarded_up: u64,
    forwarded_down: u64,
}

impl RelayLog {
    /// A datagram from the client: counts a ping transmission.
    fn client_sent(&mut self, port: u16, bytes: &[u8]) {
        if let Ok(udp::Datagram::Ping { message_id }) = udp::classify(bytes) {
            let pings = &mut self.pings;
            let index = *self.by_id.entry((port, message_id)).or_insert_with(|| {
                pings.push(PingRecord {
                    client_port: port,
                    first_seen: Instant::now(),
                    transmissions: 0,
                    answers_forwarded: 0,
                });
                pings.len() - 1
            });
            self.pings[index].transmissions += 1;
        }
    }

    /// A datagram from the server to the client, forwarded or not.
    fn server_sent(&mut self, port: u16, bytes: &[u8], forwarded: bool) {
        if let Ok(udp::Datagram::Reset { message_id }) = udp::classify(bytes) {
            if let Some(&index) = self.by_id.get(&(port, message_id)) {
                self.pings[index].answers_forwarded += u32::from(forwarded);
            }
        }
    }

    /// The pings of one client, in order.
    fn of(&self, port: u16) -> Vec<&PingRecord> {
        self.pings
            .iter()
            .filter(|p| p.client_port == port)
            .collect()
    }
}

/// A loopback relay between clients and `server`, dropping a fraction of the datagrams in each
/// direction. Each client gets its own socket towards the server (so its own server session).
/// Drop decisions come from seeded generators: the same traffic is dropped the same way.
struct Relay {
    addr: SocketAddr,
    log: Arc<Mutex<RelayLog>>,
}

impl Relay {
    async fn start(server: SocketAddr, loss_up: f64, loss_down: f64, seed: u64) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().unwrap();
        let log = Arc::new(Mutex::new(RelayLog::default()));
        tokio::spawn(Relay::run(
            front,
            server,
            loss_up,
            loss_down,
            seed,
            log.clone(),
        ));
        Relay { addr, log }
    }

    async fn run(
        front: Arc<UdpSocket>,
        server: SocketAddr,
        loss_up: f64,
        loss_down: f64,
        seed: u64,
        log: Arc<Mutex<RelayLog>>,
    ) {
        let mut up = Rng::seeded(seed);
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&client) {
                Some(back) => back.clone(),
                None => {
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    back.connect(server).await.unwrap();
                    let down = Rng::seeded(seed ^ (u64::from(client.port()) << 17));
                    tokio::spawn(Relay::run_down(
                        back.clone(),
                        front.clone(),
                        client,
                        loss_down,
                        down,
                        log.clone(),
                    ));
                    backs.insert(client, back.clone());
                    back
                }
            };
            let drop = up.next_f64() < loss_up;
            {
                let mut log = log.lock().unwrap();
                log.client_sent(client.port(), &buf[..n]);
                if drop {
                    log.dropped_up += 1;
                } else {
                    log.forwarded_up += 1;
                }
            }
            if !drop {
                let _ = back.send(&buf[..n]).await;
            }
        }
    }

    async fn run_down(
        back: Arc<UdpSocket>,
        front: Arc<UdpSocket>,
        client: SocketAddr,
        loss: f64,
        mut rng: Rng,
        log: Arc<Mutex<RelayLog>>,
    ) {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let drop = rng.next_f64() < loss;
            {
                let mut log = log.lock().unwrap();
                log.server_sent(client.port(), &buf[..n], !drop);
                if drop {
                    log.dropped_down += 1;
                } else {
                    log.forwarded_down += 1;
                }
            }
            if !drop {
                let _ = front.send_to(&buf[..n], client).await;
            }
        }
    }
}

/// A server answering pings on a loopback UDP port (keepalive off: it only answers).
async fn server() -> (Context, SocketAddr) {
    let ctx = Context::new();
    let endpoint = ctx
        .listen_udp(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("listen");
    (ctx, endpoint.local_addr)
}

/// A client context pinging after `interval` idle with `params`; its nacks (local port,
/// reason, when) go to the returned channel and its pongs are counted.
fn client(
    interval: Duration,
    params: TransmissionParams,
    seed: u64,
) -> (
    Context,
    mpsc::UnboundedReceiver<(u16, NackReason, Instant)>,
    Arc<AtomicU64>,
) {
    let mut settings = ContextSettings::default();
    settings.seed = Some(seed);
    let ctx = Context::with_settings(settings);
    ctx.set_keepalive_config(
        KeepaliveConfig::default()
            .with_interval(Some(interval))
            .with_transmission(params),
    )
    .expect("valid keepalive config");
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_nack_handler(move |session, reason| {
        let _ = tx.send((session.local_addr().port(), reason, Instant::now()));
    });
    let pongs = Arc::new(AtomicU64::new(0));
    let counter = pongs.clone();
    ctx.register_pong_handler(move |_, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    (ctx, rx, pongs)
}

// ---------------------------------------------------------------------------------------------
// (a) real sockets, 20 % loss each way, scaled-down timing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_20_percent_loss_fails_only_when_every_exchange_of_a_ping_was_lost() {
    /// Ping cycles to run (about 55 ms each on average here).
    const CYCLES: u64 = 300;
    /// Wall-clock limit; the test still judges the cycles it completed.
    const LIMIT: Duration = Duration::from_secs(25);
    let params = scaled_params();
    let (_server, server_addr) = server().await;
    let relay = Relay::start(server_addr, LOSS, LOSS, 0x1055).await;
    let (client, mut nacks, pongs) = client(Duration::from_millis(30), params, 7);

    let started = Instant::now();
    let mut failures: Vec<(u16, NackReason)> = Vec::new();
    let mut session = client.connect_udp(relay.addr).await.expect("connect");
    while pongs.load(Ordering::Relaxed) + (failures.len() as u64) < CYCLES
        && started.elapsed() < LIMIT
    {
        match tokio::time::timeout(Duration::from_millis(50), nacks.recv()).await {
            Ok(Some((port, reason, _))) => {
                assert_eq!(port, session.local_addr().port());
                failures.push((port, reason));
                session = client.connect_udp(relay.addr).await.expect("reconnect");
            }
            Ok(None) => panic!("nack channel closed"),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    client.shutdown().await;
    let pongs = pongs.load(Ordering::Relaxed);

    let log = relay.log.lock().unwrap();
    let max_transmissions = 1 + params.max_retransmit;
    let mut spurious = 0;
    for (port, reason) in &failures {
        assert_eq!(*reason, NackReason::TooManyRetries);
        let last = *log.of(*port).last().expect("a failed session sent pings");
        if last.answers_forwarded > 0 || last.transmissions != max_transmissions {
            spurious += 1;
            eprintln!("spurious failure: {last:?}");
        }
    }
    // A session moves on to its next ping only after an answer got through; a ping whose every
    // exchange was lost must have been its session's last.
    let mut ports: Vec<u16> = log.pings.iter().map(|p| p.client_port).collect();
    ports.sort_unstable();
    ports.dedup();
    let missed = ports
        .iter()
        .flat_map(|port| {
            let pings = log.of(*port);
            pings[..pings.len() - 1].to_vec()
        })
        .filter(|p| p.answers_forwarded == 0)
        .count();
    let cycles = pongs + failures.len() as u64;
    let analytic = analytic_failure_rate(LOSS, LOSS, params.max_retransmit);
    let measured = failures.len() as f64 / cycles as f64;
    eprintln!(
        "real sockets, {:.0} % loss each way (dropped {} of {} up, {} of {} down), \
         ACK_TIMEOUT 20 ms x1.5, MAX_RETRANSMIT 4, interval 30 ms: {cycles} ping cycles in \
         {elapsed:.1?}, {pongs} pongs, {} TooManyRetries ({:.2} %; analytic {:.3} %), \
         {spurious} spurious",
        LOSS * 100.0,
        log.dropped_up,
        log.dropped_up + log.forwarded_up,
        log.dropped_down,
        log.dropped_down + log.forwarded_down,
        failures.len(),
        measured * 100.0,
        analytic * 100.0,
    );
    assert!(cycles >= 100, "only {cycles} cycles in {elapsed:?}");
    assert_eq!(spurious, 0, "TooManyRetries although an answer got through");
    assert_eq!(
        missed, 0,
        "a ping whose every exchange was lost did not fail its session"
    );
    // Far beyond what loss explains (mean 1.8 in 300 cycles): P(≥ 10) < 1e-4.
    assert!(failures.len() < 10, "{} failures", failures.len());
}

// ---------------------------------------------------------------------------------------------
// (b) virtual time, the real default parameters

/// Where a datagram in flight goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Client,
    Server,
}

/// A datagram in the simulated channel: arrival, sequence number (ties), destination, bytes.
type InFlight = (Instant, u64, To, Vec<u8>);

/// Outcome of a simulated run.
#[derive(Debug, Default)]
struct SimReport {
    cycles: u64,
    pongs: u64,
    failures: u64,
    /// Failures although an answer to the failed ping reached the client.
    spurious: u64,
    /// Pings whose every exchange was lost (the channel forced their failure).
    forced: u64,
    /// Index (in cycles) of every failure.
    failure_cycles: Vec<u64>,
    /// Time from the first transmission of a failed ping to its `TooManyRetries`.
    detection: Vec<Duration>,
    /// Pings that ended with neither a pong nor a failure (dropped because other traffic
    /// proved the peer alive).
    quiet: u64,
}

/// Our client and our server, each a sans-IO `DatagramSession`, joined by a channel that drops
/// `loss_up` / `loss_down` of the datagrams and delays the rest by 1 to 50 ms, in virtual time,
/// until `cycles` ping cycles completed. A client that fails is replaced by a new session (a
/// reconnect), as an application would.
fn simulate(
    params: TransmissionParams,
    interval: Duration,
    loss_up: f64,
    loss_down: f64,
    cycles: u64,
    seed: u64,
) -> SimReport {
    let t0 = Instant::now();
    let config = KeepaliveConfig::default()
        .with_interval(Some(interval))
        .with_transmission(params);
    let mut seeds = Rng::seeded(seed);
    let mut channel = Rng::seeded(seeds.next_u64());
    let mut client = DatagramSession::new(config, seeds.fork(), t0);
    let mut server = DatagramSession::new(KeepaliveConfig::default(), seeds.fork(), t0);
    let mut in_flight: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut sequence = 0u64;
    // The outstanding ping: Message ID, first transmission, transmissions, answers delivered.
    let mut ping: Option<(u16, Instant, u32, u32)> = None;
    let mut report = SimReport::default();
    let mut now = t0;
    while report.cycles < cycles {
        // Client output: pings into the channel, pongs and failures counted.
        while let Some(bytes) = client.poll_transmit() {
            if let Ok(udp::Datagram::Ping { message_id }) = udp::classify(&bytes) {
                match &mut ping {
                    Some((id, _, sent, _)) if *id == message_id => *sent += 1,
                    previous => {
                        if previous.is_some() {
                            report.quiet += 1;
                            report.cycles += 1;
                        }
                        *previous = Some((message_id, now, 1, 0));
                    }
                }
            }
            if channel.next_f64() >= loss_up {
                let delay = Duration::from_millis(1 + channel.next_u64() % 50);
                sequence += 1;
                in_flight.push(Reverse((now + delay, sequence, To::Server, bytes)));
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                ProtocolEvent::Pong { .. } => {
                    report.cycles += 1;
                    report.pongs += 1;
                    ping = None;
                }
                ProtocolEvent::Failed(reason) => {
                    assert_eq!(reason, NackReason::TooManyRetries);
                    let (_, first, sent, answered) = ping.take().expect("failed without a ping");
                    if answered > 0 || sent != 1 + params.max_retransmit {
                        report.spurious += 1;
                    } else {
                        report.forced += 1;
                    }
                    report.detection.push(now - first);
                    report.failure_cycles.push(report.cycles);
                    report.cycles += 1;
                    report.failures += 1;
                    client = DatagramSession::new(config, seeds.fork(), now);
                }
                other => panic!("unexpected client event {other:?}"),
            }
        }
        // Server output: the RSTs answering pings.
        while let Some(event) = server.poll_event() {
            if let ProtocolEvent::PeerPing { answer, .. } = event {
                if channel.next_f64() >= loss_down {
                    let delay = Duration::from_millis(1 + channel.next_u64() % 50);
                    sequence += 1;
                    in_flight.push(Reverse((now + delay, sequence, To::Client, answer)));
                }
            }
        }
        assert_eq!(
            server.poll_transmit(),
            None,
            "the server sends only answers"
        );
        // The next thing to happen.
        let next = [
            client.poll_timeout(),
            in_flight.peek().map(|Reverse((at, ..))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the client always has a deadline");
        now = now.max(next);
        if let Some(Reverse((at, ..))) = in_flight.peek() {
            if *at <= now {
                let Reverse((_, _, to, bytes)) = in_flight.pop().unwrap();
                match to {
                    To::Server => server.handle_datagram(now, &bytes),
                    To::Client => {
                        if let (Ok(udp::Datagram::Reset { message_id }), Some(p)) =
                            (udp::classify(&bytes), ping.as_mut())
                        {
                            if message_id == p.0 {
                                p.3 += 1;
                            }
                        }
                        client.handle_datagram(now, &bytes);
                    }
                }
                continue;
            }
        }
        client.handle_timeout(now);
    }
    report
}

#[test]
fn simulated_20_percent_loss_with_default_parameters_fails_at_the_analytic_rate_and_never_spuriously(
) {
    /// Cycles simulated: enough for a rate known to about ±4 % (≈ 1,800 expected failures).
    const CYCLES: u64 = 300_000;
    let params = TransmissionParams::default();
    assert_eq!(params.ack_timeout, Duration::from_secs(2));
    assert_eq!(params.max_retransmit, 4);
    let report = simulate(params, Duration::from_secs(30), LOSS, LOSS, CYCLES, 0x5EED);
    let p = analytic_failure_rate(LOSS, LOSS, params.max_retransmit);
    let measured = report.failures as f64 / report.cycles as f64;
    let sigma = (p * (1.0 - p) / report.cycles as f64).sqrt();

    // The issue's window: the first 1,000 cycles, and every 1,000-cycle window.
    let in_first_1000 = report.failure_cycles.iter().filter(|&&c| c < 1_000).count();
    let windows = report.cycles / 1_000;
    let mut failed_windows = report
        .failure_cycles
        .iter()
        .map(|c| c / 1_000)
        .filter(|w| *w < windows)
        .collect::<Vec<_>>();
    failed_windows.dedup();
    let p_window = 1.0 - (1.0 - p).powi(1_000);
    let min = report.detection.iter().min().copied().unwrap_or_default();
    let max = report.detection.iter().max().copied().unwrap_or_default();
    eprintln!(
        "virtual time, {:.0} % loss each way, RFC 7252 defaults (ACK_TIMEOUT 2 s, x1.5, \
         MAX_RETRANSMIT 4): {} ping cycles, {} pongs, {} TooManyRetries = {:.3} % per cycle \
         (analytic 0.36^5 = {:.3} %, σ {:.3} %); {} spurious; {} in the first 1,000 cycles \
         (expected {:.2}); {} of {} windows of 1,000 cycles had a failure (analytic {:.2} %); \
         detection {:.1?}..{:.1?} after the first transmission",
        LOSS * 100.0,
        report.cycles,
        report.pongs,
        report.failures,
        measured * 100.0,
        p * 100.0,
        sigma * 100.0,
        report.spurious,
        in_first_1000,
        p * 1_000.0,
        failed_windows.len(),
        windows,
        p_window * 100.0,
        min,
        max,
    );
    assert_eq!(
        report.spurious, 0,
        "a failure although an answer got through"
    );
    assert_eq!(
        report.quiet, 0,
        "every ping ends in a pong or a failure here"
    );
    assert!(
        (measured - p).abs() < 5.0 * sigma,
        "measured {measured} vs analytic {p} (σ {sigma})"
    );
    // Every failure is a real exhaustion of the schedule, within its RFC 7252 bounds.
    let lower = min_give_up(&params);
    let upper = params.max_transmit_wait();
    assert!(report.detection.iter().all(|d| *d >= lower && *d <= upper));
}

// ---------------------------------------------------------------------------------------------
// (c) 100 % loss: detection within the bound the parameters imply

#[test]
fn simulated_total_loss_is_detected_within_max_transmit_wait_with_default_parameters() {
    let params = TransmissionParams::default();
    let lower = min_give_up(&params);
    let upper = lower.mul_f64(params.ack_random_factor);
    assert_eq!(
        (lower, upper),
        (Duration::from_secs(62), Duration::from_secs(93))
    );
    assert_eq!(upper, params.max_transmit_wait());
    let mut times = Vec::new();
    for seed in 0..200 {
        let report = simulate(params, Duration::from_secs(30), 1.0, 0.0, 1, seed);
        assert_eq!((report.failures, report.pongs), (1, 0));
        let detection = report.detection[0];
        assert!(
            detection >= lower && detection <= upper,
            "seed {seed}: {detection:?} outside [{lower:?}, {upper:?}]"
        );
        times.push(detection);
    }
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    eprintln!(
        "virtual time, 100 % loss, RFC 7252 defaults: TooManyRetries {:.2?}..{:.2?} (mean \
         {mean:.2?}) after the first transmission over 200 seeds; bound [{lower:?}, {upper:?}]",
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_total_loss_reports_too_many_retries_within_the_scaled_bound() {
    /// Sessions pinging at once through the black hole.
    const SESSIONS: usize = 5;
    /// Timer and scheduling latency allowed on top of the upper bound (five timers in a row).
    const SLACK: Duration = Duration::from_millis(100);
    let params = scaled_params();
    let lower = min_give_up(&params);
    let upper = params.max_transmit_wait();
    assert_eq!(
        (lower, upper),
        (Duration::from_millis(620), Duration::from_millis(930))
    );
    let (_server, server_addr) = server().await;
    let relay = Relay::start(server_addr, 1.0, 1.0, 0xDEAD).await;
    let (client, mut nacks, pongs) = client(Duration::from_millis(30), params, 11);
    let mut ports = Vec::new();
    for _ in 0..SESSIONS {
        let session = client.connect_udp(relay.addr).await.expect("connect");
        ports.push(session.local_addr().port());
    }
    let mut detections = Vec::new();
    for _ in 0..SESSIONS {
        let (port, reason, at) = tokio::time::timeout(Duration::from_secs(5), nacks.recv())
            .await
            .expect("TooManyRetries within 5 s")
            .expect("nack channel open");
        assert_eq!(reason, NackReason::TooManyRetries);
        let log = relay.log.lock().unwrap();
        let pings = log.of(port);
        assert_eq!(pings.len(), 1, "one ping, retransmitted, then the nack");
        assert_eq!(pings[0].transmissions, 1 + params.max_retransmit);
        detections.push(at - pings[0].first_seen);
    }
    client.shutdown().await;
    assert_eq!(pongs.load(Ordering::Relaxed), 0);
    eprintln!(
        "real sockets, 100 % loss, ACK_TIMEOUT 20 ms x1.5, MAX_RETRANSMIT 4: TooManyRetries \
         after {detections:.1?} (from the first transmission seen by the relay); bound \
         [{lower:?}, {upper:?}]"
    );
    for detection in detections {
        // The relay sees the first transmission a few microseconds after it was sent.
        assert!(
            detection + Duration::from_millis(2) >= lower,
            "{detection:?} < {lower:?}"
        );
        assert!(
            detection <= upper + SLACK,
            "{detection:?} > {upper:?} + {SLACK:?}"
        );
    }
}
