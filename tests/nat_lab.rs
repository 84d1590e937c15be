//! Keepalive through a real Linux NAT: `scripts/natlab` builds a client namespace, a router that
//! masquerades with nftables (random source ports, as carrier NATs) and forgets idle bindings
//! after the conntrack timeouts a test sets, and a server namespace; `coap-keepalive` runs on
//! both sides. What keepalive is for, shown on the wire through that NAT:
//!
//! - an interval below the binding timeout keeps the server's notifications and pings reaching
//!   the client; without it they are lost;
//! - a server pinging above the binding timeout declares the client dead within its configured
//!   bound, and the client, on its next ping, shows up as a new session on a new mapped port
//!   (the old one does not stay behind);
//! - an observation whose notifications stopped coming registers again (RFC 7641 §3.3.1) and
//!   is restored on the new binding.
//!
//! The tests need root, iproute2 and nftables (scripts/test installs it) and print why they are
//! skipped where namespaces cannot be made. Every address lives inside the lab's namespaces,
//! which each test removes again, also when it fails (`Lab`'s drop).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cli::{Running, BIN};

/// The server's address inside the lab; clients appear to it as the router, 10.200.2.1:PORT.
const SERVER: &str = "10.200.2.2";
const ROUTER: &str = "10.200.2.1";

/// One lab: three namespaces named after the test process and a counter.
struct Lab {
    name: String,
}

impl Lab {
    /// Builds a lab whose NAT forgets idle UDP bindings after `udp` seconds and idle TCP ones
    /// after `tcp`. `None`, with the reason printed, where this machine cannot make one.
    fn up(udp: u32, tcp: u32) -> Option<Lab> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        if let Some(why) = cannot_build_labs() {
            eprintln!("nat_lab: skipped: {why}");
            return None;
        }
        let name = format!(
            "kl{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab { name };
        let status = lab
            .script(&[
                "up",
                &lab.name,
                "--udp-timeout",
                &udp.to_string(),
                "--tcp-timeout",
                &tcp.to_string(),
            ])
            .status()
            .expect("run scripts/natlab");
        assert!(status.success(), "scripts/natlab up {} failed", lab.name);
        Some(lab)
    }

    fn script(&self, args: &[&str]) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/natlab");
        let mut command = Command::new(script);
        command.args(args);
        command
    }

    /// `coap-keepalive ARGS` in the server namespace.
    fn server(&self, args: &[&str]) -> Running {
        self.run_in(&format!("{}-s", self.name), args)
    }

    /// `coap-keepalive ARGS` in the client namespace.
    fn client(&self, args: &[&str]) -> Running {
        self.run_in(&format!("{}-c", self.name), args)
    }

    fn run_in(&self, namespace: &str, args: &[&str]) -> Running {
        let mut all = vec!["netns", "exec", namespace, BIN];
        all.extend_from_slice(args);
        Running::spawn_program(Path::new("ip"), &all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script(&["down", &self.name]).status();
    }
}

/// Why no lab can be built here, if so.
fn cannot_build_labs() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/test installs nftables)"
            ));
        }
    }
    None
}

/// The mapped client ports `serve` printed "session established" for, in order.
fn established_ports(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("session established"))
        .filter_map(|l| port_of(l))
        .collect()
}

/// The port of the first `10.200.2.1:PORT` in a line of `serve`.
fn port_of(line: &str) -> Option<String> {
    let at = line.find(&format!("{ROUTER}:"))? + ROUTER.len() + 1;
    let port: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!port.is_empty()).then_some(port)
}

/// `--reconnect` with waits short enough for the lab: up to 0.2 s, then 0.4 s, capped at 1 s.
const FAST_RECONNECT: [&str; 5] = [
    "--reconnect",
    "--reconnect-base",
    "0.2",
    "--reconnect-cap",
    "1",
];

/// Asserts that `serve` saw exactly two sessions, on two mapped ports, and that `dead` (its
/// line declaring a session failed) was about the first: the client came back through a new
/// binding, and the old session did not stay behind.
fn assert_new_session_on_new_port(server: &mut Running, dead: &str) {
    let ports = established_ports(server.seen());
    assert!(
        ports.len() == 2 && ports[0] != ports[1],
        "the reconnection is a new session on a new port: {:?}",
        server.seen()
    );
    assert_eq!(port_of(dead), Some(ports[0].clone()));
}

