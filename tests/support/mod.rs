//! Helpers shared by the integration tests: bounded waits, library servers and clients on
//! loopback ([`listen`], [`connect`]) with their reports ([`nacks`], pulled from `events()`;
//! [`pongs`], from the pong handler), raw peers that send and read bytes as they are
//! ([`RawDatagram`] over UDP or inside DTLS, [`RawStream`] over TCP or TLS), libcoap's
//! command-line tools as child processes ([`libcoap`]), fresh certificates in a temporary
//! directory ([`Pki`]), and the rustls and webrtc-dtls configurations the raw peers use
//! ([`configs`]) with webrtc-dtls's own client ([`dtls`]).
//!
//! Each test target includes this with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod cli;
pub mod configs;
pub mod dtls;
pub mod http;
pub mod libcoap;
pub mod pair;
pub mod serve;
pub mod udp_nat;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use webrtc_dtls::conn::DTLSConn;

use coap_keepalive::credentials::{read_pem, CertificateSet};
use coap_keepalive::proto::keepalive::Stats;
use coap_keepalive::proto::wire::signal::{Signal, ABORT, CSM};
use coap_keepalive::proto::wire::tcp::{Frame, FrameDecoder};
use coap_keepalive::{
    ClientCredentials, Context, EventKind, NackReason, PemIdentity, PskCredentials,
    ServerCredentials, Session, Transport,
};
use coap_keepalive::{Role, SessionId};

/// How long a raw peer listens for an answer that should not come.
pub const QUIET: Duration = Duration::from_millis(200);

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs `body`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its time limit of {limit:?}"))
}

/// The next item of `rx`, failing the test if none arrives within `limit`.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, limit: Duration, what: &str) -> T {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
        .unwrap_or_else(|| panic!("{what} channel closed"))
}

/// Everything `rx` holds right now.
pub fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut items = Vec::new();
    while let Ok(item) = rx.try_recv() {
        items.push(item);
    }
    items
}

/// Port 0 on 127.0.0.1: the kernel picks a free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

// ---- library servers and clients ----

/// Starts an endpoint of `transport` on a loopback port of `ctx` and returns its address. DTLS
/// and TLS need `credentials`; UDP and TCP ignore them.
pub async fn listen(
    ctx: &Context,
    transport: Transport,
    credentials: Option<ServerCredentials>,
) -> SocketAddr {
    let endpoint = match transport {
        Transport::Udp => ctx.listen_udp(loopback()).await,
        Transport::Tcp => ctx.listen_tcp(loopback()).await,
        Transport::Dtls => {
            let credentials = credentials.expect("DTLS needs server credentials");
            ctx.listen_dtls(loopback(), credentials).await
        }
        Transport::Tls => {
            let credentials = credentials.expect("TLS needs server credentials");
            ctx.listen_tls(loopback(), credentials).await
        }
        other => panic!("{other} is not tested here"),
    }
    .expect("listen");
    assert_eq!(endpoint.transport, transport);
    endpoint.local_addr
}

/// Opens a session of `ctx` to `server` over `transport`. DTLS and TLS use `credentials` (the
/// TLS server's certificate must name `localhost`); UDP and TCP ignore them.
pub async fn connect(
    ctx: &Context,
    transport: Transport,
    server: SocketAddr,
    credentials: &ClientCredentials,
) -> coap_keepalive::Result<Session> {
    match transport {
        Transport::Udp => ctx.connect_udp(server).await,
        Transport::Tcp => ctx.connect_tcp(server).await,
        Transport::Dtls => ctx.connect_dtls(server, credentials).await,
        Transport::Tls => ctx.connect_tls(server, "localhost", credentials).await,
        other => panic!("{other} is not tested here"),
    }
}

/// A pong as the pong handler saw it: the session's id and role, the RTT, and the session's
/// counters at that moment.
#[derive(Debug, Clone, Copy)]
pub struct Pong {
    pub session: SessionId,
    pub role: Role,
    pub rtt: Duration,
    pub stats: Stats,
}

/// Registers a pong handler on `ctx` that reports every pong. A callback, not `ctx.events()`:
/// the statistics it reports are those the handler reads at the pong, which the tests check.
pub fn pongs(ctx: &Context) -> mpsc::UnboundedReceiver<Pong> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_pong_handler(move |session, rtt| {
        let _ = tx.send(Pong {
            session: session.id(),
            role: session.role(),
            rtt,
            stats: session.stats(),
        });
    });
    rx
}

/// A nack as the nack handler saw it, with the instant it ran.
#[derive(Debug, Clone)]
pub struct Nack {
    pub session: Session,
    pub reason: NackReason,
    pub at: Instant,
}

