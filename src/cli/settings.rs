//! The keepalive and transmission flags every command that opens sessions takes (`serve`,
//! `ping`, the request commands, `observe`), serve's own session-table flags, and `serve
//! --config FILE`, which reads the same settings from TOML (the flags given win). Each value is
//! checked when it is parsed, and a bad one is refused naming its flag.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use coap_keepalive::ContextBuilder;
use serde::Deserialize;

use super::args::parse_secs;

/// Keepalive and transmission settings of a context (RFC 7252 §4.8, RFC 8323 §5.4).
#[derive(Debug, Clone, Default, Args)]
pub struct KeepaliveArgs {
    /// Ping a peer after this many idle seconds (fractions allowed; 0: only answer pings).
    /// Default 0, as libcoap.
    #[arg(short = 'K', long = "keepalive", value_name = "SECS", value_parser = parse_secs)]
    pub keepalive: Option<Duration>,
    /// Fraction of the keepalive interval (0 to 1) by which each ping is randomly brought
    /// forward, to spread many sessions' pings. Default 0.
    #[arg(long, value_name = "FRACTION", value_parser = parse_jitter)]
    pub jitter: Option<f64>,
    /// UDP / DTLS: ACK_TIMEOUT, seconds before the first retransmission, positive (RFC 7252
    /// default 2).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub ack_timeout: Option<Duration>,
    /// UDP / DTLS: ACK_RANDOM_FACTOR, at least 1.0: the first timeout is drawn from
    /// [ack-timeout, ack-timeout * factor] (RFC 7252 default 1.5).
    #[arg(long, value_name = "FACTOR", value_parser = parse_random_factor)]
    pub ack_random_factor: Option<f64>,
    /// UDP / DTLS: MAX_RETRANSMIT, retransmissions before giving up, 0 to 20 (RFC 7252
    /// default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_retransmit: Option<u32>,
    /// TCP / TLS: seconds a ping waits for its Pong, positive (default: the keepalive
    /// interval).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub pong_timeout: Option<Duration>,
    /// Consecutive unanswered pings before the session is declared dead, at least 1
    /// (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unanswered: Option<u32>,
    /// TCP / TLS: turn on the OS's TCP keepalive (SO_KEEPALIVE) with this idle time in whole
    /// seconds, at least 1 (0: off, the default).
    #[arg(long, value_name = "SECS", value_parser = parse_tcp_keepalive)]
    pub tcp_keepalive: Option<Duration>,
}

impl KeepaliveArgs {
    /// The builder with every setting given applied.
    pub fn apply(&self, mut builder: ContextBuilder) -> ContextBuilder {
        if let Some(interval) = self.keepalive {
            builder = builder.keepalive(interval);
        }
        if let Some(jitter) = self.jitter {
            builder = builder.jitter(jitter);
        }
        if let Some(timeout) = self.ack_timeout {
            builder = builder.ack_timeout(timeout);
        }
        if let Some(factor) = self.ack_random_factor {
            builder = builder.ack_random_factor(factor);
        }
        if let Some(n) = self.max_retransmit {
            builder = builder.max_retransmit(n);
        }
        if let Some(timeout) = self.pong_timeout {
            builder = builder.pong_timeout(timeout);
        }
        if let Some(n) = self.max_unanswered {
            builder = builder.max_unanswered(n);
        }
        if let Some(idle) = self.tcp_keepalive.filter(|d| !d.is_zero()) {
            builder = builder.tcp_keepalive(idle);
        }
        builder
    }

    /// Takes every setting not given here from `other` (flags win over the file).
    fn fill_from(&mut self, other: KeepaliveArgs) {
        self.keepalive = self.keepalive.or(other.keepalive);
        self.jitter = self.jitter.or(other.jitter);
        self.ack_timeout = self.ack_timeout.or(other.ack_timeout);
        self.ack_random_factor = self.ack_random_factor.or(other.ack_random_factor);
        self.max_retransmit = self.max_retransmit.or(other.max_retransmit);
        self.pong_timeout = self.pong_timeout.or(other.pong_timeout);
        self.max_unanswered = self.max_unanswered.or(other.max_unanswered);
        self.tcp_keepalive = self.tcp_keepalive.or(other.tcp_keepalive);
    }
}

/// serve's session-table settings.
#[derive(Debug, Clone, Default, Args)]
pub struct TableArgs {
    /// Forget a UDP / DTLS client that has been silent this many seconds (with keepalive off),
    /// positive. Default 300, as libcoap.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub idle_timeout: Option<Duration>,
    /// Most sessions one endpoint holds, at least 1; beyond it newcomers are refused (UDP
    /// first evicts a session that never completed an exchange). Default 65536.
    #[arg(long, value_name = "N", value_parser = parse_max_sessions)]
    pub max_sessions: Option<usize>,
}

impl TableArgs {
    /// The builder with every setting given applied.
    pub fn apply(&self, mut builder: ContextBuilder) -> ContextBuilder {
        if let Some(timeout) = self.idle_timeout {
            builder = builder.idle_timeout(timeout);
        }
        if let Some(n) = self.max_sessions {
            builder = builder.max_sessions(n);
        }
        builder
    }
}

