//! Interop with libcoap 4.3.1 (Debian's libcoap3-bin) on every transport, in both directions,
//! with each libcoap build that supports the transport (notls for `coap://` and `coap+tcp://`,
//! openssl and gnutls for `coaps://` and `coaps+tcp://`).
//!
//! - libcoap as client (`coap_client_*`): `coap-client-* -K 1 -s 4 -v 7` observes `/slow`, a
//!   resource of ours that never changes, so its session goes idle and it pings every second.
//!   Our ping handler sees the pings about a second apart and answers each; coap-client's log
//!   shows an answer for every ping it sent and no disconnect. In the same test a second
//!   coap-client, without `-K`, observes a server of ours whose keepalive is 1 s: our pings
//!   reach it and its answers reach our pong handler.
//! - libcoap as server (`coap_server_*`): our client's pings (400 ms apart, beyond libcoap's
//!   one-RST-per-250-ms limit) get libcoap's RSTs / tokenless Pongs and `GET /` returns its
//!   index text; then the server is frozen (SIGSTOP) and our client reports `TooManyRetries`
//!   within the bound its settings imply, and the session leaves the table.
//! - Requests (`requests_*`): coap-client-openssl's GET, PUT and observe (`-s 5`) against our
//!   resources over `coap://` and `coaps+tcp://`; and (`block1_put_*`) coap-client-notls's
//!   block-wise PUT, refused with 4.02 until block-wise transfer exists.
//! - Negative controls (`control_*`): a server of ours that suppresses its ping answers fails
//!   the same check the `coap_client_*` tests pass, and coap-client logs the failure; a frozen
//!   coap-client makes our server's pings go unanswered and its session fail.
//!
//! Every test has its own ports and children (killed however the test ends) and a time limit.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use coap_keepalive::{
    ClientCredentials, Context, NackReason, PeerPing, PingDecision, PskCredentials, Resource,
    Response, ServerCredentials, Session, SessionState, Status, Transport,
};
use coap_keepalive::{KeepaliveConfig, TransmissionParams};

use support::libcoap::{Build, LibcoapProcess, LibcoapServer, SERVER_INDEX};
use support::{bounded, drain, ms, Pki};

/// The most any test here may take; each needs 3 to 6 s when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(40);
/// How long coap-client runs: `-s 4` (observe for 4 s) plus a handshake on a busy machine.
const CLIENT_RUN: Duration = Duration::from_secs(15);
/// The identity and key of the DTLS-PSK cells (libcoap's `-k` / `-u`).
const PSK_IDENTITY: &str = "interop";
const PSK_KEY: &str = "interop-secret";

/// coap-client `-K 1` pings after one idle second (libcoap's idle counts its own sends): the
/// gaps between its pings as our handler sees them, with room for a busy machine.
const KEEPALIVE_GAP_MIN: Duration = Duration::from_millis(800);
const KEEPALIVE_GAP_MAX: Duration = Duration::from_millis(1600);
/// The longest round trip to a loopback peer that counts as an answer.
const MAX_RTT: Duration = Duration::from_millis(500);

/// Our client's keepalive against coap-server: above libcoap's one RST per 250 ms.
const OUR_INTERVAL: Duration = Duration::from_millis(400);
/// Our client's pong timeout over TCP / TLS.
const OUR_PONG_TIMEOUT: Duration = Duration::from_millis(300);
/// How late after its bound our client's nack may come on a busy machine.
const NACK_SLACK: Duration = Duration::from_millis(250);

/// What libcoap 4.3.1 logs at `-v 7` when a session fails or a message goes unanswered (found by
/// experiment against a server suppressing its answers, kept as `control_suppressed_answers_*`):
/// an unanswered keepalive ping ends the session one interval later with
/// `session disconnected (reason 1)` on every transport, and a request that can no longer go out
/// then logs `ERR cannot send CoAP pdu`. A Confirmable message retransmitted or given up logs
/// `mid=0x..: retransmission #n` / `give up after n attempts`.
const LIBCOAP_FAILURE_LINES: [&str; 4] = [
    "session disconnected",
    "give up after",
    "retransmission #",
    "cannot send",
];
/// The line coap-client logs once its observation is in place.
const LIBCOAP_OBSERVING: &str = "observation relationship established";

// ---- the matrix ----------------------------------------------------------------------------

/// A transport and how it is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// `coap://`.
    Udp,
    /// `coap+tcp://`.
    Tcp,
    /// `coaps://` with a pre-shared key.
    DtlsPsk,
    /// `coaps://` with certificates: the client verifies the server's.
    DtlsCertificate,
    /// `coaps+tcp://` with certificates both ways (mutual TLS).
    Tls,
}

