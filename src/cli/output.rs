//! Printing for people: timestamped event lines and durations, and the tracing set-up.

use std::time::{Duration, Instant};

use coap_keepalive::session::Session;

/// Sends the library's tracing events to stderr at the level `-v` asks for (errors only by
/// default: the command line prints its own lines), or as `RUST_LOG` says.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints one line per event, stamped with the seconds since it was created.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    start: Instant,
}

impl Printer {
    /// A printer whose clock starts now.
    pub fn new() -> Self {
        Printer {
            start: Instant::now(),
        }
    }

    /// Prints `[  1.234s] text`.
    pub fn line(&self, text: &str) {
        println!("[{:8.3}s] {text}", self.start.elapsed().as_secs_f64());
    }

    /// Prints an event line about a session: transport, role and peer first.
    pub fn session(&self, session: &Session, text: &str) {
        self.line(&format!(
            "{:<4} {:<6} {:<22} {text}",
            session.transport().name(),
            session.role().to_string(),
            session.peer().to_string(),
        ));
    }

    /// Time since the printer was created.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Milliseconds with three decimals, as ping(8) prints them.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Parses a number of seconds that may have a fraction ("0.2").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}
