//! A `coap-keepalive serve` on all four transports with its metrics listener, and library
//! clients that connect to it: what the operator tests (`cli_prometheus.rs`,
//! `cli_sessions.rs`) need.

use std::net::SocketAddr;
use std::time::Duration;

use coap_keepalive::{ClientCredentials, Context, PskCredentials, Session, Transport};

use super::cli::Running;
use super::Pki;

/// The PSK identity and key the server is given.
pub const PSK_IDENTITY: &str = "operator";
/// See [`PSK_IDENTITY`].
pub const PSK_KEY: &str = "operator-secret";

/// A running `serve --udp --dtls --tcp --tls --metrics 0` and where each endpoint is.
pub struct FourTransportServe {
    /// The child process (killed when dropped).
    pub process: Running,
    /// `coap://...`, `coaps://...`, `coap+tcp://...`, `coaps+tcp://...` by transport.
    pub uris: Vec<(Transport, String)>,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The certificates TLS uses (kept alive with the files).
    pub pki: Pki,
}

impl FourTransportServe {
    /// Starts serve with `extra` arguments (e.g. `-K 1`) and waits for its listening lines.
    pub fn start(extra: &[&str]) -> FourTransportServe {
        let pki = Pki::generate();
        let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
        let mut args = vec![
            "serve",
            "--udp",
            "127.0.0.1:0",
            "--dtls",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--psk-identity",
            PSK_IDENTITY,
            "--psk-key",
            PSK_KEY,
            "--cert",
            &cert,
            "--key",
            &key,
            "--metrics",
            "0",
        ];
        args.extend_from_slice(extra);
        let mut process = Running::spawn(&args);
        let limit = Duration::from_secs(10);
        let metrics = process.wait_line(limit, |l| l.starts_with("serving metrics http://"));
        let metrics = metrics
            .trim_start_matches("serving metrics http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut uris = Vec::new();
        for (transport, scheme) in [
            (Transport::Udp, "coap://"),
            (Transport::Dtls, "coaps://"),
            (Transport::Tcp, "coap+tcp://"),
            (Transport::Tls, "coaps+tcp://"),
        ] {
            let line = process.wait_line(limit, |l| l.starts_with(&format!("serving {scheme}")));
            let uri = line.split_whitespace().nth(1).unwrap().to_owned();
            uris.push((transport, uri));
        }
        FourTransportServe {
            process,
            uris,
            metrics,
            pki,
        }
    }

    /// The URI of `transport`'s endpoint.
    pub fn uri(&self, transport: Transport) -> &str {
        &self.uris.iter().find(|(t, _)| *t == transport).unwrap().1
    }

    /// The credentials a client of `transport` needs.
    pub fn credentials(&self, transport: Transport) -> ClientCredentials {
        match transport {
            Transport::Dtls => ClientCredentials::Psk(PskCredentials::new(PSK_IDENTITY, PSK_KEY)),
            Transport::Tls => self.pki.client_credentials(false),
            _ => ClientCredentials::None,
        }
    }

    /// Connects one client session of `ctx` over `transport`.
    pub async fn connect(&self, ctx: &Context, transport: Transport) -> Session {
        ctx.connect_with(self.uri(transport), &self.credentials(transport))
            .await
            .unwrap_or_else(|e| panic!("connect over {transport}: {e}"))
    }
}
