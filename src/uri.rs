//! CoAP URIs: `coap://`, `coaps://`, `coap+tcp://`, `coaps+tcp://` (RFC 7252 §6, RFC 8323 §8).

use std::fmt;
use std::net::SocketAddr;

use crate::proto::error::{Error, Result};
use crate::runtime::session::Transport;

/// Default port of `coap://` and `coap+tcp://`.
pub const COAP_PORT: u16 = 5683;
/// Default port of `coaps://` and `coaps+tcp://`.
pub const COAPS_PORT: u16 = 5684;

/// A parsed CoAP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapUri {
    /// The transport its scheme names.
    pub transport: Transport,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (the scheme's default when the URI gives none).
    pub port: u16,
    /// Path segments, percent-decoding not applied.
    pub path: Vec<String>,
    /// Query parameters, as written.
    pub query: Vec<String>,
}

impl CoapUri {
    /// Parses `uri`; the error says what is wrong.
    pub fn parse(uri: &str) -> Result<CoapUri> {
        let bad = |reason: &str| Error::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("missing scheme (coap://, coaps://, coap+tcp://, coaps+tcp://)"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "coap" => Transport::Udp,
            "coaps" => Transport::Dtls,
            "coap+tcp" => Transport::Tcp,
            "coaps+tcp" => Transport::Tls,
            _ => return Err(bad("unsupported scheme")),
        };
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let default_port = if transport.is_secure() {
            COAPS_PORT
        } else {
            COAP_PORT
        };
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        let path = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let query = query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Ok(CoapUri {
            transport,
            host: host.to_string(),
            port,
            path,
            query,
        })
    }

    /// Resolves the host to a socket address (the first one found).
    pub async fn resolve(&self) -> Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| Error::InvalidUri {
                uri: self.to_string(),
                reason: format!("host {} has no address", self.host),
            })
    }
}

impl fmt::Display for CoapUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{}:{}", self.transport.scheme(), host, self.port)?;
        for segment in &self.path {
            write!(f, "/{segment}")?;
        }
        if !self.query.is_empty() {
            write!(f, "?{}", self.query.join("&"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_default_ports() {
        let cases = [
            ("coap://h", Transport::Udp, 5683),
            ("coaps://h", Transport::Dtls, 5684),
            ("coap+tcp://h", Transport::Tcp, 5683),
            ("coaps+tcp://h", Transport::Tls, 5684),
        ];
        for (uri, transport, port) in cases {
            let u = CoapUri::parse(uri).unwrap();
            assert_eq!((u.transport, u.port), (transport, port), "{uri}");
        }
    }

    #[test]
    fn ipv6_port_path_query() {
        let u = CoapUri::parse("coap://[::1]:6000/a/b?x=1&y").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 6000);
        assert_eq!(u.path, vec!["a", "b"]);
        assert_eq!(u.query, vec!["x=1", "y"]);
        assert_eq!(u.to_string(), "coap://[::1]:6000/a/b?x=1&y");
    }

    #[test]
    fn errors_say_why() {
        for (uri, why) in [
            ("http://h", "scheme"),
            ("h:1", "scheme"),
            ("coap://:5", "host"),
            ("coap://h:99999", "port"),
            ("coap://[::1", "["),
        ] {
            let e = CoapUri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
