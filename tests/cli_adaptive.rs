//! `coap-keepalive ping --adaptive MIN..MAX` against `coap-keepalive serve`, which answers
//! keepalive probes by default: on loopback (no NAT) every probe-back arrives, so the search
//! settles at the maximum and prints each step; `serve --no-keepalive-probe` makes the client
//! fall back to the fixed interval.

mod support;

use std::time::Duration;

use support::cli::{lines, text, Running};

const LIMIT: Duration = Duration::from_secs(20);

/// Starts `serve` on a loopback UDP port with `extra` flags; returns it and its URI.
fn serve(extra: &[&str]) -> (Running, String) {
    let mut args = vec!["serve", "--udp", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut server = Running::spawn(&args);
    let line = server.wait_line(LIMIT, |l| l.starts_with("serving coap://"));
    let uri = line.split_whitespace().nth(1).unwrap().to_string();
    (server, uri)
}

#[test]
fn ping_adaptive_settles_against_serve_and_prints_the_interval() {
    let (mut server, uri) = serve(&[]);
    assert!(
        server
            .seen()
            .iter()
            .any(|l| l == "answering keepalive probes at /.well-known/keepalive-probe")
            || server
                .wait_line(LIMIT, |l| l.starts_with("answering keepalive probes"))
                .contains("keepalive-probe")
    );
    let mut client = Running::spawn(&[
        "ping",
        &uri,
        "--adaptive",
        "0.05..0.2",
        "--probe-grace",
        "0.1",
        "-i",
        "0.1",
        "-w",
        "2",
    ]);
    let output = client.wait(LIMIT);
    let all = lines(&output);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        all[0].starts_with("ADAPTIVE PING coap://"),
        "{}",
        text(&output)
    );
    for step in [
        "adaptive: probe sent (0.050 s)",
        "adaptive: probe-back arrived (0.050 s)",
        "adaptive: probe sent (0.200 s)",
        "adaptive: settled: lifetime 0.200 s, interval 0.160 s, 3 probes",
        "adaptive: keepalive interval 0.160 s",
    ] {
        assert!(
            all.iter().any(|l| l == step),
            "no {step:?} in\n{}",
            text(&output)
        );
    }
    assert!(
        all.iter().any(|l| l.starts_with("pong from ")),
        "{}",
        text(&output)
    );
    assert!(
        all.iter()
            .any(|l| l
                == "settled: lifetime 0.200 s, interval 0.160 s, 3 probes (3 sent, 3 arrived)"),
        "{}",
        text(&output)
    );
    server.interrupt();
    server.wait(LIMIT);
}

#[test]
fn ping_adaptive_falls_back_against_serve_without_probes() {
    let (mut server, uri) = serve(&["--no-keepalive-probe"]);
    let output = Running::spawn(&[
        "ping",
        &uri,
        "--adaptive",
        "0.05..0.2",
        "-i",
        "0.1",
        "-w",
        "1",
    ])
    .wait(LIMIT);
    let all = lines(&output);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        all.iter()
            .any(|l| l == "adaptive: fallback: the server offers no keepalive probes"),
        "{}",
        text(&output)
    );
    assert!(
        all.iter()
            .any(|l| l.starts_with("fallback: fixed interval, interval 0.100 s")),
        "{}",
        text(&output)
    );
    server.interrupt();
    server.wait(LIMIT);
}

#[test]
fn ping_adaptive_refuses_other_transports_and_bad_ranges() {
    let output =
        Running::spawn(&["ping", "coap+tcp://127.0.0.1:1", "--adaptive", "5..60"]).wait(LIMIT);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("--adaptive applies to coap:// only"),
        "{}",
        text(&output)
    );
    let output = Running::spawn(&[
        "ping",
        "coap://127.0.0.1:1",
        "--adaptive",
        "5..60",
        "--reconnect",
    ])
    .wait(LIMIT);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("not supported yet"),
        "{}",
        text(&output)
    );
    for bad in ["60..5", "5", "0..5", "a..b"] {
        let output = Running::spawn(&["ping", "coap://127.0.0.1:1", "--adaptive", bad]).wait(LIMIT);
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", text(&output));
    }
}

#[test]
fn ping_adaptive_json_prints_one_object_per_step() {
    let (mut server, uri) = serve(&[]);
    let output = Running::spawn(&[
        "ping",
        &uri,
        "--adaptive",
        "0.05..0.1",
        "--probe-grace",
        "0.1",
        "-i",
        "0.1",
        "-w",
        "1",
        "--json",
    ])
    .wait(LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let objects: Vec<serde_json::Value> = lines(&output)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let named = |name: &str| objects.iter().find(|o| o["event"] == name).cloned();
    assert_eq!(named("adaptive_start").unwrap()["min_s"], 0.05);
    assert_eq!(named("adaptive_probe_sent").unwrap()["delay_ms"], 50.0);
    let settled = named("adaptive_settled").expect("settled");
    assert_eq!(settled["lifetime_ms"], 100.0);
    assert_eq!(settled["interval_ms"], 80.0);
    assert_eq!(settled["probes"], 2);
    let summary = named("adaptive_summary").expect("summary");
    assert_eq!(summary["state"], "settled");
    assert_eq!(summary["interval_ms"], 80.0);
    assert_eq!(summary["probes_arrived"], 2);
    server.interrupt();
    server.wait(LIMIT);
}
