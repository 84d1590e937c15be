//! Every way a [`Context`] opens an endpoint or a session: `listen_*` and `connect*`, one per
//! transport, and by URI. Each hands the work to its transport's driver.

use std::net::SocketAddr;

use crate::context::Context;
use crate::credentials::{ClientCredentials, ServerCredentials};
use crate::proto::error::{Error, Result};
use crate::runtime::session::{Session, Transport};
use crate::transport::{dtls, tcp, tls, udp, Endpoint};
use crate::uri::CoapUri;

impl Context {
    /// Serves CoAP over UDP on `addr`: all of its sessions from one socket and one task.
    pub async fn listen_udp(&self, addr: SocketAddr) -> Result<Endpoint> {
        udp::listen(&self.rt, addr).await
    }

    /// Serves CoAP over TCP on `addr`: a task per connection.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<Endpoint> {
        tcp::listen(&self.rt, addr).await
    }

    /// Serves CoAP over DTLS on `addr` with a PSK, PSK identities, a certificate, or a PSK and a
    /// certificate ([`ServerCredentials::PskAndCertificate`]): then each client's ClientHello
    /// chooses, by the first cipher suite in its list (the client's preference) that one of the
    /// two serves. A ClientHello that cannot be served (malformed, no extensions block, no
    /// shared cipher suite) is refused at once with a fatal alert. Each peer's handshake runs in
    /// its own task within the connect timeout, and one driver serves all the endpoint's
    /// sessions; a handshake that fails reaches the nack handler as
    /// [`NackReason::TlsFailed`](crate::NackReason::TlsFailed), its cause in
    /// [`Session::failure_cause`](crate::Session::failure_cause).
    pub async fn listen_dtls(
        &self,
        addr: SocketAddr,
        credentials: ServerCredentials,
    ) -> Result<Endpoint> {
        dtls::listen(&self.rt, addr, &credentials).await
    }

    /// Serves CoAP over TLS on `addr` with a certificate (a PSK is an [`Error::Config`]: rustls
    /// has no PSK cipher suites). With a client CA, clients must present a certificate it signed.
    /// Each handshake runs in its own task within the connect timeout; one that fails reaches the
    /// nack handler as [`NackReason::TlsFailed`](crate::NackReason::TlsFailed).
    pub async fn listen_tls(
        &self,
        addr: SocketAddr,
        credentials: ServerCredentials,
    ) -> Result<Endpoint> {
        tls::listen(&self.rt, addr, &credentials).await
    }

    /// Opens a UDP session to `peer` from a fresh local port.
    pub async fn connect_udp(&self, peer: SocketAddr) -> Result<Session> {
        udp::connect(&self.rt, peer).await
    }

    /// Opens a TCP session to `peer`; returns once the peer's CSM arrived.
    pub async fn connect_tcp(&self, peer: SocketAddr) -> Result<Session> {
        tcp::connect(&self.rt, peer).await
    }

    /// Opens a DTLS session to `peer`; returns once the handshake completed (within the connect
    /// timeout). In certificate mode the server's certificate must name `peer`'s IP address
    /// (use [`Context::connect_with`] to verify a host name).
    ///
    /// A failed handshake is an [`Error::Tls`] naming the cause, and the nack handler sees it as
    /// [`NackReason::TlsFailed`](crate::NackReason::TlsFailed).
    pub async fn connect_dtls(
        &self,
        peer: SocketAddr,
        credentials: &ClientCredentials,
    ) -> Result<Session> {
        dtls::connect(&self.rt, peer, &peer.ip().to_string(), credentials).await
    }

    /// Opens a TLS session to `peer` and returns once the peer's CSM arrived, all within the
    /// connect timeout. The server's certificate must name `server_name` (a DNS name or an IP
    /// literal).
    ///
    /// A failed handshake, or a TLS alert before the peer's CSM (how a TLS 1.3 server rejects a
    /// client certificate), is an [`Error::Tls`] naming the cause, and the nack handler sees it
    /// as [`NackReason::TlsFailed`](crate::NackReason::TlsFailed).
    pub async fn connect_tls(
        &self,
        peer: SocketAddr,
        server_name: &str,
        credentials: &ClientCredentials,
    ) -> Result<Session> {
        tls::connect(&self.rt, peer, server_name, credentials).await
    }

    /// Opens a session to the host of `uri` over the transport its scheme names. Secured
    /// schemes need credentials: use [`Context::connect_with`] for them.
    pub async fn connect(&self, uri: &str) -> Result<Session> {
        let uri = CoapUri::parse(uri)?;
        let peer = uri.resolve().await?;
        match uri.transport {
            Transport::Udp => self.connect_udp(peer).await,
            Transport::Tcp => self.connect_tcp(peer).await,
            other => Err(Error::Config(format!(
                "{}:// needs credentials: use connect_with with a PSK or certificates",
                other.scheme(),
            ))),
        }
    }

    /// Opens a session to the host of `uri` over the transport its scheme names, with
    /// `credentials` for `coaps://` and `coaps+tcp://` (where the server's certificate must name
    /// the URI's host). `coap://` and `coap+tcp://` ignore them.
    pub async fn connect_with(
        &self,
        uri: &str,
        credentials: &ClientCredentials,
    ) -> Result<Session> {
        let uri = CoapUri::parse(uri)?;
        let peer = uri.resolve().await?;
        match uri.transport {
            Transport::Udp => self.connect_udp(peer).await,
            Transport::Tcp => self.connect_tcp(peer).await,
            Transport::Dtls => dtls::connect(&self.rt, peer, &uri.host, credentials).await,
            Transport::Tls => tls::connect(&self.rt, peer, &uri.host, credentials).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CertificateSet;
    use crate::runtime::session::SessionState;

    /// TCP and TLS endpoints bound to port 0 of the IPv6 loopback serve sessions (the TLS one
    /// with a certificate that names `::1`).
    #[tokio::test]
    async fn tcp_and_tls_endpoints_listen_on_the_ipv6_loopback() {
        let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let certs = CertificateSet::generate().unwrap();
        let server = Context::new();
        let tcp = server.listen_tcp(loopback).await.unwrap();
        let credentials = ServerCredentials::Certificate {
            identity: certs.server_identity(),
            client_ca_pem: None,
        };
        let tls = server.listen_tls(loopback, credentials).await.unwrap();
        for endpoint in [&tcp, &tls] {
            assert!(endpoint.local_addr.is_ipv6(), "{}", endpoint.local_addr);
            assert_ne!(endpoint.local_addr.port(), 0);
        }

        let client = Context::new();
        let session = client.connect_tcp(tcp.local_addr).await.unwrap();
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(session.peer(), tcp.local_addr);
        let credentials = ClientCredentials::Certificate {
            ca_pem: Some(certs.ca_cert_pem.clone()),
            identity: None,
            insecure: false,
        };
        let session = client
            .connect_tls(tls.local_addr, "::1", &credentials)
            .await
            .unwrap();
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(session.peer(), tls.local_addr);
        client.shutdown().await;
        server.shutdown().await;
    }
}
