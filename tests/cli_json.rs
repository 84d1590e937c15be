//! `--json` output of `ping` and `serve`, parsed as scripts would: one object per event with
//! the documented fields (README, *JSON output*), one for the summary; and bad values of the
//! keepalive and transmission flags refused with a message naming the flag.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::Value;
use support::cli::{lines, run, text, Running};

fn objects(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn ping_and_serve_print_one_json_object_per_event() {
    let mut serve = Running::spawn(&[
        "serve",
        "--udp",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--json",
    ]);
    let mut uris = Vec::new();
    for transport in ["udp", "tcp"] {
        let line = serve.wait_line(Duration::from_secs(10), |l| {
            l.contains("\"listening\"") && l.contains(&format!("\"transport\":\"{transport}\""))
        });
        let event: Value = serde_json::from_str(&line).unwrap();
        uris.push(event["uri"].as_str().unwrap().to_owned());
    }
    for uri in &uris {
        let output = run(
            &["ping", uri, "-c", "3", "-i", "0.05", "--json"],
            Duration::from_secs(20),
        );
        assert!(output.status.success(), "{}", text(&output));
        let events = objects(&lines(&output));
        assert_eq!(events[0]["event"], "start");
        assert_eq!(events[0]["uri"], uri.as_str());
        let pongs: Vec<&Value> = events.iter().filter(|e| e["event"] == "pong").collect();
        assert_eq!(pongs.len(), 3, "{events:?}");
        for (i, pong) in pongs.iter().enumerate() {
            assert_eq!(pong["seq"], i as u64 + 1);
            assert!(pong["rtt_ms"].as_f64().unwrap() >= 0.0);
            assert!(pong["time_s"].is_number());
            assert!(pong["peer"].is_string());
        }
        let summary = events.last().unwrap();
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["sent"], 3);
        assert_eq!(summary["received"], 3);
        assert_eq!(summary["loss_percent"], 0.0);
        assert!(summary["failed"].is_null());
        for field in [
            "rtt_min_ms",
            "rtt_avg_ms",
            "rtt_max_ms",
            "rtt_mdev_ms",
            "retransmissions",
        ] {
            assert!(summary[field].is_number(), "{field}: {summary}");
        }
    }
    serve.interrupt();
    let output = serve.wait(Duration::from_secs(10));
    let events = objects(&lines(&output));
    let received: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "ping_received")
        .collect();
    assert_eq!(received.len(), 6, "{}", text(&output));
    for event in &received {
        assert_eq!(event["answered"], true);
        assert_eq!(event["role"], "server");
        assert!(event["session"].is_u64() && event["peer"].is_string());
    }
    assert!(events
        .iter()
        .any(|e| e["event"] == "established" && e["transport"] == "tcp"));
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["sessions_served"], 2);
    assert_eq!(summary["pings_received"], 6);
    assert_eq!(summary["failed"], 0);
}

#[test]
fn a_ping_nobody_answers_ends_in_a_json_nack() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("coap://{}", silent.local_addr().unwrap());
    let output = run(
        &[
            "ping",
            &uri,
            "-c",
            "1",
            "--ack-timeout",
            "0.05",
            "--max-retransmit",
            "1",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert!(!output.status.success(), "{}", text(&output));
    let events = objects(&lines(&output));
    let nack = events
        .iter()
        .find(|e| e["event"] == "nack")
        .expect("a nack event");
    assert_eq!(nack["reason"], "too_many_retries");
    assert_eq!(nack["seq"], 1);
    assert_eq!(events.last().unwrap()["failed"], "too_many_retries");
}

#[test]
fn bad_setting_values_are_refused_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "serve",
                "--udp",
                "127.0.0.1:0",
                "--ack-random-factor",
                "0.5",
            ],
            "--ack-random-factor",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--ack-timeout", "0"],
            "--ack-timeout",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--jitter", "1.5"],
            "--jitter",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--max-sessions", "0"],
            "--max-sessions",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--idle-timeout", "0"],
            "--idle-timeout",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--max-retransmit", "21"],
            "--max-retransmit",
        ),
        (
            &["serve", "--udp", "127.0.0.1:0", "--metrics", "nowhere"],
            "--metrics",
        ),
        (
            &["ping", "coap://127.0.0.1:9", "--max-unanswered", "0"],
            "--max-unanswered",
        ),
        (&["ping", "coap://127.0.0.1:9", "-K", "1"], "-K"),
        (
            &["get", "coap://127.0.0.1:9/x", "--pong-timeout", "0"],
            "--pong-timeout",
        ),
        (
            &["observe", "coap://127.0.0.1:9/x", "--tcp-keepalive", "0.5"],
            "--tcp-keepalive",
        ),
        (&["sessions", "127.0.0.1:9", "-s", "dead"], "--state"),
    ];
    for (args, flag) in cases {
        let output = run(args, Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
}

#[test]
fn serve_reads_its_settings_from_a_toml_file_and_the_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.toml");
    std::fs::write(
        &file,
        "keepalive = 30\nmax-sessions = 5\nack-random-factor = 0.5\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let output = run(
        &["serve", "--udp", "127.0.0.1:0", "--config", path],
        Duration::from_secs(10),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ack-random-factor"));

    std::fs::write(&file, "keepalive = 30\nmax-sessions = 5\n").unwrap();
    let mut serve = Running::spawn(&["serve", "--udp", "127.0.0.1:0", "--config", path, "-K", "2"]);
    serve.wait_line(Duration::from_secs(10), |l| {
        l == "pinging clients after 2 idle seconds"
    });
}