/// `serve --tls ADDR` with certs/'s server certificate, and `extra` flags.
fn serve_tls(lab: &Lab, extra: &[&str]) -> Running {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let tls = format!("{SERVER}:5684");
    let mut args = vec![
        "serve",
        "--tls",
        &tls,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lab.server(&args)
}

/// Waits for serve's "serving" line, so that clients start against a listening server.
fn serving(server: &mut Running) {
    server.wait_line(Duration::from_secs(10), |l| l.starts_with("serving"));
}

// ---- UDP ------------------------------------------------------------------------------------

/// Bindings live 3 s; notifications come every 4 s. The client's own pings every second keep
/// its binding, so every notification gets through, over one session.
#[test]
fn udp_client_keepalive_below_the_binding_timeout_keeps_notifications_coming() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let udp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--udp", &udp, "--notify-every", "4"]);
    serving(&mut server);
    let uri = format!("coap://{SERVER}/time");
    let started = Instant::now();
    let mut client = lab.client(&["observe", "-K", "1", "-c", "3", "-s", "30", &uri]);
    let output = client.wait(Duration::from_secs(40));
    let took = started.elapsed();
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(
        support::cli::lines(&output)
            .iter()
            .filter(|l| l.starts_with("notification"))
            .count(),
        3,
        "{text}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}: {text}");
    let ports = established_ports(server.seen());
    assert_eq!(
        ports.len(),
        1,
        "one session throughout: {:?}",
        server.seen()
    );
}

/// The same without keepalive: the binding dies 3 s after the registration and the (NON)
/// notification at 4 s is lost. The observation comes back only when the client, its
/// representation stale (Max-Age 5 s, RFC 7641 §3.3.1), registers again, through a new
/// binding: the server sees a new session on a new port. (The old one, without a keepalive of
/// the server's, lingers there until its idle timeout: the next test is about that.)
#[test]
fn udp_without_keepalive_notifications_are_lost_until_the_observation_registers_again() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let udp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--udp", &udp, "--notify-every", "4"]);
    serving(&mut server);
    let uri = format!("coap://{SERVER}/time");
    let started = Instant::now();
    let mut client = lab.client(&["observe", "-c", "1", "-s", "30", &uri]);
    let output = client.wait(Duration::from_secs(40));
    let took = started.elapsed();
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    // The first notification to arrive is the answer to the re-registration, 5 + 2 s after
    // the first response: the one at 4 s was lost.
    assert!(
        took >= Duration::from_secs(6),
        "a notification arrived after {took:?}, before the binding could have been renewed: {text}"
    );
    server.wait_line(Duration::from_secs(5), |l| {
        l.contains("session established") && established_ports(&[l.to_owned()]).len() == 1
    });
    let ports = established_ports(server.seen());
    assert!(
        ports.len() >= 2 && ports[0] != ports[1],
        "a new session on a new port: {:?}",
        server.seen()
    );
}

/// Bindings live 3 s and the client pings only every 7 s; the server pings after 4 idle
/// seconds, into a binding that is gone. With ACK_TIMEOUT 0.5 s and 2 retransmissions it
/// declares the client dead ("too many retries") a few seconds later, and the client's next
/// ping arrives through a new binding as a new session. The client's every ping is answered.
#[test]
fn udp_server_keepalive_above_the_binding_timeout_declares_the_client_dead() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let udp = format!("{SERVER}:5683");
    let mut server = lab.server(&[
        "serve",
        "--udp",
        &udp,
        "-K",
        "4",
        "--ack-timeout",
        "0.5",
        "--max-retransmit",
        "2",
    ]);
    serving(&mut server);
    let uri = format!("coap://{SERVER}");
    let started = Instant::now();
    let mut client = lab.client(&["ping", "-i", "7", "-c", "3", &uri]);
    let dead = server.wait_line(Duration::from_secs(20), |l| {
        l.contains("session failed") && l.contains("too many retries")
    });
    let declared = started.elapsed();
    let output = client.wait(Duration::from_secs(30));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "every ping answered: {text}");
    assert!(text.contains("3 pings sent, 3 pongs received"), "{text}");
    // Idle 4 s, then 0.5 + 1 + 2 s of retransmissions: dead by about 7.5 s.
    assert!(
        declared < Duration::from_secs(11),
        "declared dead after {declared:?}"
    );
    let ports = established_ports(server.seen());
    assert!(ports.len() >= 2, "{:?}", server.seen());
    assert_eq!(port_of(&dead), Some(ports[0].clone()));
    assert!(
        ports[1..].iter().all(|p| *p != ports[0]),
        "new sessions on new ports: {ports:?}"
    );
}

