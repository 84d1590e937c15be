//! `--reconnect` of `ping` and `observe`: when the session fails (or the peer closes it), the
//! command connects again after a wait drawn from exponential backoff with full jitter and goes
//! on, printing a line for each attempt and for the reconnection.

use std::time::Duration;

use clap::Args;
use coap_keepalive::{Event, EventKind, ReconnectPolicy};
use serde_json::json;

use super::args::parse_secs;
use super::json;

/// The reconnection flags.
#[derive(Debug, Args)]
pub struct ReconnectArgs {
    /// When the session fails or the peer closes it, connect again and go on (observations
    /// are registered again). Waits are random, up to --reconnect-base for the first attempt,
    /// doubling with each failed one up to --reconnect-cap. Off by default.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect: the spread of the first attempt's wait, in seconds.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs, requires = "reconnect")]
    pub reconnect_base: Duration,
    /// With --reconnect: the longest wait between attempts, in seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs, requires = "reconnect")]
    pub reconnect_cap: Duration,
}

impl ReconnectArgs {
    /// The policy, when reconnecting was asked for.
    pub fn policy(&self) -> Option<ReconnectPolicy> {
        self.reconnect
            .then(|| ReconnectPolicy::new(self.reconnect_base, self.reconnect_cap))
    }
}

/// What a reconnection event means, for people and for `--json`: `None` for other events.
pub struct Said {
    /// A line for people.
    pub line: String,
    /// The JSON event's name and fields.
    pub name: &'static str,
    pub fields: serde_json::Value,
    /// The session is back (`Reconnected`) or will not be (`ReconnectGaveUp`).
    pub settled: Option<bool>,
}

/// The line and JSON of a reconnection event.
pub fn said(event: &Event) -> Option<Said> {
    let peer = event.session.peer();
    Some(match &event.kind {
        EventKind::Reconnecting { attempt, delay } => Said {
            line: format!(
                "reconnecting to {peer} in {:.2}s (attempt {attempt})",
                delay.as_secs_f64()
            ),
            name: "reconnecting",
            fields: json!({
                "peer": peer.to_string(),
                "attempt": attempt,
                "delay_ms": json::ms(*delay),
            }),
            settled: None,
        },
        EventKind::Reconnected { previous, restored } => Said {
            line: format!(
                "reconnected to {peer}: session {} replaces {previous} ({restored} observation{} restored)",
                event.session.id(),
                if *restored == 1 { "" } else { "s" }
            ),
            name: "reconnected",
            fields: json!({
                "peer": peer.to_string(),
                "session": event.session.id().0,
                "previous": previous.0,
                "restored": restored,
            }),
            settled: Some(true),
        },
        EventKind::ReconnectGaveUp { attempts } => Said {
            line: format!("gave up reconnecting to {peer} after {attempts} attempts"),
            name: "reconnect_gave_up",
            fields: json!({ "peer": peer.to_string(), "attempts": attempts }),
            settled: Some(false),
        },
        _ => return None,
    })
}