impl Cell {
    fn transport(self) -> Transport {
        match self {
            Cell::Udp => Transport::Udp,
            Cell::Tcp => Transport::Tcp,
            Cell::DtlsPsk | Cell::DtlsCertificate => Transport::Dtls,
            Cell::Tls => Transport::Tls,
        }
    }

    fn is_datagram(self) -> bool {
        matches!(self.transport(), Transport::Udp | Transport::Dtls)
    }

    /// Serves `ctx` on a loopback port of its own; returns the base URI.
    async fn listen(self, ctx: &Context, pki: &Pki) -> String {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = match self {
            Cell::Udp => ctx.listen_udp(any).await,
            Cell::Tcp => ctx.listen_tcp(any).await,
            Cell::DtlsPsk => ctx.listen_dtls(any, ServerCredentials::Psk(psk())).await,
            Cell::DtlsCertificate => ctx.listen_dtls(any, pki.server_credentials(false)).await,
            Cell::Tls => ctx.listen_tls(any, pki.server_credentials(true)).await,
        }
        .expect("listen");
        format!(
            "{}://127.0.0.1:{}",
            self.transport().scheme(),
            endpoint.local_addr.port()
        )
    }

    /// coap-client's arguments to trust, and authenticate to, our server.
    fn coap_client_args(self, pki: &Pki) -> Vec<String> {
        let args: Vec<String> = match self {
            Cell::Udp | Cell::Tcp => vec![],
            Cell::DtlsPsk => vec![
                "-k".into(),
                PSK_KEY.into(),
                "-u".into(),
                PSK_IDENTITY.into(),
            ],
            Cell::DtlsCertificate => vec!["-R".into(), pki.path("ca.pem")],
            Cell::Tls => vec![
                "-R".into(),
                pki.path("ca.pem"),
                "-c".into(),
                pki.path("client.pem"),
                "-j".into(),
                pki.path("client.key"),
            ],
        };
        args
    }

    /// coap-server's arguments to secure P+1 as this cell needs.
    fn coap_server_args(self, pki: &Pki) -> Vec<String> {
        match self {
            Cell::Udp | Cell::Tcp => vec![],
            Cell::DtlsPsk => vec!["-k".into(), PSK_KEY.into()],
            Cell::DtlsCertificate => vec![
                "-c".into(),
                pki.path("server.pem"),
                "-j".into(),
                pki.path("server.key"),
            ],
            Cell::Tls => vec![
                "-c".into(),
                pki.path("server.pem"),
                "-j".into(),
                pki.path("server.key"),
                "-C".into(),
                pki.path("ca.pem"),
            ],
        }
    }

    /// Our client's credentials against coap-server secured by [`Cell::coap_server_args`].
    fn our_client_credentials(self, pki: &Pki) -> ClientCredentials {
        match self {
            Cell::Udp | Cell::Tcp => ClientCredentials::None,
            Cell::DtlsPsk => ClientCredentials::Psk(psk()),
            Cell::DtlsCertificate => pki.client_credentials(false),
            Cell::Tls => pki.client_credentials(true),
        }
    }
}

fn psk() -> PskCredentials {
    PskCredentials::new(PSK_IDENTITY, PSK_KEY)
}

// ---- coap-client's -v 7 log ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sent,
    Received,
}

/// The PDUs in a `-v 7` log. A PDU is a line holding `v:1 t:...` (a payload printed without
/// a newline may precede it on the same line). It was received when the line before says
/// `...: received N bytes`; it is the application's, not yet on the wire, after
/// `PDU presented by app`; otherwise it was sent (libcoap logs `sent N bytes` before it over
/// UDP, DTLS and TCP, but nothing over OpenSSL's TLS).
fn logged_pdus(log: &str) -> Vec<(Direction, &str)> {
    let mut pdus = Vec::new();
    let mut previous = "";
    for line in log.lines() {
        if let Some(start) = line.find("v:1 t:") {
            let direction = if previous.contains(": received ") && previous.ends_with(" bytes") {
                Some(Direction::Received)
            } else if previous.ends_with("PDU presented by app") {
                None
            } else {
                Some(Direction::Sent)
            };
            if let Some(direction) = direction {
                pdus.push((direction, &line[start..]));
            }
        }
        previous = line;
    }
    pdus
}

/// A keepalive ping as libcoap logs it: empty CON over UDP / DTLS, 7.02 over TCP / TLS.
fn is_ping(cell: Cell, pdu: &str) -> bool {
    if cell.is_datagram() {
        pdu.contains(" t:CON c:0.00 ")
    } else {
        pdu.contains(" c:Ping ")
    }
}

/// The answer to a ping as libcoap logs it: RST over UDP / DTLS, 7.03 over TCP / TLS.
fn is_ping_answer(cell: Cell, pdu: &str) -> bool {
    if cell.is_datagram() {
        pdu.contains(" t:RST c:0.00 ")
    } else {
        pdu.contains(" c:Pong ")
    }
}