// ---- TCP ------------------------------------------------------------------------------------

/// TCP bindings live 3 s; notifications come every 5 s and the client sends nothing. The
/// server's own pings after 2 idle seconds keep the binding, and both notifications arrive.
#[test]
fn tcp_server_keepalive_below_the_binding_timeout_keeps_notifications_coming() {
    let Some(lab) = Lab::up(30, 3) else { return };
    let tcp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--tcp", &tcp, "-K", "2", "--notify-every", "5"]);
    serving(&mut server);
    let uri = format!("coap+tcp://{SERVER}/time");
    let mut client = lab.client(&["observe", "-c", "2", "-s", "30", &uri]);
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    let pongs = server
        .seen()
        .iter()
        .filter(|l| l.contains("pong in"))
        .count();
    assert!(
        pongs >= 2,
        "the server's pings were answered: {:?}",
        server.seen()
    );
    assert_eq!(established_ports(server.seen()).len(), 1);
}

/// TCP bindings live 3 s, the server pings after 5 idle seconds with a pong timeout of 1 s:
/// its Ping goes into a binding that is gone, and it declares the client dead. The client's
/// next ping, 10 s on, reaches the server through a new binding on another port, where no
/// connection exists: the server resets it. With `--reconnect` the client connects again
/// (a new session on a new port at the server) and its last ping is answered there.
#[test]
fn tcp_server_keepalive_above_the_binding_timeout_declares_the_client_dead_and_it_reconnects() {
    let Some(lab) = Lab::up(30, 3) else { return };
    let tcp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--tcp", &tcp, "-K", "5", "--pong-timeout", "1"]);
    serving(&mut server);
    let uri = format!("coap+tcp://{SERVER}");
    let started = Instant::now();
    let mut client = lab.client(
        &[
            &["ping", "-i", "10", "-c", "3"][..],
            &FAST_RECONNECT,
            &[&uri],
        ]
        .concat(),
    );
    let dead = server.wait_line(Duration::from_secs(20), |l| l.contains("session failed"));
    let declared = started.elapsed();
    assert!(
        declared < Duration::from_secs(9),
        "declared dead after {declared:?}: {dead}"
    );
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    assert!(text.contains("reconnected to"), "{text}");
    assert!(
        text.contains("3 pings sent, 2 pongs received"),
        "the first and the last answered, the one that met the reset not: {text}"
    );
    assert_new_session_on_new_port(&mut server, &dead);
}

// ---- DTLS and TLS ---------------------------------------------------------------------------

/// DTLS through the NAT, bindings 3 s: the server pings after 4 idle s into a dead binding and
/// declares the client dead; the client's next ping goes out through a new binding, where the
/// server knows no DTLS connection and drops its records, so it goes unanswered, the client's
/// keepalive fails it, and `--reconnect` makes a new handshake: a new session, on a new port,
/// whose ping is answered.
#[test]
fn dtls_through_a_nat_the_dead_client_is_declared_and_it_reconnects() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let dtls = format!("{SERVER}:5684");
    let mut server = lab.server(&[
        "serve",
        "--dtls",
        &dtls,
        "--psk-key",
        "lab-secret",
        "-K",
        "4",
        "--ack-timeout",
        "0.5",
        "--max-retransmit",
        "2",
    ]);
    serving(&mut server);
    let uri = format!("coaps://{SERVER}");
    let mut client = lab.client(
        &[
            &[
                "ping",
                "-i",
                "7",
                "-c",
                "3",
                "--psk-identity",
                "lab",
                "--psk-key",
                "lab-secret",
                "--ack-timeout",
                "0.5",
                "--max-retransmit",
                "2",
            ][..],
            &FAST_RECONNECT,
            &[&uri],
        ]
        .concat(),
    );
    let dead = server.wait_line(Duration::from_secs(20), |l| {
        l.contains("session failed") && l.contains("too many retries")
    });
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    assert!(text.contains("reconnected to"), "{text}");
    assert!(text.contains("3 pings sent, 2 pongs received"), "{text}");
    assert_new_session_on_new_port(&mut server, &dead);
}

