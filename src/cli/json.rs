//! The command line's JSON output (`--json`, `/sessions`): one object per event or session,
//! built here so that every command names its fields the same way. README's *JSON output*
//! section documents the fields; `tests/cli_json.rs` parses them.

use std::time::Duration;

use coap_keepalive::{Role, Session, SessionInfo, SessionState};
use serde_json::{json, Map, Value};

/// Milliseconds, three decimals, as a JSON number.
pub fn ms(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Seconds, three decimals, as a JSON number.
pub fn secs(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1e3).round() / 1e3)
}

/// `connecting`, `established`, `closed` or `failed`.
pub fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connecting => "connecting",
        SessionState::Established => "established",
        SessionState::Failed(_) => "failed",
        _ => "closed",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        _ => "server",
    }
}

/// One session of the listing (`/sessions`).
pub fn session_info(info: &SessionInfo) -> Value {
    let reason = match info.state {
        SessionState::Failed(reason) => json!(reason.label()),
        _ => Value::Null,
    };
    json!({
        "id": info.id.0,
        "peer": info.peer.to_string(),
        "local": info.local.to_string(),
        "transport": info.transport.name(),
        "role": role_name(info.role),
        "state": state_name(info.state),
        "reason": reason,
        "idle_s": secs(info.idle),
        "age_s": secs(info.age),
        "rtt_last_ms": info.stats.rtt.last.map(ms),
        "rtt_smoothed_ms": info.stats.rtt.smoothed.map(ms),
        "pings_sent": info.stats.pings_sent,
        "pongs": info.stats.pongs,
        "pings_received": info.stats.pings_received,
        "retransmissions": info.stats.retransmissions,
        "failures": info.stats.failures,
        "observations": info.observations,
    })
}

/// An event object: `{"event": name, "time_s": ..., ...fields}`, with the session's fields
/// (`session`, `transport`, `role`, `peer`) when it is about one.
pub fn event(name: &str, time: Duration, session: Option<&Session>, fields: Value) -> String {
    let mut object = Map::new();
    object.insert("event".into(), json!(name));
    object.insert("time_s".into(), secs(time));
    if let Some(session) = session {
        object.insert("session".into(), json!(session.id().0));
        object.insert("transport".into(), json!(session.transport().name()));
        object.insert("role".into(), json!(role_name(session.role())));
        object.insert("peer".into(), json!(session.peer().to_string()));
    }
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object).to_string()
}