fn count_pdus(log: &str, direction: Direction, what: impl Fn(&str) -> bool) -> usize {
    logged_pdus(log)
        .into_iter()
        .filter(|(d, pdu)| *d == direction && what(pdu))
        .count()
}

fn failure_lines(log: &str) -> Vec<String> {
    LIBCOAP_FAILURE_LINES
        .iter()
        .filter(|line| log.contains(*line))
        .map(|line| format!("coap-client logged {line:?}"))
        .collect()
}

fn check_gaps(at: &[Instant], what: &str, problems: &mut Vec<String>) {
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        if !(KEEPALIVE_GAP_MIN..=KEEPALIVE_GAP_MAX).contains(&gap) {
            problems.push(format!(
                "{what} {gap:?} apart, expected {KEEPALIVE_GAP_MIN:?} to {KEEPALIVE_GAP_MAX:?}"
            ));
        }
    }
}

/// The verdict on coap-client `-K 1` against our server: it observed, our handler saw at
/// least two of its pings about a second apart, it logged an answer to every ping it sent,
/// and no failure.
fn check_coap_client_pings(cell: Cell, pings: &[Instant], log: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if !log.contains(LIBCOAP_OBSERVING) {
        problems.push("coap-client did not observe /slow".to_owned());
    }
    if pings.len() < 2 {
        problems.push(format!("our handler saw {} pings, not >= 2", pings.len()));
    }
    check_gaps(pings, "pings", &mut problems);
    let sent = count_pdus(log, Direction::Sent, |pdu| is_ping(cell, pdu));
    let answered = count_pdus(log, Direction::Received, |pdu| is_ping_answer(cell, pdu));
    if sent != pings.len() {
        problems.push(format!(
            "coap-client logged {sent} pings sent, our handler saw {}",
            pings.len()
        ));
    }
    if answered != sent {
        problems.push(format!(
            "coap-client logged {answered} answers to its {sent} pings"
        ));
    }
    problems.extend(failure_lines(log));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The verdict on our server pinging coap-client (keepalive 1 s): at least two pongs about a
/// second apart, each a quick round trip, and coap-client logged every ping it received with
/// its answer, and no failure.
fn check_our_pings(cell: Cell, pongs: &[(Instant, Duration)], log: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if !log.contains(LIBCOAP_OBSERVING) {
        problems.push("coap-client did not observe /slow".to_owned());
    }
    if pongs.len() < 2 {
        problems.push(format!(
            "our pong handler saw {} pongs, not >= 2",
            pongs.len()
        ));
    }
    let at: Vec<Instant> = pongs.iter().map(|(at, _)| *at).collect();
    check_gaps(&at, "pongs", &mut problems);
    for (_, rtt) in pongs {
        if *rtt > MAX_RTT {
            problems.push(format!("a pong took {rtt:?}"));
        }
    }
    let received = count_pdus(log, Direction::Received, |pdu| is_ping(cell, pdu));
    let answered = count_pdus(log, Direction::Sent, |pdu| is_ping_answer(cell, pdu));
    if received != answered || answered != pongs.len() {
        problems.push(format!(
            "coap-client logged {received} pings received and {answered} answers sent; \
             our pong handler saw {}",
            pongs.len()
        ));
    }
    problems.extend(failure_lines(log));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ---- our side -------------------------------------------------------------------------------

/// Adds `/slow`: observable, never changed, so an observer's session goes idle. Each
/// observation registered is reported with its session.
fn add_slow_resource(ctx: &Context) -> mpsc::UnboundedReceiver<Session> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.add_resource(
        Resource::new("/slow")
            .observable()
            .get(move |request, session| {
                if request.observe == Some(0) {
                    let _ = tx.send(session.clone());
                }
                Response::content_text("slow")
            }),
    );
    rx
}

/// coap-client starts its `-s` timer and its keepalive idle timer on the same instant, the
/// response to its registration, so with `-K 1 -s 4` its fourth ping would go out just as it
/// ends the observation and exits (unanswered through no fault of the server). One message
/// half a second after the registration moves every later ping half a second away from that
/// instant: pings at 1.5, 2.5 and 3.5 s, exit at 4 s. That message is a notification when
/// coap-client pings; when our server does, it is one ping of ours, after which our keepalive
/// pings at 1.5, 2.5 and 3.5 s (idle counts from the last answer).
const OFFSET: Duration = Duration::from_millis(500);

/// Records each ping from a peer (its form and when it came) and answers it per `decision`.
fn record_pings(
    ctx: &Context,
    decision: PingDecision,
) -> mpsc::UnboundedReceiver<(Instant, PeerPing)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_ping_handler(move |_, ping| {
        let _ = tx.send((Instant::now(), ping.clone()));
        decision
    });
    rx
}