/// TLS through the NAT with the client pinging every second, bindings 3 s: the connection
/// lives on, and the server's pings after 2 idle seconds are answered, over one session.
#[test]
fn tls_client_keepalive_below_the_binding_timeout_keeps_the_connection() {
    let Some(lab) = Lab::up(30, 3) else { return };
    let mut server = serve_tls(&lab, &["-K", "5"]);
    serving(&mut server);
    let uri = format!("coaps+tcp://{SERVER}");
    // certs/ names localhost, not the lab's address: the client skips verification (and says
    // so); the handshake is otherwise the real one.
    let mut client = lab.client(&["ping", "-i", "1", "-c", "8", "--insecure", &uri]);
    let output = client.wait(Duration::from_secs(30));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("8 pings sent, 8 pongs received"), "{text}");
    assert_eq!(
        established_ports(server.seen()).len(),
        1,
        "{:?}",
        server.seen()
    );
}

// ---- the adaptive interval ------------------------------------------------------------------

/// Bindings live 5 s. `ping --adaptive 1..16` probes from a second socket (1, 2, 4 s arrive,
/// 8 s is lost, then the gap is halved) and settles on a lifetime between 4 and 5 s; the real
/// session then pings at 80 % of it, and every ping is answered over one binding.
#[test]
fn udp_adaptive_interval_finds_the_binding_timeout_and_keeps_it() {
    let Some(lab) = Lab::up(5, 300) else { return };
    let udp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--udp", &udp]);
    serving(&mut server);
    let uri = format!("coap://{SERVER}");
    let started = Instant::now();
    let mut client = lab.client(&["ping", &uri, "--adaptive", "1..16", "-i", "2"]);
    let settled = client.wait_line(Duration::from_secs(90), |l| {
        l.starts_with("adaptive: settled")
    });
    let found = Instant::now() - started;
    let lifetime: f64 = settled
        .split("lifetime ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no lifetime in {settled:?}"));
    assert!(
        (4.0..=5.0).contains(&lifetime),
        "the binding lives 5 s; found {lifetime} s: {settled}"
    );
    println!("{settled} after {found:?}");
    // Then the session's own pings, at 80 % of it, all answered.
    let interval = client.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("adaptive: keepalive interval")
    });
    let pongs_before = client
        .seen()
        .iter()
        .filter(|l| l.starts_with("pong"))
        .count();
    std::thread::sleep(Duration::from_secs(12));
    let pongs = client
        .seen()
        .iter()
        .filter(|l| l.starts_with("pong"))
        .count()
        - pongs_before;
    assert!(
        pongs >= 2,
        "{interval}; {pongs} pongs in 12 s: {:?}",
        client.seen()
    );
    assert!(
        !client
            .seen()
            .iter()
            .any(|l| l.contains("no answer") || l.contains("failed")),
        "{:?}",
        client.seen()
    );
    client.interrupt();
    let output = client.wait(Duration::from_secs(10));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
}

/// Bindings live 3 s and notifications come every 4 s (Max-Age 5 s): only the client's own
/// keepalive can keep the binding. `observe --adaptive 1..8 -K 15` starts at the fixed 15 s,
/// finds the lifetime and pings at 80 % of it; from then on no notification is missed (the
/// server's Observe numbers arrive without a gap).
#[test]
fn udp_observe_with_the_adaptive_interval_misses_no_notification_in_steady_state() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let udp = format!("{SERVER}:5683");
    let mut server = lab.server(&["serve", "--udp", &udp, "--notify-every", "4", "-q"]);
    serving(&mut server);
    let uri = format!("coap://{SERVER}/time");
    let mut client = lab.client(&[
        "observe",
        &uri,
        "--adaptive",
        "1..8",
        "-K",
        "15",
        "-s",
        "55",
    ]);
    let output = client.wait(Duration::from_secs(70));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    let lines = support::cli::lines(&output);
    let settled_at = lines
        .iter()
        .position(|l| l.starts_with("(adaptive: settled"))
        .unwrap_or_else(|| panic!("never settled: {text}"));
    // The Observe numbers of the notifications after the search settled.
    let numbers: Vec<u32> = lines[settled_at..]
        .iter()
        .filter(|l| l.starts_with("notification"))
        .filter_map(|l| {
            l.split("(observe ")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        })
        .collect();
    assert!(
        numbers.len() >= 3,
        "{} notifications after settling: {text}",
        numbers.len()
    );
    let missed: u32 = numbers.windows(2).map(|w| w[1] - w[0] - 1).sum();
    println!(
        "{}; {} notifications in steady state, {missed} missed",
        lines[settled_at],
        numbers.len()
    );
    assert_eq!(missed, 0, "notifications missed in steady state: {text}");
}

