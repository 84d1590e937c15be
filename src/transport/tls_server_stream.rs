//! A server's TLS connection over rustls's unbuffered API: a byte stream for the stream driver
//! that keeps, per connection, only what is in flight.
//!
//! rustls's buffered connection (what tokio-rustls wraps) reads into a record buffer of its own
//! that grows to 4 KiB at the first read and never shrinks: half of what an idle TLS
//! connection cost here. With the unbuffered API the caller owns the buffers, so this stream
//! reads ciphertext into one scratch buffer per thread and keeps bytes of its own only for a
//! record that arrived in part, for encrypted bytes the socket did not take yet, and for
//! plaintext the reader had no room for. Each of these is freed when it empties, so an idle
//! connection holds no buffer at all.
//!
//! Errors read as tokio-rustls's did: a TLS failure is an `io::Error` of kind `InvalidData`
//! wrapping the [`rustls::Error`] (which `tls_conn::is_tls_error` recognises), and a peer that
//! closes its TCP connection without a close_notify gives `UnexpectedEof`.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most plaintext one write encrypts: one TLS record's worth (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16_384;

/// The largest TLS record on the wire: a 5-byte header and 2^14 bytes of plaintext with up to
/// 2048 of expansion (RFC 5246 §6.2.3; TLS 1.3 allows 256, RFC 8446 §5.2). rustls refuses a
/// longer one, so a record carried over in part is always shorter.
const MAX_RECORD: usize = 5 + 16_384 + 2_048;

/// The scratch buffer's size: a record carried over in part, and room to read behind it.
const SCRATCH: usize = MAX_RECORD + 4_096;

thread_local! {
    /// Where every connection served on this thread reads its ciphertext. A read borrows it
    /// only within one `poll_read` call, which never yields.
    static SCRATCH_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// A server's TLS connection past its handshake ([`accept`]).
pub(crate) struct TlsServerStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record that arrived in part; empty and unallocated otherwise.
    incoming: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet; empty and unallocated otherwise.
    outgoing: Vec<u8>,
    /// Decrypted bytes the reader had no room for; empty and unallocated otherwise.
    plaintext: Vec<u8>,
    /// The peer's close_notify arrived: every further read is the end of the stream.
    peer_closed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
}

/// Runs the server side of a TLS handshake on `tcp`.
///
/// Returns the rustls error of a failed handshake (after sending the alert rustls queued for
/// it), or the I/O error that cut the handshake short.
pub(crate) async fn accept(
    config: Arc<rustls::ServerConfig>,
    mut tcp: TcpStream,
) -> io::Result<TlsServerStream> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut incoming: Vec<u8> = Vec::new();
    let mut outgoing: Vec<u8> = Vec::new();
    let mut plaintext: Vec<u8> = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming);
        let next = match state {
            Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                encode(&mut encoder, &mut outgoing).map_err(io::Error::other)?;
                Next::Process
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                tcp.write_all(&outgoing).await?;
                outgoing.clear();
                transmit.done();
                Next::Process
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                // Application data that came with the client's Finished: the first reads
                // return it.
                let mut failed = None;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => plaintext.extend_from_slice(record.payload),
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    }
                }
                failed.map_or(Next::Process, Next::Failed)
            }
            Ok(ConnectionState::WriteTraffic(_)) => Next::Done,
            Ok(state) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the peer closed the connection during the handshake ({state:?})"),
                ));
            }
            Err(error) => Next::Failed(error),
        };
        incoming.drain(..discard);
        match next {
            Next::Process => {}
            Next::Done => break,
            Next::Failed(error) => {
                send_alerts(&mut conn, &mut incoming, &mut tcp).await;
                return Err(invalid_data(error));
            }
            Next::Read => {
                incoming.reserve(4_096);
                if tcp.read_buf(&mut incoming).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    ));
                }
            }
        }
    }
    Ok(TlsServerStream {
        tcp,
        conn,
        incoming: shrunk(incoming),
        outgoing: Vec::new(),
        plaintext: shrunk(plaintext),
        peer_closed: false,
        close_sent: false,
    })
}

