//! A real Prometheus (Debian's `prometheus` package; `scripts/test` installs it) scrapes a
//! `serve --metrics` that carries sessions on all four transports, and its HTTP API reports
//! the same session gauges and ping counters as the session listing and serve's summary.
//!
//! Skipped, saying so, only when the `prometheus` binary is not installed. The Prometheus is
//! ours alone: on a free loopback port, scraping every second, its data in a temporary
//! directory; it is killed and the directory removed when the test ends, also on failure.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coap_keepalive::{Context, Request, Transport};
use serde_json::Value;
use support::http::{encode, get, get_ok};
use support::serve::FourTransportServe;

const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Dtls,
    Transport::Tcp,
    Transport::Tls,
];
/// Client sessions per transport.
const PER_TRANSPORT: usize = 2;

/// Our Prometheus: killed and reaped when dropped, its data directory removed after it.
struct Prometheus {
    child: Child,
    api: SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; waits until its API is ready.
    fn start(target: SocketAddr) -> Prometheus {
        let data = tempfile::tempdir().expect("temporary directory");
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: coap\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let api = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            api,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = get(api, "/-/ready") {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The instant vector of `query`: each series' labels and value.
    fn query(&self, query: &str) -> Vec<(HashMap<String, String>, f64)> {
        let body = get_ok(self.api, &format!("/api/v1/query?query={}", encode(query)));
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{body}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// `metric`'s value per transport (series without a transport label are left out).
    fn by_transport(&self, query: &str) -> HashMap<String, u64> {
        self.query(query)
            .into_iter()
            .filter_map(|(labels, value)| Some((labels.get("transport")?.clone(), value as u64)))
            .collect()
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn installed() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The listing's figures per transport: (established server sessions, pings sent, pings
/// received, pongs), from `/sessions`.
fn listing_figures(metrics: SocketAddr) -> HashMap<String, [u64; 4]> {
    let listing: Value = serde_json::from_str(&get_ok(metrics, "/sessions")).unwrap();
    let mut figures: HashMap<String, [u64; 4]> = HashMap::new();
    for s in listing["sessions"].as_array().unwrap() {
        let entry = figures
            .entry(s["transport"].as_str().unwrap().to_owned())
            .or_default();
        if s["state"] == "established" && s["role"] == "server" {
            entry[0] += 1;
        }
        entry[1] += s["pings_sent"].as_u64().unwrap();
        entry[2] += s["pings_received"].as_u64().unwrap();
        entry[3] += s["pongs"].as_u64().unwrap();
    }
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_figures_the_listing_and_the_summary_report() {
    if !installed() {
        eprintln!(
            "SKIPPED: the prometheus binary is not installed (scripts/test installs Debian's \
             prometheus package; it could not be installed here)"
        );
        return;
    }
    // The server pings each idle client every second.
    let mut serve = FourTransportServe::start(&["-K", "1", "-q"]);
    let ctx = Context::new();
    let mut sessions = Vec::new();
    for transport in TRANSPORTS {
        for _ in 0..PER_TRANSPORT {
            sessions.push(serve.connect(&ctx, transport).await);
        }
    }
    // Each client pings three times; then stays quiet, so that the server pings it.
    for session in &sessions {
        for _ in 0..3 {
            session.ping().await.expect("pong");
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Freeze the ping counters: a request every 200 ms keeps every session busy, so the
    // server has no idle one to ping, and the clients (keepalive off) ping nothing.
    let busy: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| {
            tokio::spawn(async move {
                loop {
                    let _ = session.request(Request::get("time")).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    // A ping out when the requests began is answered within a second: then nothing moves.
    let mut listing = listing_figures(serve.metrics);
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let again = listing_figures(serve.metrics);
        if again == listing {
            break;
        }
        assert!(
            Instant::now() < settle,
            "the ping counters kept moving: {again:?}"
        );
        listing = again;
    }
    for transport in TRANSPORTS {
        let [established, sent, received, _] = listing[transport.name()];
        assert_eq!(
            established, PER_TRANSPORT as u64,
            "{transport}: {listing:?}"
        );
        assert!(
            sent >= PER_TRANSPORT as u64,
            "{transport}: the server pinged: {listing:?}"
        );
        assert!(
            received >= 3 * PER_TRANSPORT as u64,
            "{transport}: {listing:?}"
        );
    }

    let prometheus = Prometheus::start(serve.metrics);
    // Wait for a scrape taken after the counters froze.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected_sent: HashMap<String, u64> =
        listing.iter().map(|(t, f)| (t.clone(), f[1])).collect();
    loop {
        let sent = prometheus.by_transport("coap_pings_sent_total{job=\"coap\"}");
        if sent == expected_sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus saw {sent:?}, the listing {expected_sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = prometheus.query("up{job=\"coap\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0, "the target is up");
    let established = prometheus
        .by_transport("coap_sessions{job=\"coap\",role=\"server\",state=\"established\"}");
    let received = prometheus.by_transport("coap_peer_pings_received_total{job=\"coap\"}");
    let pongs = prometheus.by_transport("coap_pongs_received_total{job=\"coap\"}");
    for transport in TRANSPORTS {
        let name = transport.name();
        let [sessions, _, pings_received, pongs_listed] = listing[name];
        assert_eq!(established[name], sessions, "{name} sessions");
        assert_eq!(received[name], pings_received, "{name} pings received");
        assert_eq!(pongs[name], pongs_listed, "{name} pongs");
    }
    // Every family is there with its base-unit name.
    for family in [
        "coap_ping_rtt_seconds_bucket",
        "coap_nacks_total",
        "coap_requests_total",
        "coap_received_bytes_total",
        "coap_sent_bytes_total",
        "coap_handshakes_total",
        "coap_session_limit_total",
    ] {
        assert!(!prometheus.query(family).is_empty(), "{family} scraped");
    }
    let handshakes = prometheus.by_transport("coap_handshakes_total");
    assert_eq!(handshakes["dtls"], PER_TRANSPORT as u64);
    assert_eq!(handshakes["tls"], PER_TRANSPORT as u64);

    // serve's exit summary tells the same totals.
    serve.process.interrupt();
    let output = serve.process.wait(Duration::from_secs(15));
    for task in busy {
        task.abort();
    }
    let text = support::cli::text(&output);
    let summary = support::cli::lines(&output)
        .into_iter()
        .find(|l| l.starts_with("served "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let total = |m: &HashMap<String, u64>| m.values().sum::<u64>();
    let expected = format!(
        "{} pings received, {} pings sent, {} pongs, 0 failed",
        total(&received),
        total(&expected_sent),
        total(&pongs)
    );
    assert!(
        summary.ends_with(&expected),
        "{summary}\nwanted ...{expected}"
    );
    assert!(
        summary.starts_with(&format!("served {} sessions", 4 * PER_TRANSPORT)),
        "{summary}"
    );
    drop(prometheus);
    ctx.shutdown().await;
}