/// DTLS bindings live 3 s, notifications come every 4 s: the client's pings every second keep
/// the binding, and the notifications arrive over one session.
#[test]
fn dtls_client_keepalive_below_the_binding_timeout_keeps_notifications_coming() {
    let Some(lab) = Lab::up(3, 300) else { return };
    let dtls = format!("{SERVER}:5684");
    let mut server = lab.server(&[
        "serve",
        "--dtls",
        &dtls,
        "--psk-key",
        "lab-secret",
        "--notify-every",
        "4",
    ]);
    serving(&mut server);
    let uri = format!("coaps://{SERVER}/time");
    let mut client = lab.client(&[
        "observe",
        "-K",
        "1",
        "-c",
        "3",
        "-s",
        "30",
        "--psk-identity",
        "lab",
        "--psk-key",
        "lab-secret",
        &uri,
    ]);
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("the first response and 3 notifications"),
        "{text}"
    );
    assert_eq!(
        established_ports(server.seen()).len(),
        1,
        "{:?}",
        server.seen()
    );
}

/// TLS bindings live 3 s and the server pings after 5 idle seconds (pong timeout 1 s): it
/// declares the client dead, the client's next ping meets a reset through a new binding, and
/// `--reconnect` makes a new handshake, a new session on a new port, whose ping is answered.
#[test]
fn tls_server_keepalive_above_the_binding_timeout_declares_the_client_dead_and_it_reconnects() {
    let Some(lab) = Lab::up(30, 3) else { return };
    let mut server = serve_tls(&lab, &["-K", "5", "--pong-timeout", "1"]);
    serving(&mut server);
    let uri = format!("coaps+tcp://{SERVER}");
    let mut client = lab.client(
        &[
            &["ping", "-i", "10", "-c", "3", "--insecure"][..],
            &FAST_RECONNECT,
            &[&uri],
        ]
        .concat(),
    );
    let dead = server.wait_line(Duration::from_secs(20), |l| l.contains("session failed"));
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    assert!(text.contains("reconnected to"), "{text}");
    assert!(text.contains("3 pings sent, 2 pongs received"), "{text}");
    assert_new_session_on_new_port(&mut server, &dead);
}

/// TCP bindings live 3 s; the client observes without a keepalive of its own, and the server,
/// pinging after 5 s, declares it dead. When the client's representation goes stale it
/// registers again on its old connection, meets a reset through a new binding, and
/// `--reconnect` brings the observation back on a new session, where notifications come.
#[test]
fn tcp_observation_is_restored_on_a_new_connection_after_the_binding_died() {
    let Some(lab) = Lab::up(30, 3) else { return };
    let tcp = format!("{SERVER}:5683");
    let mut server = lab.server(&[
        "serve",
        "--tcp",
        &tcp,
        "-K",
        "5",
        "--pong-timeout",
        "1",
        "--notify-every",
        "4",
    ]);
    serving(&mut server);
    let uri = format!("coap+tcp://{SERVER}/time");
    let mut client = lab.client(&[&["observe"][..], &FAST_RECONNECT, &["-s", "25", &uri]].concat());
    let output = client.wait(Duration::from_secs(40));
    let text = support::cli::text(&output);
    let lines = support::cli::lines(&output);
    let back = lines
        .iter()
        .position(|l| l.contains("reconnected to") && l.contains("1 observation restored"))
        .unwrap_or_else(|| panic!("no reconnection with the observation: {text}"));
    assert!(
        lines[back..].iter().any(|l| l.starts_with("notification")),
        "a notification on the new session: {text}"
    );
    let ports = established_ports(server.seen());
    assert!(
        ports.len() >= 2 && ports[0] != ports[1],
        "{:?}",
        server.seen()
    );
}