/// Reports every nack of `ctx`, pulled from `ctx.events()` (its `Failed` events): the test may
/// still register a nack handler of its own. Call it inside the runtime (it spawns the reader).
pub fn nacks(ctx: &Context) -> mpsc::UnboundedReceiver<Nack> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut events = ctx.events();
    tokio::spawn(async move {
        while let Some(item) = events.recv().await {
            // A reader that lost events would lose nacks: the channel closes, and the test fails.
            let Ok(event) = item else { return };
            if let EventKind::Failed(reason) = event.kind {
                let nack = Nack {
                    session: event.session,
                    reason,
                    at: Instant::now(),
                };
                if tx.send(nack).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits at most `limit` for the next nack of `rx` and asserts its reason.
pub async fn expect_nack(
    rx: &mut mpsc::UnboundedReceiver<Nack>,
    limit: Duration,
    reason: NackReason,
) {
    let got = next(rx, limit, "nack").await;
    assert_eq!(got.reason, reason);
}

// ---- raw peers ----

/// A raw peer of a library server sending datagrams as they are: from its own UDP port, or
/// inside its own DTLS session.
pub struct RawDatagram {
    link: DatagramLink,
    /// How long to wait for an answer that should come.
    answer_limit: Duration,
}

enum DatagramLink {
    Udp(UdpSocket),
    Dtls(Arc<DTLSConn>),
}

impl RawDatagram {
    /// A fresh UDP port connected to `server`.
    pub async fn udp(server: SocketAddr, answer_limit: Duration) -> RawDatagram {
        let socket = UdpSocket::bind(loopback()).await.unwrap();
        socket.connect(server).await.unwrap();
        RawDatagram {
            link: DatagramLink::Udp(socket),
            answer_limit,
        }
    }

    /// A DTLS session with `psk` to `server`, the handshake done within `answer_limit`.
    pub async fn dtls_psk(
        server: SocketAddr,
        psk: &PskCredentials,
        answer_limit: Duration,
    ) -> RawDatagram {
        let config = configs::dtls_psk_client_config(psk);
        let conn = dtls::connect(server, config, answer_limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        RawDatagram {
            link: DatagramLink::Dtls(conn),
            answer_limit,
        }
    }

    pub async fn send(&self, bytes: &[u8]) {
        match &self.link {
            DatagramLink::Udp(socket) => {
                socket.send(bytes).await.unwrap();
            }
            DatagramLink::Dtls(conn) => dtls::send(conn, bytes).await,
        }
    }

    /// The next datagram within `limit`, if any.
    pub async fn recv_within(&self, limit: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let received = match &self.link {
            DatagramLink::Udp(socket) => {
                tokio::time::timeout(limit, async { socket.recv(&mut buf).await.ok() }).await
            }
            DatagramLink::Dtls(conn) => {
                tokio::time::timeout(limit, dtls::recv(conn, &mut buf)).await
            }
        };
        let len = received.ok()??;
        buf.truncate(len);
        Some(buf)
    }

    /// The next datagram, which must come within the answer limit.
    pub async fn recv(&self) -> Vec<u8> {
        self.recv_within(self.answer_limit)
            .await
            .expect("no answer")
    }

    /// Asserts that nothing arrives for [`QUIET`]; `after` names what was sent.
    pub async fn assert_quiet(&self, after: &str) {
        if let Some(answer) = self.recv_within(QUIET).await {
            panic!("answer to {after}: {answer:02x?}");
        }
    }

    /// Pings with `message_id` and asserts that the very next datagram is its RST.
    pub async fn assert_next_answer_is_rst_to_ping(&self, message_id: u16) {
        let [high, low] = message_id.to_be_bytes();
        self.send(&[0x40, 0x00, high, low]).await;
        assert_eq!(self.recv().await, vec![0x70, 0x00, high, low]);
    }

    /// Ends a DTLS session with a close_notify (nothing to do over UDP).
    pub async fn close(self) {
        if let DatagramLink::Dtls(conn) = self.link {
            let _ = conn.close().await;
        }
    }
}

/// A byte stream to a server: plain TCP or a TLS client connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw connection to a library server over TCP or TLS, decoding the frames the server sends.
pub struct RawStream {
    stream: Box<dyn Io>,
    decoder: FrameDecoder,
    /// How long to wait for a frame or a close that should come.
    answer_limit: Duration,
}

/// A TCP or TLS server endpoint of `ctx` on loopback, TLS with a fresh certificate for
/// "localhost": its address and the CA that signed the certificate (for [`RawStream::connect`]).
pub async fn listen_stream(ctx: &Context, transport: Transport) -> (SocketAddr, String) {
    let certs = CertificateSet::generate().unwrap();
    let credentials = ServerCredentials::Certificate {
        identity: certs.server_identity(),
        client_ca_pem: None,
    };
    let addr = listen(ctx, transport, Some(credentials)).await;
    (addr, certs.ca_cert_pem)
}

impl RawStream {
    /// A raw connection to the stream server at `addr`: plain TCP, or TLS verifying the
    /// server's certificate (for "localhost") against `ca_pem`; nothing sent yet.
    pub async fn connect(
        transport: Transport,
        addr: SocketAddr,
        ca_pem: &str,
        answer_limit: Duration,
    ) -> RawStream {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream: Box<dyn Io> = match transport {
            Transport::Tcp => Box::new(tcp),
            _ => {
                let config = configs::tls_client_config(ca_pem);
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake");
                Box::new(tls)
            }
        };
        RawStream::new(stream, answer_limit)
    }

    /// Over a connected stream (a TLS one with its handshake done); nothing sent yet.
    pub fn new(stream: Box<dyn Io>, answer_limit: Duration) -> RawStream {
        RawStream {
            stream,
            decoder: FrameDecoder::new(1 << 20),
            answer_limit,
        }
    }

    /// A plain TCP connection to `server`.
    pub async fn tcp(server: SocketAddr, answer_limit: Duration) -> RawStream {
        let stream = TcpStream::connect(server).await.unwrap();
        RawStream::new(Box::new(stream), answer_limit)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next frame from the server.
    pub async fn frame(&mut self) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("server sent a bad frame") {
                return frame;
            }
            let n = tokio::time::timeout(self.answer_limit, self.stream.read(&mut buf))
                .await
                .expect("no frame from the server")
                .expect("read failed");
            assert!(n > 0, "connection closed while a frame was expected");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Reads the server's CSM before writing anything, then sends ours (`00 e1`, all defaults).
    pub async fn exchange_csms(&mut self) {
        assert_eq!(self.frame().await.code, CSM);
        self.send(&[0x00, 0xe1]).await;
    }

    /// Shuts our side down: a TLS close_notify (over TLS), then the TCP FIN.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Asserts that the server closes the connection cleanly (end of stream) with nothing more
    /// to say.
    pub async fn assert_closed(&mut self) {
        assert_eq!(self.decoder.buffered(), 0);
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(self.answer_limit, self.stream.read(&mut buf))
            .await
            .expect("connection still open")
            .unwrap();
        assert_eq!(n, 0, "more after the last frame: {:02x?}", &buf[..n]);
    }

    /// Asserts that the server closes the connection with nothing more to say: a TLS
    /// close_notify or the TCP close, or a reset (a server that closes with our bytes unread).
    pub async fn assert_closed_or_reset(&mut self) {
        assert_eq!(self.decoder.buffered(), 0);
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(self.answer_limit, self.stream.read(&mut buf))
            .await
            .expect("connection still open");
        match read {
            Ok(n) => assert_eq!(n, 0, "more after the last frame: {:02x?}", &buf[..n]),
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{error}"
            ),
        }
    }

    /// Reads an Abort, then the close (or a reset); returns the Abort's Bad-CSM-Option and
    /// diagnostic.
    pub async fn assert_aborted(&mut self) -> (Option<u16>, String) {
        let abort = self.frame().await;
        assert_eq!(abort.code, ABORT, "{abort:?}");
        self.assert_closed_or_reset().await;
        match Signal::parse(&abort) {
            Ok(Signal::Abort {
                bad_csm_option,
                diagnostic,
            }) => (bad_csm_option, diagnostic),
            other => panic!("not a well-formed Abort: {other:?}"),
        }
    }
}

// ---- certificates ----

/// A fresh CA with a server certificate (`localhost`, `127.0.0.1`, `::1`) and a client
/// certificate, written to a temporary directory (`ca.pem`, `server.pem`, `server.key`,
/// `client.pem`, `client.key`, ...) that lives as long as this value.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The generated set, in memory.
    pub set: CertificateSet,
}

impl Pki {
    /// Generates a new set and writes it out.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let set = CertificateSet::generate().expect("generate certificates");
        set.write_to(dir.path()).expect("write certificates");
        Pki { dir, set }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one of the files (`"ca.pem"`, `"client.key"`, ...), as a command-line argument.
    pub fn path(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        assert!(path.exists(), "{} was not written", path.display());
        path.to_str().expect("UTF-8 temporary path").to_owned()
    }

    /// The CA certificate, read back from its file as an application would.
    pub fn ca_pem(&self) -> String {
        read_pem(&self.dir.path().join("ca.pem")).expect("read ca.pem")
    }

    /// The identity (`"server"` or `"client"`) read back from its files.
    pub fn identity(&self, who: &str) -> PemIdentity {
        PemIdentity::from_files(
            &self.dir.path().join(format!("{who}.pem")),
            &self.dir.path().join(format!("{who}.key")),
        )
        .expect("read identity")
    }

    /// Server credentials with the server certificate; clients must present a certificate
    /// signed by the CA when `require_client_certificate`.
    pub fn server_credentials(&self, require_client_certificate: bool) -> ServerCredentials {
        ServerCredentials::Certificate {
            identity: self.identity("server"),
            client_ca_pem: require_client_certificate.then(|| self.ca_pem()),
        }
    }

    /// Client credentials that verify the server against the CA, presenting the client
    /// certificate when `present_client_certificate`.
    pub fn client_credentials(&self, present_client_certificate: bool) -> ClientCredentials {
        ClientCredentials::Certificate {
            ca_pem: Some(self.ca_pem()),
            identity: present_client_certificate.then(|| self.identity("client")),
            insecure: false,
        }
    }
}
