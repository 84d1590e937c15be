//! Credentials from the command line, and failed handshakes explained in one line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use coap_keepalive::credentials::{read_pem, ClientCredentials, PemIdentity, PskCredentials};
use coap_keepalive::Transport;
use coap_keepalive::{Error, Result};

/// The security options of the client subcommands (`ping`, `get`, `observe`, ...).
#[derive(Debug, Args)]
pub struct ClientSecurityArgs {
    /// Seconds the connection, the (D)TLS handshake and the CSM exchange may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = super::args::parse_secs)]
    pub handshake_timeout: Duration,
    /// DTLS: the PSK identity to send.
    #[arg(long, value_name = "ID", requires = "psk_key")]
    pub psk_identity: Option<String>,
    /// DTLS: the pre-shared key, as text (coaps:// only: TLS has no PSK mode here).
    #[arg(long, value_name = "KEY", requires = "psk_identity")]
    pub psk_key: Option<String>,
    /// Verify the server's certificate with this CA (PEM).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Present this client certificate (PEM) when the server asks for one.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Accept any server certificate: no verification (for tests only; says so when used).
    #[arg(long)]
    pub insecure: bool,
}

impl ClientSecurityArgs {
    /// The first option given that a session over `transport` would ignore, and why: a usage
    /// error (a PSK on `coap://`, a CA on `coap+tcp://`, a PSK and a certificate at once).
    pub fn ignored_by(&self, transport: Transport) -> Option<String> {
        let psk = if self.psk_key.is_some() {
            Some("--psk-key")
        } else {
            self.psk_identity.as_ref().map(|_| "--psk-identity")
        };
        let certificate = [
            (self.ca.is_some(), "--ca"),
            (self.cert.is_some(), "--cert"),
            (self.key.is_some(), "--key"),
            (self.insecure, "--insecure"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        let scheme = transport.scheme();
        match transport {
            Transport::Udp | Transport::Tcp => psk.or(certificate).map(|flag| {
                format!(
                    "{flag} does not apply to {scheme}:// (no security): use coaps:// (DTLS) or \
                     coaps+tcp:// (TLS)"
                )
            }),
            Transport::Tls => psk.map(|flag| {
                format!("{flag} does not apply to {scheme}://: TLS has no PSK mode here (DTLS, coaps://, has)")
            }),
            _ => match (psk, certificate) {
                (Some(psk), Some(certificate)) => Some(format!(
                    "{psk} and {certificate} exclude each other: DTLS uses a PSK or certificates"
                )),
                _ => None,
            },
        }
    }

    /// The credentials these options describe; warns on stderr when `--insecure` applies.
    pub fn credentials(&self, transport: Transport) -> Result<ClientCredentials> {
        let credentials = client_credentials(
            psk(self.psk_identity.as_deref(), self.psk_key.as_deref()),
            ca(self.ca.as_deref())?,
            identity(self.cert.as_deref(), self.key.as_deref())?,
            self.insecure,
        );
        if self.insecure && transport.is_secure() {
            eprintln!(
                "coap-keepalive: warning: --insecure: the server's certificate is not verified"
            );
        }
        Ok(credentials)
    }
}

/// The certificate and key given with `--cert` / `--key`, if any (clap makes them come together).
pub fn identity(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<PemIdentity>> {
    match (cert, key) {
        (Some(cert), Some(key)) => PemIdentity::from_files(cert, key).map(Some),
        (None, None) => Ok(None),
        _ => Err(Error::Config("--cert and --key go together".into())),
    }
}

/// The CA given with `--ca`, if any.
pub fn ca(path: Option<&Path>) -> Result<Option<String>> {
    path.map(read_pem).transpose()
}

/// A PSK from `--psk-identity` / `--psk-key` (text, as libcoap takes them).
pub fn psk(identity: Option<&str>, key: Option<&str>) -> Option<PskCredentials> {
    key.map(|key| PskCredentials::new(identity.unwrap_or_default(), key))
}

/// What a client presents: a PSK when given, else certificate mode when any of `--ca`,
/// `--cert` or `--insecure` is given, else nothing (a secured URI then refuses to connect).
pub fn client_credentials(
    psk: Option<PskCredentials>,
    ca_pem: Option<String>,
    identity: Option<PemIdentity>,
    insecure: bool,
) -> ClientCredentials {
    match psk {
        Some(psk) => ClientCredentials::Psk(psk),
        None if ca_pem.is_some() || identity.is_some() || insecure => {
            ClientCredentials::Certificate {
                ca_pem,
                identity,
                insecure,
            }
        }
        None => ClientCredentials::None,
    }
}

/// One line saying why connecting failed, naming the cause of a failed handshake (wrong PSK,
/// untrusted certificate, missing client certificate, timeout) before the library's detail.
pub fn explain(error: &Error, transport: Transport, credentials: &ClientCredentials) -> String {
    let Error::Tls(detail) = error else {
        return error.to_string();
    };
    if transport == Transport::Dtls {
        // The DTLS transport names the cause itself, from what the server sent.
        let cause = detail
            .split_once(" failed: ")
            .map_or(detail.as_str(), |(_, cause)| cause);
        return format!("DTLS handshake failed: {cause}");
    }
    let presented_certificate = matches!(
        credentials,
        ClientCredentials::Certificate {
            identity: Some(_),
            ..
        }
    );
    let cause = if detail.contains("timed out") {
        "handshake timeout"
    } else if detail.contains("not valid for name") {
        "the server's certificate does not name this host"
    } else if detail.contains("invalid peer certificate") {
        "untrusted server certificate (not signed by the --ca given)"
    } else if detail.contains("CertificateRequired") {
        "missing client certificate (the server requires one: --cert and --key)"
    } else if detail.contains("cannot connect") {
        "cannot connect"
    } else if presented_certificate {
        "client certificate rejected by the server"
    } else {
        "the server rejected the handshake"
    };
    format!("TLS handshake failed: {cause} ({detail})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk() -> ClientCredentials {
        ClientCredentials::Psk(PskCredentials::new("id", "key"))
    }

    fn certificate(with_identity: bool) -> ClientCredentials {
        ClientCredentials::Certificate {
            ca_pem: Some(String::new()),
            identity: with_identity.then(|| PemIdentity {
                cert_chain_pem: String::new(),
                key_pem: String::new(),
            }),
            insecure: false,
        }
    }

    fn tls(detail: &str) -> Error {
        Error::Tls(detail.into())
    }

    #[test]
    fn causes_are_named() {
        let cases = [
            (
                tls("handshake with 127.0.0.1:1 failed: wrong PSK (the server could not decrypt our Finished): the server sent alert bad_record_mac (20)"),
                Transport::Dtls,
                psk(),
                "DTLS handshake failed: wrong PSK (the server could not decrypt",
            ),
            (
                tls("handshake with 127.0.0.1:1 timed out after 1s"),
                Transport::Tls,
                certificate(false),
                "handshake timeout",
            ),
            (
                tls("handshake with x failed: invalid peer certificate: UnknownIssuer"),
                Transport::Tls,
                certificate(false),
                "untrusted server certificate",
            ),
            (
                tls("x rejected the session after the handshake: received fatal alert: CertificateRequired"),
                Transport::Tls,
                certificate(false),
                "missing client certificate",
            ),
        ];
        for (error, transport, credentials, cause) in cases {
            let line = explain(&error, transport, &credentials);
            assert!(line.contains(cause), "{line}");
            assert!(!line.contains('\n'));
        }
        let other = Error::Config("no".into());
        assert_eq!(explain(&other, Transport::Tls, &psk()), other.to_string());
    }
}