/// What a handshake does after one state of its connection.
enum Next {
    /// Ask the connection for its next state.
    Process,
    /// Read more from the peer first.
    Read,
    /// The handshake is complete.
    Done,
    Failed(rustls::Error),
}

/// Writes the alert rustls queued for the error that ended a handshake, as far as the socket
/// takes it: the peer learns why, and its own error names the cause.
async fn send_alerts(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    tcp: &mut TcpStream,
) {
    let mut outgoing = Vec::new();
    queued_alert(conn, incoming, &mut outgoing);
    if !outgoing.is_empty() {
        let _ = tcp.write_all(&outgoing).await;
    }
}

/// Appends to `outgoing` the fatal alert rustls queued with the error it just returned.
/// `incoming` is what is left of the input (rustls may refer to it); the connection's queue is
/// read before any of it, and nothing more is asked of the connection, or it would read the
/// failed bytes again and fail (and alert) a second time.
fn queued_alert(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
) {
    let UnbufferedStatus { state, .. } = conn.process_tls_records(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut encoder)) = state {
        // A failure here leaves the peer without the alert, as a reset would.
        let _ = encode(&mut encoder, outgoing);
    }
}

impl TlsServerStream {
    /// The protocol the client and we agreed by ALPN, if any.
    #[cfg(test)]
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Hands what it can of the pending plaintext to `buf`; true when it handed anything.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.plaintext.is_empty() {
            return false;
        }
        let n = self.plaintext.len().min(buf.remaining());
        buf.put_slice(&self.plaintext[..n]);
        self.plaintext.drain(..n);
        if self.plaintext.is_empty() {
            self.plaintext = Vec::new();
        }
        n > 0
    }

    /// Processes the records in `work` (a partial record carried over, then what was just
    /// read): their plaintext goes to `buf` (what does not fit, to `plaintext`), handshake
    /// messages the peer's records call for (a KeyUpdate answer) to `outgoing`, and a record
    /// that is still partial back to `incoming`.
    fn process(&mut self, work: &mut [u8], buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let mut pos = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut work[pos..]);
            let mut stop = false;
            let mut failed = None;
            match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                let payload = record.payload;
                                let n = payload.len().min(buf.remaining());
                                buf.put_slice(&payload[..n]);
                                self.plaintext.extend_from_slice(&payload[n..]);
                            }
                            Err(error) => {
                                failed = Some(invalid_data(error));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                    if let Err(error) = encode(&mut encoder, &mut self.outgoing) {
                        failed = Some(io::Error::other(error));
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    stop = true;
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // Never accepted (the configuration allows no early data): dropped.
                    while early.next_record().is_some() {}
                }
                // WriteTraffic or BlockedHandshake: no whole record is left.
                Ok(_) => stop = true,
                Err(error) => failed = Some(invalid_data(error)),
            }
            pos += discard;
            if let Some(error) = failed {
                queued_alert(&mut self.conn, &mut work[pos..], &mut self.outgoing);
                break Err(error);
            }
            if stop {
                break Ok(());
            }
        };
        let rest = &work[pos..];
        if rest.is_empty() {
            self.incoming = Vec::new();
        } else {
            self.incoming.clear();
            self.incoming.extend_from_slice(rest);
        }
        result
    }

    /// Encrypts `data` (or, with `None`, a close_notify) into `outgoing`, after any handshake
    /// message rustls has queued.
    fn encrypt(&mut self, data: Option<&[u8]>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut writer)) => {
                    let outgoing = &mut self.outgoing;
                    let written = fill(outgoing, |out| match data {
                        Some(data) => writer.encrypt(data, out),
                        None => writer.queue_close_notify(out),
                    });
                    written.map_err(io::Error::other)?;
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                    encode(&mut encoder, &mut self.outgoing).map_err(io::Error::other)?;
                    false
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    false
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid_data)?;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    false
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    false
                }
                Ok(state) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("the TLS connection is closed ({state:?})"),
                    ))
                }
                Err(error) => return Err(invalid_data(error)),
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Writes `outgoing` to the socket; `Ready(Ok)` once it is all written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            match Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.outgoing.drain(..n);
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.outgoing = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for TlsServerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("plaintext", &self.plaintext.len())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.take_plaintext(buf) || this.peer_closed {
            return Poll::Ready(Ok(()));
        }
        // Bytes of ours a processed record called for (an alert, a KeyUpdate answer) go out
        // first; a socket that takes none now is retried at the next read or write.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        SCRATCH_BUFFER.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                let carried = this.incoming.len();
                scratch[..carried].copy_from_slice(&this.incoming);
                let mut read = ReadBuf::new(&mut scratch[carried..]);
                match Pin::new(&mut this.tcp).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                let filled_before = buf.filled().len();
                let processed = this.process(&mut scratch[..carried + n], buf);
                if !this.outgoing.is_empty() {
                    if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                        return Poll::Ready(Err(error));
                    }
                }
                processed?;
                if buf.filled().len() > filled_before || this.peer_closed {
                    return Poll::Ready(Ok(()));
                }
            }
        })
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // What the socket did not take last time goes first, so that at most one write's
        // records wait here.
        std::task::ready!(this.poll_send(cx))?;
        let data = &data[..data.len().min(MAX_PLAINTEXT)];
        this.encrypt(Some(data))?;
        // Taken: what the socket does not take now goes at the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            this.close_sent = true;
            this.encrypt(None)?;
        }
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Appends the handshake record `encoder` holds to `outgoing`.
fn encode(
    encoder: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    fill(outgoing, |out| encoder.encode(out))
}

