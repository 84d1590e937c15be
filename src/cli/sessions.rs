//! `coap-keepalive sessions ADDR`: the live session listing of a `serve --metrics ADDR`, as a
//! table like ss(8), filtered by transport and state; `--json` prints the listing as served.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::Result;
use serde_json::Value;

use super::http;

/// Arguments of `sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The metrics listener of a `serve --metrics`: PORT (on 127.0.0.1) or HOST:PORT.
    #[arg(value_name = "ADDR", value_parser = http::parse_listen_addr)]
    addr: SocketAddr,
    /// Only sessions over this transport: udp, dtls, tcp or tls (repeatable).
    #[arg(short, long, value_name = "TRANSPORT", value_parser = ["udp", "dtls", "tcp", "tls"])]
    transport: Vec<String>,
    /// Only sessions in this state: connecting, established, closed or failed (repeatable).
    #[arg(short, long, value_name = "STATE", value_parser = ["connecting", "established", "closed", "failed"])]
    state: Vec<String>,
    /// Print the (filtered) listing as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Fetches `/sessions` and prints it. Exits 1 when the listener cannot be reached.
pub async fn run(args: SessionsArgs) -> Result<ExitCode> {
    let body = match http::get(args.addr, "/sessions", Duration::from_secs(10)).await {
        Ok(body) => body,
        Err(why) => {
            eprintln!("coap-keepalive: {why}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let listing: Value = match serde_json::from_str(&body) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!(
                "coap-keepalive: {}: not a session listing: {error}",
                args.addr
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let wanted = |session: &&Value| {
        let field = |name: &str| session[name].as_str().unwrap_or_default().to_string();
        (args.transport.is_empty() || args.transport.contains(&field("transport")))
            && (args.state.is_empty() || args.state.contains(&field("state")))
    };
    let sessions: Vec<&Value> = listing["sessions"]
        .as_array()
        .map(|all| all.iter().filter(wanted).collect())
        .unwrap_or_default();
    if args.json {
        println!("{}", serde_json::json!({ "sessions": sessions }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", table(&sessions));
    Ok(ExitCode::SUCCESS)
}

/// The table: a header, a row per session, and a count by state.
fn table(sessions: &[&Value]) -> String {
    let mut out = format!(
        "{:<6} {:<5} {:<6} {:<24} {:<24} {:<28} {:>8} {:>9} {:>9} {:>6} {:>6} {:>5} {:>5} {:>4}\n",
        "ID",
        "PROTO",
        "ROLE",
        "STATE",
        "PEER",
        "LOCAL",
        "IDLE",
        "RTT",
        "SRTT",
        "PINGS",
        "PONGS",
        "RETX",
        "FAIL",
        "OBS"
    );
    let mut counts = std::collections::BTreeMap::new();
    for s in sessions {
        let text = |name: &str| s[name].as_str().unwrap_or("-").to_string();
        let number = |name: &str| s[name].as_u64().unwrap_or(0);
        let millis = |name: &str| {
            s[name]
                .as_f64()
                .map_or_else(|| "-".into(), |ms| format!("{ms:.3}ms"))
        };
        let mut state = text("state");
        *counts.entry(state.clone()).or_insert(0u64) += 1;
        if let Some(reason) = s["reason"].as_str() {
            state = format!("{state}:{reason}");
        }
        out.push_str(&format!(
            "{:<6} {:<5} {:<6} {:<24} {:<24} {:<28} {:>7.1}s {:>9} {:>9} {:>6} {:>6} {:>5} {:>5} {:>4}\n",
            format!("#{}", number("id")),
            text("transport"),
            text("role"),
            state,
            text("peer"),
            text("local"),
            s["idle_s"].as_f64().unwrap_or(0.0),
            millis("rtt_last_ms"),
            millis("rtt_smoothed_ms"),
            number("pings_sent"),
            number("pongs"),
            number("retransmissions"),
            number("failures"),
            number("observations"),
        ));
    }
    let by_state: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    out.push_str(&format!(
        "{} sessions ({})",
        sessions.len(),
        if by_state.is_empty() {
            "none".into()
        } else {
            by_state.join(", ")
        }
    ));
    out
}