/// What `serve --config FILE` may say: the flags' names, their values as on the command line
/// (seconds as numbers).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    keepalive: Option<toml::Value>,
    jitter: Option<toml::Value>,
    ack_timeout: Option<toml::Value>,
    ack_random_factor: Option<toml::Value>,
    max_retransmit: Option<toml::Value>,
    pong_timeout: Option<toml::Value>,
    max_unanswered: Option<toml::Value>,
    tcp_keepalive: Option<toml::Value>,
    idle_timeout: Option<toml::Value>,
    max_sessions: Option<toml::Value>,
}

/// Reads `file` and fills in every setting the command line did not give. The error names the
/// file and the setting (as its flag).
pub fn read_config(
    file: &Path,
    keepalive: &mut KeepaliveArgs,
    table: &mut TableArgs,
) -> Result<(), String> {
    let name = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?;
    let config: ConfigFile =
        toml::from_str(&text).map_err(|e| format!("{name}: {}", e.message()))?;
    // Each value goes through its flag's own parser, so the file accepts what the flag does.
    fn value<T>(
        file: &str,
        key: &str,
        value: Option<toml::Value>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = match &value {
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            other => {
                return Err(format!(
                    "{file}: {key} (--{key}) must be a number, got {other}"
                ))
            }
        };
        parse(&text)
            .map(Some)
            .map_err(|why| format!("{file}: invalid value {text} for {key} (--{key}): {why}"))
    }
    let file = name.to_string();
    let from_file = KeepaliveArgs {
        keepalive: value(&file, "keepalive", config.keepalive, parse_secs)?,
        jitter: value(&file, "jitter", config.jitter, parse_jitter)?,
        ack_timeout: value(
            &file,
            "ack-timeout",
            config.ack_timeout,
            parse_positive_secs,
        )?,
        ack_random_factor: value(
            &file,
            "ack-random-factor",
            config.ack_random_factor,
            parse_random_factor,
        )?,
        max_retransmit: value(&file, "max-retransmit", config.max_retransmit, |s| {
            parse_count(s, 0, 20)
        })?,
        pong_timeout: value(
            &file,
            "pong-timeout",
            config.pong_timeout,
            parse_positive_secs,
        )?,
        max_unanswered: value(&file, "max-unanswered", config.max_unanswered, |s| {
            parse_count(s, 1, u32::MAX)
        })?,
        tcp_keepalive: value(
            &file,
            "tcp-keepalive",
            config.tcp_keepalive,
            parse_tcp_keepalive,
        )?,
    };
    keepalive.fill_from(from_file);
    if table.idle_timeout.is_none() {
        table.idle_timeout = value(
            &file,
            "idle-timeout",
            config.idle_timeout,
            parse_positive_secs,
        )?;
    }
    if table.max_sessions.is_none() {
        table.max_sessions = value(
            &file,
            "max-sessions",
            config.max_sessions,
            parse_max_sessions,
        )?;
    }
    Ok(())
}

/// A positive number of seconds.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let secs = parse_secs(s)?;
    if secs.is_zero() {
        return Err("must be positive".into());
    }
    Ok(secs)
}

/// A jitter fraction, 0 to 1.
fn parse_jitter(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} is not a fraction from 0 to 1"));
    }
    Ok(x)
}

/// ACK_RANDOM_FACTOR, at least 1.0 and finite.
fn parse_random_factor(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(x.is_finite() && x >= 1.0) {
        return Err(format!("{x} is below 1.0 (RFC 7252: at least 1)"));
    }
    Ok(x)
}

/// A whole number of seconds for SO_KEEPALIVE: 0 (off) or at least 1.
fn parse_tcp_keepalive(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    Ok(Duration::from_secs(secs))
}

/// At least one session.
fn parse_max_sessions(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A count from `min` to `max`.
fn parse_count(s: &str, min: u32, max: u32) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is not in {min}..={max}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_fills_in_what_the_flags_did_not_give() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "keepalive = 30\nack-timeout = 0.5\nmax-sessions = 10\nmax-unanswered = 3\n",
        )
        .unwrap();
        let mut keepalive = KeepaliveArgs {
            keepalive: Some(Duration::from_secs(5)),
            ..KeepaliveArgs::default()
        };
        let mut table = TableArgs::default();
        read_config(&file, &mut keepalive, &mut table).unwrap();
        assert_eq!(
            keepalive.keepalive,
            Some(Duration::from_secs(5)),
            "the flag wins"
        );
        assert_eq!(keepalive.ack_timeout, Some(Duration::from_millis(500)));
        assert_eq!(keepalive.max_unanswered, Some(3));
        assert_eq!(table.max_sessions, Some(10));
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "ack-random-factor = 0.5\n").unwrap();
        let error = read_config(
            &file,
            &mut KeepaliveArgs::default(),
            &mut TableArgs::default(),
        )
        .unwrap_err();
        assert!(error.contains("--ack-random-factor"), "{error}");
        std::fs::write(&file, "ack-timeout = 1\nbogus = 2\n").unwrap();
        let error = read_config(
            &file,
            &mut KeepaliveArgs::default(),
            &mut TableArgs::default(),
        )
        .unwrap_err();
        assert!(error.contains("bogus"), "{error}");
    }
}
