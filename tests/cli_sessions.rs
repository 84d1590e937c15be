//! `coap-keepalive sessions ADDR` against a `serve --metrics` holding 100 sessions over the
//! four transports, 30 of which failed (their clients stopped answering the server's pings):
//! the table lists every one with its state and reason, and the filters pick by transport and
//! state.

mod support;

use std::time::{Duration, Instant};

use coap_keepalive::{Context, PingDecision, Transport};
use serde_json::Value;
use support::cli::{lines, run, text};
use support::http::get_ok;
use support::serve::FourTransportServe;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_a_hundred_sessions_of_four_transports_some_failed() {
    // The server pings every client half a second idle, and gives up on a silent one fast.
    let serve = FourTransportServe::start(&[
        "-q",
        "-K",
        "0.5",
        "--ack-timeout",
        "0.1",
        "--max-retransmit",
        "0",
        "--pong-timeout",
        "0.3",
    ]);
    let answering = Context::new();
    let silent = Context::new();
    silent.register_ping_handler(|_, _| PingDecision::Suppress);
    let mut kept = Vec::new();
    for (ctx, transport, n) in [
        (&answering, Transport::Udp, 20),
        (&answering, Transport::Dtls, 15),
        (&answering, Transport::Tcp, 20),
        (&answering, Transport::Tls, 15),
        (&silent, Transport::Udp, 15),
        (&silent, Transport::Tcp, 15),
    ] {
        for _ in 0..n {
            let session = serve.connect(ctx, transport).await;
            // A UDP server has a session only for a peer that sent it something.
            session.ping().await.expect("pong");
            kept.push(session);
        }
    }
    let metrics = serve.metrics.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listing: Value = serde_json::from_str(&get_ok(serve.metrics, "/sessions")).unwrap();
        let states: Vec<&str> = listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        let failed = states.iter().filter(|s| **s == "failed").count();
        let established = states.iter().filter(|s| **s == "established").count();
        if failed == 30 && established == 70 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{established} established, {failed} failed of {}",
            states.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let output = run(&["sessions", &metrics], Duration::from_secs(10));
    assert!(output.status.success(), "{}", text(&output));
    let rows = lines(&output);
    assert!(
        rows[0].starts_with("ID "),
        "a header first: {}",
        text(&output)
    );
    assert_eq!(
        rows.last().unwrap(),
        "100 sessions (70 established, 30 failed)",
        "{}",
        text(&output)
    );
    let body = &rows[1..rows.len() - 1];
    assert_eq!(body.len(), 100);
    for transport in ["udp", "dtls", "tcp", "tls"] {
        assert!(body
            .iter()
            .any(|r| r.split_whitespace().nth(1) == Some(transport)));
    }
    let failed: Vec<&String> = body.iter().filter(|r| r.contains("failed:")).collect();
    assert_eq!(failed.len(), 30);
    assert!(
        failed.iter().all(|r| r.contains("failed:too_many_retries")),
        "{failed:?}"
    );

    let output = run(
        &["sessions", &metrics, "-t", "udp", "-s", "failed"],
        Duration::from_secs(10),
    );
    let rows = lines(&output);
    assert_eq!(
        rows.last().unwrap(),
        "15 sessions (15 failed)",
        "{}",
        text(&output)
    );
    let output = run(
        &["sessions", &metrics, "-t", "dtls", "-t", "tls", "--json"],
        Duration::from_secs(10),
    );
    let listing: Value = serde_json::from_str(&lines(&output)[0]).unwrap();
    let sessions = listing["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 30);
    for s in sessions {
        assert_eq!(s["state"], "established");
        assert_eq!(s["role"], "server");
        for field in [
            "peer",
            "local",
            "idle_s",
            "pings_sent",
            "pongs",
            "retransmissions",
            "failures",
            "observations",
        ] {
            assert!(!s[field].is_null(), "{field} in {s}");
        }
    }

    // A listener that is not there is a failure, said on stderr.
    let output = run(&["sessions", "127.0.0.1:1"], Duration::from_secs(10));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
    drop(kept);
    answering.shutdown().await;
    silent.shutdown().await;
}