/// Appends to `outgoing` what `write` writes into a slice, growing it as `write` asks.
fn fill<E: AsInsufficient>(
    outgoing: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = outgoing.len();
    // Enough for a small record; a larger one says what it needs.
    let mut room = 256;
    loop {
        outgoing.resize(start + room, 0);
        match write(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(error) => match error.required_size() {
                Some(required) if required > room => room = required,
                _ => {
                    outgoing.truncate(start);
                    return Err(error);
                }
            },
        }
    }
}

/// The errors of rustls's encoders that say how much room they need.
trait AsInsufficient {
    fn required_size(&self) -> Option<usize>;
}

impl AsInsufficient for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl AsInsufficient for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

fn invalid_data(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// `buf` without spare capacity: nothing when it is empty.
fn shrunk(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.is_empty() {
        Vec::new()
    } else {
        buf.shrink_to_fit();
        buf
    }
}

#[cfg(all(test, feature = "test-certs"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::credentials::rustls::{
        ring_provider, root_store, tls_client_config, tls_server_config,
    };
    use crate::credentials::CertificateSet;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A handshaken pair on loopback: a tokio-rustls client and our server stream.
    async fn pair() -> (TlsStream<TcpStream>, TlsServerStream) {
        pair_with(|set| tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap()).await
    }

    /// A pair whose client has the configuration `client` makes for the test CA.
    async fn pair_with(
        client: impl FnOnce(&CertificateSet) -> Arc<rustls::ClientConfig>,
    ) -> (TlsStream<TcpStream>, TlsServerStream) {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        let client = client(&set);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            TlsConnector::from(client).connect(name, tcp).await.unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server, tcp).await.unwrap()
        };
        tokio::time::timeout(LIMIT, async { tokio::join!(connect, accept) })
            .await
            .unwrap()
    }

    /// Reads exactly `n` bytes from the server stream with a reader buffer of `chunk` bytes.
    async fn read_n(server: &mut TlsServerStream, n: usize, chunk: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        while got.len() < n {
            let k = tokio::time::timeout(LIMIT, server.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(k > 0, "end of stream after {} of {n} bytes", got.len());
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    fn holds_nothing(server: &TlsServerStream) -> bool {
        server.incoming.capacity() == 0
            && server.outgoing.capacity() == 0
            && server.plaintext.capacity() == 0
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut client, mut server) = pair().await;
        assert!(holds_nothing(&server));
        for size in [1, 100, 16_384, 40_000] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).await.unwrap();
            client.flush().await.unwrap();
            // A 16 KiB reader, as the stream driver's: large bodies come in several records,
            // some of them split across reads.
            assert_eq!(read_n(&mut server, size, 16_384).await, data);
            server.write_all(&data).await.unwrap();
            server.flush().await.unwrap();
            let mut back = vec![0u8; size];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, data);
            assert!(holds_nothing(&server), "after {size} bytes: {server:?}");
        }
    }

    /// TLS 1.2 (the `tls12` feature; older clients) goes through the same unbuffered states.
    #[tokio::test]
    async fn a_tls12_client_is_served() {
        let (mut client, mut server) = pair_with(|set| {
            let config = rustls::ClientConfig::builder_with_provider(ring_provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(root_store(&set.ca_cert_pem).unwrap())
                .with_no_client_auth();
            Arc::new(config)
        })
        .await;
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_n(&mut server, data.len(), 16_384).await, data);
        server.write_all(&data).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, data);
        assert!(holds_nothing(&server));
    }

    #[tokio::test]
    async fn a_small_reader_gets_the_rest_of_a_record_next() {
        let (mut client, mut server) = pair().await;
        let data: Vec<u8> = (0..5_000u32).map(|i| (i % 13) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_n(&mut server, data.len(), 7).await, data);
        assert!(holds_nothing(&server));
    }

    /// Records that arrive a byte at a time are carried over in part between reads.
    #[tokio::test]
    async fn records_that_trickle_in_are_put_together() {
        let (client, mut server) = pair().await;
        let (mut tcp, mut conn) = client.into_inner();
        tcp.set_nodelay(true).unwrap();
        let data: Vec<u8> = (0..3_000u32).map(|i| (i % 199) as u8).collect();
        std::io::Write::write_all(&mut conn.writer(), &data).unwrap();
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records).unwrap();
        }
        let writer = tokio::spawn(async move {
            for byte in records {
                tcp.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            tcp
        });
        assert_eq!(read_n(&mut server, data.len(), 16_384).await, data);
        let _tcp = writer.await.unwrap();
        assert!(holds_nothing(&server));
    }

    /// A connection that ends inside a record is an unexpected end, not a clean one.
    #[tokio::test]
    async fn an_end_inside_a_record_is_an_unexpected_eof() {
        let (client, mut server) = pair().await;
        let (mut tcp, _) = client.into_inner();
        // The first 10 bytes of a 32-byte application-data record, then the end.
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let error = tokio::time::timeout(LIMIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[tokio::test]
    async fn key_updates_are_answered() {
        let (mut client, mut server) = pair().await;
        for round in 0..3u8 {
            // The client's KeyUpdate asks for ours (RFC 8446 §4.6.3): the server's next read
            // processes it and queues its own before the data that follows.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 10]).await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_n(&mut server, 10, 64).await, vec![round; 10]);
            server.write_all(&[round + 1; 10]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 10];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 1; 10]);
        }
        assert!(holds_nothing(&server));
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_and_a_bare_close_is_an_unexpected_eof() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"last").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_n(&mut server, 4, 64).await, b"last");
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        // Our close_notify reaches the client, which reads it as the end.
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);

        let (mut client, mut server) = pair().await;
        // A round trip first: the client reads our session tickets, so that its socket closes
        // with a FIN, not a reset for unread data.
        server.write_all(b"hi").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf[..2]).await.unwrap();
        drop(client.into_inner().0);
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[tokio::test]
    async fn a_corrupt_record_is_a_tls_error_and_alerts_the_peer() {
        let (client, mut server) = pair().await;
        let (mut tcp, _) = client.into_inner();
        // An application-data record whose ciphertext cannot authenticate.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0x5a; 32]);
        tcp.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert!(crate::transport::tls_conn::is_tls_error(&error), "{error}");
        // The alert record (content type 21, encrypted as application data under TLS 1.3:
        // 23) is on its way to the peer.
        let n = tokio::time::timeout(LIMIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0 && matches!(buf[0], 21 | 23), "{:02x?}", &buf[..n]);
    }
}