fn record_pongs(ctx: &Context) -> mpsc::UnboundedReceiver<(Instant, Duration)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_pong_handler(move |_, rtt| {
        let _ = tx.send((Instant::now(), rtt));
    });
    rx
}

fn record_nacks(ctx: &Context) -> mpsc::UnboundedReceiver<(Instant, NackReason)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_nack_handler(move |_, reason| {
        let _ = tx.send((Instant::now(), reason));
    });
    rx
}

/// Receives until `count` items arrived or `limit` passed (what a peer sent just before it
/// exited may still be on its way through our driver).
async fn collect<T>(rx: &mut mpsc::UnboundedReceiver<T>, count: usize, limit: Duration) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut items = drain(rx);
    while items.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => items.push(item),
            _ => break,
        }
    }
    items
}

/// Starts `build`'s coap-client with `extra` args, then `-s 4 -v 7`, the cell's security
/// arguments and `uri`.
fn coap_client(build: Build, cell: Cell, pki: &Pki, extra: &[&str], uri: &str) -> LibcoapProcess {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    args.extend(["-s", "4", "-v", "7"].map(String::from));
    args.extend(cell.coap_client_args(pki));
    args.push(uri.to_owned());
    LibcoapProcess::spawn(&build.client(), &args)
}

// ---- libcoap as client ----------------------------------------------------------------------

/// The session of coap-client's observation of `/slow`, once registered.
async fn registered(
    registrations: &mut mpsc::UnboundedReceiver<Session>,
    client: &LibcoapProcess,
) -> Session {
    tokio::time::timeout(Duration::from_secs(8), registrations.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("coap-client did not observe /slow\n{}", client.report()))
}

