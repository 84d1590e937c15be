//! Printing for people: timestamped event lines and durations, and the tracing set-up.

use std::time::{Duration, Instant};

use coap_keepalive::Session;

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
    // Colours only for a terminal: a log redirected to a file gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

    /// Prints an event line about a session: transport and the peer, named by what it is to
    /// us (`udp  client 127.0.0.1:40001  ...` on a server: the client at that address).
    pub fn session(&self, session: &Session, text: &str) {
        let peer = match session.role() {
            coap_keepalive::Role::Client => "server",
            _ => "client",
        };
        self.line(&format!(
            "{:<4} {peer} {:<22} {text}",
            session.transport().name(),
            session.peer().to_string(),
        ));
    }

    /// Prints an event line naming both ends of the session: `udp  client 127.0.0.1:40001
    /// -> server 127.0.0.1:5683  text` (this end first).
    pub fn session_ends(&self, session: &Session, text: &str) {
        let (us, them) = match session.role() {
            coap_keepalive::Role::Client => ("client", "server"),
            _ => ("server", "client"),
        };
        self.line(&format!(
            "{:<4} {us} {:<15} -> {them} {:<15}  {text}",
            session.transport().name(),
            session.local_addr().to_string(),
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

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, listened for from the moment it is made: a signal
/// that arrives before the first `recv` is not lost, and does not kill the process.
pub struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening (inside the tokio runtime).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.interrupt.is_some() || self.terminate.is_some() {
                tokio::select! {
                    _ = next(&mut self.interrupt) => {}
                    _ = next(&mut self.terminate) => {}
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// A usage error found after parsing (a flag that does not apply, a multicast address): says
/// so on stderr as clap does, and yields clap's exit status for usage errors, 2.
pub fn usage_error(message: &str) -> std::process::ExitCode {
    eprintln!("error: {message}\n\nFor more information, try '--help'.");
    std::process::ExitCode::from(2)
}

/// Why `ip` cannot be used yet, when it is a multicast address (224.0.0.0/4, ff00::/8).
pub fn refuse_multicast(ip: std::net::IpAddr) -> Option<String> {
    let multicast = match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_multicast(), |v4| v4.is_multicast()),
        std::net::IpAddr::V4(v4) => v4.is_multicast(),
    };
    multicast.then(|| {
        format!(
            "{ip} is a multicast address: multicast CoAP (RFC 7252 §8) is not supported yet; \
             give a unicast address"
        )
    })
}
