//! Argument parsers shared by both binaries' command lines (`coap-keepalive` and, through a
//! `#[path]` module, `coap-keepalive-rigs`).

use std::time::Duration;

/// Parses a non-negative number of seconds, fractions allowed ("0.25").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}