/// coap-client `-K 1` keeps its observation of our `/slow` alive: our server answers each
/// ping; returns the client (for the log) and the pings our handler saw.
async fn coap_client_pings_our_server(
    build: Build,
    cell: Cell,
    pki: &Pki,
    decision: PingDecision,
) -> (LibcoapProcess, Vec<(Instant, PeerPing)>, Context) {
    let ctx = Context::new();
    let mut registrations = add_slow_resource(&ctx);
    let mut pings = record_pings(&ctx, decision);
    let uri = format!("{}/slow", cell.listen(&ctx, pki).await);
    let mut client = coap_client(build, cell, pki, &["-K", "1"], &uri);

    registered(&mut registrations, &client).await;
    tokio::time::sleep(OFFSET).await;
    assert_eq!(ctx.notify("/slow"), 1, "\n{}", client.report());

    let first = tokio::time::timeout(Duration::from_secs(3), pings.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no ping from coap-client\n{}", client.report()));
    // Pinged while observing: the keepalive holds up an observation, not an empty session.
    assert_eq!(ctx.observer_count("/slow"), 1, "\n{}", client.report());

    client.wait_exit(CLIENT_RUN).await;
    let log = client.log();
    let sent = count_pdus(&log, Direction::Sent, |pdu| is_ping(cell, pdu));
    let mut all = vec![first];
    all.extend(collect(&mut pings, sent.saturating_sub(1), Duration::from_secs(1)).await);
    (client, all, ctx)
}

/// Our server with keepalive 1 s pings a coap-client that observes `/slow` without pinging
/// itself; returns the client and the pongs our handler saw.
async fn our_server_pings_coap_client(
    build: Build,
    cell: Cell,
    pki: &Pki,
) -> (LibcoapProcess, Vec<(Instant, Duration)>) {
    let ctx = Context::new();
    ctx.set_keepalive(1);
    let mut registrations = add_slow_resource(&ctx);
    let mut pongs = record_pongs(&ctx);
    let mut nacks = record_nacks(&ctx);
    let uri = format!("{}/slow", cell.listen(&ctx, pki).await);
    let mut client = coap_client(build, cell, pki, &[], &uri);

    let session = registered(&mut registrations, &client).await;
    tokio::time::sleep(OFFSET).await;
    session.ping();

    client.wait_exit(CLIENT_RUN).await;
    let log = client.log();
    let answered = count_pdus(&log, Direction::Sent, |pdu| is_ping_answer(cell, pdu));
    let pongs = collect(&mut pongs, answered, Duration::from_secs(1)).await;
    let failed: Vec<_> = drain(&mut nacks)
        .into_iter()
        .filter(|(_, reason)| *reason == NackReason::TooManyRetries)
        .collect();
    assert!(
        failed.is_empty(),
        "our server declared coap-client dead: {failed:?}\n{}",
        client.report()
    );
    (client, pongs)
}

/// Both ways of one cell, at once, each with its own server and coap-client.
async fn coap_client_keepalive(build: Build, cell: Cell) {
    bounded(TEST_LIMIT, async {
        let pki = Pki::generate();
        let (theirs, ours) = tokio::join!(
            coap_client_pings_our_server(build, cell, &pki, PingDecision::Answer),
            our_server_pings_coap_client(build, cell, &pki),
        );

        let (client, pings, _server) = theirs;
        for (_, ping) in &pings {
            let expected_form = match ping {
                PeerPing::Datagram { .. } => cell.is_datagram(),
                // libcoap's 7.02 has no token and asks for no Custody.
                PeerPing::Stream { token, custody } => {
                    !cell.is_datagram() && token.is_empty() && !custody
                }
                _ => false,
            };
            assert!(expected_form, "{ping:?} over {cell:?}");
        }
        let at: Vec<Instant> = pings.iter().map(|(at, _)| *at).collect();
        eprintln!(
            "{} -K 1 over {cell:?}: our handler saw {} pings {:?} apart",
            build.client(),
            at.len(),
            at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        );
        if let Err(problems) = check_coap_client_pings(cell, &at, &client.log()) {
            panic!(
                "{} -K 1 against our {cell:?} server: {problems}\n{}",
                build.client(),
                client.report()
            );
        }

        let (client, pongs) = ours;
        eprintln!(
            "our server over {cell:?} pinging {}: {} pongs, rtt {:?}",
            build.client(),
            pongs.len(),
            pongs.iter().map(|(_, rtt)| *rtt).collect::<Vec<_>>()
        );
        if let Err(problems) = check_our_pings(cell, &pongs, &client.log()) {
            panic!(
                "our {cell:?} server (keepalive 1 s) pinging {}: {problems}\n{}",
                build.client(),
                client.report()
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_notls_udp() {
    coap_client_keepalive(Build::Notls, Cell::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_notls_tcp() {
    coap_client_keepalive(Build::Notls, Cell::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_openssl_dtls_psk() {
    coap_client_keepalive(Build::Openssl, Cell::DtlsPsk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_gnutls_dtls_psk() {
    coap_client_keepalive(Build::Gnutls, Cell::DtlsPsk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_openssl_dtls_certificate() {
    coap_client_keepalive(Build::Openssl, Cell::DtlsCertificate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_gnutls_dtls_certificate() {
    coap_client_keepalive(Build::Gnutls, Cell::DtlsCertificate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_openssl_tls() {
    coap_client_keepalive(Build::Openssl, Cell::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_gnutls_tls() {
    coap_client_keepalive(Build::Gnutls, Cell::Tls).await;
}

// ---- libcoap as server ----------------------------------------------------------------------

/// Our client against `build`'s coap-server: pongs, `GET /`, then a frozen server is declared
/// dead within the bound of our settings.
async fn coap_server_keepalive(build: Build, cell: Cell) {
    bounded(TEST_LIMIT, async {
        let pki = Pki::generate();
        let args = cell.coap_server_args(&pki);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = LibcoapServer::start(build, &args).await;

        let client = Context::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let transmission = TransmissionParams::default()
            .with_ack_timeout(ms(100))
            .with_ack_random_factor(1.0)
            .with_max_retransmit(2);
        client
            .set_keepalive_config(
                KeepaliveConfig::default()
                    .with_interval(Some(OUR_INTERVAL))
                    .with_transmission(transmission)
                    .with_pong_timeout(OUR_PONG_TIMEOUT),
            )
            .unwrap();
        let mut pongs = record_pongs(&client);
        let mut nacks = record_nacks(&client);

        let peer = if cell.transport().is_secure() {
            server.secure_addr()
        } else {
            server.addr()
        };
        let uri = format!("{}://{peer}", cell.transport().scheme());
        let session = client
            .connect_with(&uri, &cell.our_client_credentials(&pki))
            .await
            .unwrap_or_else(|e| panic!("connect {uri}: {e}\n{}", server.report()));
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(session.transport(), cell.transport());

        for i in 1..=3 {
            let (_, rtt) = next_pong(&mut pongs, &server, &format!("pong {i}")).await;
            assert!(rtt < OUR_INTERVAL, "pong {i} after {rtt:?}");
        }

        let response = session
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("GET /: {e}\n{}", server.report()));
        assert_eq!(response.status, Status::Content, "{response:?}");
        assert!(
            response.payload_str().starts_with(SERVER_INDEX),
            "GET / returned {:?}",
            response.payload_str()
        );
        let (mut answered, _) = next_pong(&mut pongs, &server, "pong after GET /").await;
        assert!(drain(&mut nacks).is_empty());
        let stats = session.stats();
        assert!(stats.pongs >= 4, "{stats:?}");

        // Frozen: the sockets stay open but nothing answers. A pong already on its way moves
        // the reference point, the next ping goes out one interval after the last pong.
        server.process().freeze();
        let bound = OUR_INTERVAL
            + if cell.is_datagram() {
                transmission.max_transmit_wait()
            } else {
                OUR_PONG_TIMEOUT
            };
        let deadline = tokio::time::Instant::now() + bound * 3;
        let (failed_at, reason) = loop {
            tokio::select! {
                pong = pongs.recv() => answered = pong.expect("pong channel").0,
                nack = nacks.recv() => break nack.expect("nack channel"),
                _ = tokio::time::sleep_until(deadline) => {
                    panic!("no nack within {:?} of freezing the server", bound * 3)
                }
            }
        };
        assert_eq!(reason, NackReason::TooManyRetries);
        let after = failed_at - answered;
        eprintln!(
            "{} {cell:?}: nack {after:?} after the last pong (bound {bound:?})",
            build.server()
        );
        assert!(
            after + ms(20) >= bound && after <= bound + NACK_SLACK,
            "nack {after:?} after the last pong, expected {bound:?}"
        );
        let state = tokio::time::timeout(Duration::from_secs(2), session.closed())
            .await
            .expect("session not closed after its nack");
        assert_eq!(state, SessionState::Failed(NackReason::TooManyRetries));
        assert!(client.sessions().is_empty(), "failed session left in table");

        server.process().thaw();
        server.process().terminate(Duration::from_secs(2)).await;
    })
    .await
}

/// The next pong within a few intervals, or the test fails with the server's output.
async fn next_pong(
    pongs: &mut mpsc::UnboundedReceiver<(Instant, Duration)>,
    server: &LibcoapServer,
    what: &str,
) -> (Instant, Duration) {
    tokio::time::timeout(OUR_INTERVAL * 4, pongs.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "no {what} within {:?}\n{}",
                OUR_INTERVAL * 4,
                server.report()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_notls_udp() {
    coap_server_keepalive(Build::Notls, Cell::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_notls_tcp() {
    coap_server_keepalive(Build::Notls, Cell::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_openssl_dtls_psk() {
    coap_server_keepalive(Build::Openssl, Cell::DtlsPsk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_gnutls_dtls_psk() {
    coap_server_keepalive(Build::Gnutls, Cell::DtlsPsk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_openssl_dtls_certificate() {
    coap_server_keepalive(Build::Openssl, Cell::DtlsCertificate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_gnutls_dtls_certificate() {
    coap_server_keepalive(Build::Gnutls, Cell::DtlsCertificate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_openssl_tls() {
    coap_server_keepalive(Build::Openssl, Cell::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_server_gnutls_tls() {
    coap_server_keepalive(Build::Gnutls, Cell::Tls).await;
}

// ---- requests from coap-client (issue 4) ----------------------------------------------------

/// `/echo` (GET what was PUT) and `/time` (observable, "tick N", notified every second).
fn add_request_resources(ctx: &Context) -> tokio::task::JoinHandle<()> {
    let stored = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let (get, put) = (stored.clone(), stored);
    ctx.add_resource(
        Resource::new("/echo")
            .get(move |_, _| {
                let text = get.lock().unwrap().clone();
                Response::new(Status::Content).with_payload(text)
            })
            .put(move |request, _| {
                *put.lock().unwrap() = request.payload.clone();
                Response::new(Status::Changed)
            }),
    );
    let ticks = Arc::new(AtomicU32::new(0));
    let current = ticks.clone();
    ctx.add_resource(Resource::new("/time").observable().get(move |_, _| {
        Response::content_text(format!("tick {}", current.load(Ordering::SeqCst)))
    }));
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            ticks.fetch_add(1, Ordering::SeqCst);
            ctx.notify("/time");
        }
    })
}

/// The lines of coap-client's output (`-w`: one per payload) that start with `prefix`.
fn payload_lines(output: &str, prefix: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// coap-client-openssl `-m put -e TEXT`, then `-m get` returns TEXT; meanwhile `-s 5` on
/// `/time` receives the first representation and at least two notifications.
async fn coap_client_requests(cell: Cell) {
    bounded(TEST_LIMIT, async {
        let build = Build::Openssl;
        let pki = Pki::generate();
        let ctx = Context::new();
        let notifier = add_request_resources(&ctx);
        let base = cell.listen(&ctx, &pki).await;
        let security = cell.coap_client_args(&pki);
        let run = |args: &[&str]| {
            let mut all: Vec<String> = security.clone();
            all.extend(args.iter().map(|a| a.to_string()));
            LibcoapProcess::spawn(&build.client(), &all)
        };

        let time = format!("{base}/time");
        let mut observer = run(&["-w", "-s", "5", &time]);

        let text = format!("kept alive over {cell:?}");
        let echo = format!("{base}/echo");
        let mut put = run(&["-w", "-m", "put", "-e", &text, &echo]);
        put.wait_exit(CLIENT_RUN).await;
        let mut get = run(&["-w", "-m", "get", &echo]);
        get.wait_exit(CLIENT_RUN).await;
        assert_eq!(
            payload_lines(&get.log(), "kept alive"),
            [text],
            "GET after PUT\n{}\n{}",
            put.report(),
            get.report()
        );

        observer.wait_exit(CLIENT_RUN).await;
        let ticks = payload_lines(&observer.log(), "tick ");
        let numbers: Vec<u32> = ticks
            .iter()
            .filter_map(|t| t.trim_start_matches("tick ").parse().ok())
            .collect();
        assert!(
            numbers.len() >= 3 && numbers.windows(2).all(|w| w[0] < w[1]),
            "expected the first representation and >= 2 fresh notifications, got {ticks:?}\n{}",
            observer.report()
        );
        notifier.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_coap_client_openssl_udp() {
    coap_client_requests(Cell::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_coap_client_openssl_tls() {
    coap_client_requests(Cell::Tls).await;
}

/// coap-client-notls `-b SIZE -m put -f FILE` with a 100 kB file sends the body in blocks,
/// the first carrying Block1 (27) and Size1 (RFC 7959); our server answers 2.31 Continue to
/// each but the last, reassembles the body, and `/echo` holds it whole. `-b SIZE -m get -o
/// OUT` then fetches it back in Block2 blocks: byte-identical (compared as `cmp` would).
async fn coap_client_block_wise_put_then_get(cell: Cell, block: &str) {
    bounded(TEST_LIMIT, async {
        let build = Build::Notls;
        let pki = Pki::generate();
        let ctx = Context::new();
        let notifier = add_request_resources(&ctx);
        let base = cell.listen(&ctx, &pki).await;
        let echo = format!("{base}/echo");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body.bin");
        let out = dir.path().join("back.bin");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
        std::fs::write(&file, &body).unwrap();
        let (file, out) = (file.to_str().unwrap(), out.to_str().unwrap());

        let mut put = LibcoapProcess::spawn(
            &build.client(),
            ["-b", block, "-m", "put", "-f", file, echo.as_str()],
        );
        put.wait_exit(CLIENT_RUN).await;
        let errors = put.stderr();
        assert!(
            !errors.contains("4.") && !errors.contains("5."),
            "{}",
            put.report()
        );
        let mut get = LibcoapProcess::spawn(
            &build.client(),
            ["-b", block, "-m", "get", "-o", out, echo.as_str()],
        );
        get.wait_exit(CLIENT_RUN).await;
        let back = std::fs::read(out).unwrap_or_default();
        assert!(
            back == body,
            "{} bytes back of {}, not identical\n{}",
            back.len(),
            body.len(),
            get.report()
        );
        notifier.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_wise_100_kb_from_coap_client_notls_udp_b64() {
    coap_client_block_wise_put_then_get(Cell::Udp, "64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_wise_100_kb_from_coap_client_notls_udp_b1024() {
    coap_client_block_wise_put_then_get(Cell::Udp, "1024").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_wise_100_kb_from_coap_client_notls_tcp_b64() {
    coap_client_block_wise_put_then_get(Cell::Tcp, "64").await;
}

// ---- negative controls ----------------------------------------------------------------------

/// Our server suppresses its ping answers: the check the `coap_client_*` tests pass must fail,
/// and coap-client must log its keepalive failure.
async fn suppressed_answers_are_detected(build: Build, cell: Cell) {
    bounded(TEST_LIMIT, async {
        let pki = Pki::generate();
        let (client, pings, _server) =
            coap_client_pings_our_server(build, cell, &pki, PingDecision::Suppress).await;
        let log = client.log();
        assert!(
            log.contains("session disconnected (reason"),
            "coap-client did not log its keepalive failure\n{}",
            client.report()
        );
        let at: Vec<Instant> = pings.iter().map(|(at, _)| *at).collect();
        let verdict = check_coap_client_pings(cell, &at, &log);
        assert!(
            verdict.is_err(),
            "the keepalive check passed although no ping was answered\n{}",
            client.report()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_suppressed_answers_notls_udp() {
    suppressed_answers_are_detected(Build::Notls, Cell::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_suppressed_answers_notls_tcp() {
    suppressed_answers_are_detected(Build::Notls, Cell::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_suppressed_answers_openssl_dtls_psk() {
    suppressed_answers_are_detected(Build::Openssl, Cell::DtlsPsk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_suppressed_answers_gnutls_tls() {
    suppressed_answers_are_detected(Build::Gnutls, Cell::Tls).await;
}

/// coap-client is frozen after our server's first pong: our next ping goes unanswered, the
/// session fails with `TooManyRetries`, and the check of our pings fails.
async fn frozen_coap_client_is_detected(cell: Cell) {
    bounded(TEST_LIMIT, async {
        let build = Build::Notls;
        let pki = Pki::generate();
        let ctx = Context::new();
        let transmission = TransmissionParams::default()
            .with_ack_timeout(ms(100))
            .with_ack_random_factor(1.0)
            .with_max_retransmit(2);
        ctx.set_keepalive_config(
            KeepaliveConfig::default()
                .with_interval(Some(Duration::from_secs(1)))
                .with_transmission(transmission)
                .with_pong_timeout(OUR_PONG_TIMEOUT),
        )
        .unwrap();
        let mut registrations = add_slow_resource(&ctx);
        let mut pongs = record_pongs(&ctx);
        let mut nacks = record_nacks(&ctx);
        let uri = format!("{}/slow", cell.listen(&ctx, &pki).await);
        let client = coap_client(build, cell, &pki, &[], &uri);
        let session = registered(&mut registrations, &client).await;

        let first = tokio::time::timeout(Duration::from_secs(5), pongs.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no pong from coap-client\n{}", client.report()));
        client.freeze();
        let (_, reason) = tokio::time::timeout(Duration::from_secs(5), nacks.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("frozen coap-client not detected\n{}", client.report()));
        assert_eq!(reason, NackReason::TooManyRetries);
        let state = tokio::time::timeout(Duration::from_secs(2), session.closed())
            .await
            .expect("session not closed after its nack");
        assert_eq!(state, SessionState::Failed(NackReason::TooManyRetries));
        assert!(ctx.sessions().is_empty(), "failed session left in table");
        let mut all = vec![first];
        all.extend(drain(&mut pongs));
        assert!(
            check_our_pings(cell, &all, &client.log()).is_err(),
            "the check of our pings passed against a frozen coap-client"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frozen_coap_client_notls_udp() {
    frozen_coap_client_is_detected(Cell::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frozen_coap_client_notls_tcp() {
    frozen_coap_client_is_detected(Cell::Tcp).await;
}

#[test]
fn log_parser_reads_libcoap_4_3_1_lines() {
    // Lines as coap-client 4.3.1 writes them at -v 7. A payload is printed without a newline,
    // so the next line follows it directly; over OpenSSL's TLS no "sent" line precedes a PDU.
    let udp = "\
Nov 22 05:23:20.476 DEBG ** 127.0.0.1:49828 <-> 127.0.0.1:17683 UDP : mid=0xea01: removed 1
slowNov 22 05:23:21.476 DEBG *  127.0.0.1:49828 <-> 127.0.0.1:17683 UDP : sent 4 bytes
v:1 t:CON c:0.00 i:ea02 {} [ ]
Nov 22 05:23:21.476 DEBG ** 127.0.0.1:49828 <-> 127.0.0.1:17683 UDP : mid=0xea02: added to retransmit queue (2250ms)
Nov 22 05:23:21.477 DEBG *  127.0.0.1:49828 <-> 127.0.0.1:17683 UDP : received 4 bytes
v:1 t:RST c:0.00 i:ea02 {} [ ]
Nov 22 05:23:24.487 DEBG PDU presented by app
v:1 t:CON c:GET i:a49b {01} [ Observe:1, Uri-Port:17683, Uri-Path:slow ]
";
    assert_eq!(logged_pdus(udp).len(), 2, "{:?}", logged_pdus(udp));
    assert_eq!(
        count_pdus(udp, Direction::Sent, |p| is_ping(Cell::Udp, p)),
        1
    );
    let answers = count_pdus(udp, Direction::Received, |p| is_ping_answer(Cell::Udp, p));
    assert_eq!(answers, 1);

    let tls = "\
Nov 22 05:31:28.230 DEBG observation relationship established, set timeout to 4
slowv:1 t:CON c:Ping i:0000 {} [ ]
Nov 22 05:31:29.231 DEBG *  127.0.0.1:46663 <-> 127.0.0.1:44415 TLS : received 2 bytes
v:1 t:CON c:Pong i:0000 {} [ ]
v:1 t:CON c:Ping i:0000 {} [ ]
Nov 22 05:31:30.232 DEBG *  127.0.0.1:46663 <-> 127.0.0.1:44415 TLS : received 2 bytes
v:1 t:CON c:Pong i:0000 {} [ ]
";
    assert_eq!(
        count_pdus(tls, Direction::Sent, |p| is_ping(Cell::Tls, p)),
        2
    );
    let answers = count_pdus(tls, Direction::Received, |p| is_ping_answer(Cell::Tls, p));
    assert_eq!(answers, 2);
}
