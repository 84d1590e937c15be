//! The TCP driver: a task per connection moving bytes and time in and out of its
//! [`StreamSession`]. TLS connections run through the same loop over their encrypted stream.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::proto::error::{Error, NackReason, Result};
use crate::proto::stream::StreamSession;
use crate::runtime::dispatch::{apply_command, publish_stats, react};
use crate::runtime::metrics::AtLimit;
use crate::runtime::session::{Command, CommandSender, Role, Session, SessionState, Transport};
use crate::runtime::waiters::Waiters;
use crate::runtime::Runtime;
use crate::transport::{Endpoint, SessionLimit};

/// The accept queue of TCP and TLS listeners. `TcpListener::bind` listens with 128, as std
/// does; a burst of thousands of connections (libcoap-style load) overflows that, and each
/// dropped SYN costs its client a retransmission a second or more later. The kernel caps the
/// value at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with an accept queue of [`LISTEN_BACKLOG`]. An error names the address
/// and keeps the kind of the I/O error (`AddrInUse`, `PermissionDenied`, ...).
pub(crate) fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    let listen = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does on unix: a restarted server gets its port back while
        // connections of its previous run are in TIME_WAIT. Not on Windows, where the option
        // would let a second process take a port in use.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|error| {
        Error::Io(io::Error::new(
            error.kind(),
            format!("cannot listen on TCP {addr}: {error}"),
        ))
    })
}

/// Binds `addr` and serves every connection accepted on it.
pub(crate) async fn listen(rt: &Arc<Runtime>, addr: SocketAddr) -> Result<Endpoint> {
    let listener = bind_listener(addr)?;
    let local_addr = listener.local_addr()?;
    let accept_rt = Arc::clone(rt);
    let limit = SessionLimit::new(rt);
    let mut shutdown = rt.shutdown_signal();
    rt.spawn(async move {
        loop {
            tokio::select! {
                // Shutdown first: a connection accepted after it would start a session that
                // the shutdown no longer waits for (its task list was already taken).
                biased;
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(_) if *shutdown.borrow() => return,
                    Ok((stream, peer)) => match limit.admit() {
                        Some(place) => {
                            configure(&accept_rt, &stream);
                            let local = stream.local_addr().unwrap_or(local_addr);
                            let (session, run) = start(&accept_rt, stream, peer, local, Transport::Tcp, Role::Server);
                            tracing::debug!(session = %session, "tcp connection accepted");
                            accept_rt.spawn(async move {
                                run.await;
                                drop(place);
                            });
                        }
                        None => {
                            tracing::debug!(%peer, "session limit reached: tcp connection refused");
                            accept_rt.counters.at_limit(Transport::Tcp, AtLimit::Refused);
                        }
                    },
                    Err(error) => {
                        // Out of descriptors or similar: keep serving the others.
                        tracing::warn!(%error, "tcp accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    });
    tracing::info!(%local_addr, "listening on tcp");
    Ok(Endpoint {
        transport: Transport::Tcp,
        local_addr,
    })
}

/// Connects to `peer` and returns once the peer's CSM arrived (within the connect timeout).
pub(crate) async fn connect(rt: &Arc<Runtime>, peer: SocketAddr) -> Result<Session> {
    let timeout = rt.settings.connect_timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(peer))
        .await
        .map_err(|_| Error::Timeout(format!("TCP connect to {peer}")))??;
    configure(rt, &stream);
    let local = stream.local_addr()?;
    let (session, run) = start(rt, stream, peer, local, Transport::Tcp, Role::Client);
    rt.spawn(run);
    wait_established(&session, timeout).await?;
    Ok(session)
}

/// Sets TCP_NODELAY (pings must not wait for Nagle) and the optional OS keepalive.
pub(crate) fn configure(rt: &Runtime, stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    if let Some(idle) = rt.settings.tcp_keepalive {
        if let Err(error) = crate::transport::tls_conn::set_tcp_keepalive(stream, idle, idle) {
            tracing::warn!(%error, "could not enable SO_KEEPALIVE");
        }
    }
}

/// Waits until `session` leaves the connecting state; an error if it ended instead.
pub(crate) async fn wait_established(
    session: &Session,
    timeout: std::time::Duration,
) -> Result<()> {
    let wait = async {
        loop {
            match session.state() {
                SessionState::Established => return Ok(()),
                SessionState::Failed(reason) => return Err(Error::SessionFailed(reason)),
                SessionState::Closed => return Err(Error::Closed),
                SessionState::Connecting => {}
            }
            // Woken on the end of the session; otherwise poll briefly for establishment.
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(5), session.closed()).await;
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => {
            session.close();
            Err(Error::Timeout(format!(
                "no CSM from {} within {:?}",
                session.peer(),
                timeout
            )))
        }
    }
}

/// Creates the session and its protocol state, registers it, and returns the task that runs it.
pub(crate) fn start<S>(
    rt: &Arc<Runtime>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    role: Role,
) -> (
    Session,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let now = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let session = Session::new(
        rt.next_session_id(),
        peer,
        local,
        transport,
        role,
        CommandSender::Own(tx),
        now,
    );
    rt.register(&session);
    let mut core = StreamSession::new(
        rt.keepalive_config(),
        rt.session_rng(),
        now,
        rt.settings.max_message_size,
    );
    core.set_input_timeout(rt.settings.input_timeout);
    core.set_blockwise(Arc::clone(&rt.blockwise));
    let span = tracing::debug_span!(
        "session",
        id = session.id().0,
        transport = %transport,
        role = %role,
        peer = %peer
    );
    let driver = run(Arc::clone(rt), session.clone(), core, stream, rx);
    let run = tracing::Instrument::instrument(driver, span);
    (session, run)
}

/// The connection loop: flush, react, wait for bytes, a deadline, a command or shutdown.
async fn run<S>(
    rt: Arc<Runtime>,
    session: Session,
    mut core: StreamSession,
    mut stream: S,
    mut commands: mpsc::UnboundedReceiver<Command>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = rt.shutdown_signal();
    // Frames are assembled by the decoder, so a small read buffer serves any frame size; it is
    // most of a connection's memory, and servers hold thousands of connections.
    let mut buf = vec![0u8; 2048];
    let mut ended = None;
    let mut waiters = Waiters::default();
    let mut draining: Option<Instant> = None;
    loop {
        // Flush what the protocol queued and react to its events until both are drained.
        loop {
            if let Some(bytes) = core.poll_transmit() {
                match stream.write_all(&bytes).await {
                    Ok(()) => rt.counters.sent(session.transport(), bytes.len()),
                    Err(error) => {
                        tracing::debug!(session = %session, %error, "write failed");
                        core.fail(NackReason::NotDeliverable);
                    }
                }
                continue;
            }
            publish_stats(&mut core, &session);
            let Some(event) = core.poll_event() else {
                break;
            };
            let now = Instant::now();
            if let Some(error) = react(&rt, &mut core, &mut waiters, &session, now, event) {
                ended = Some(error);
            }
        }
        let _ = stream.flush().await;
        if ended.is_some() || core.is_done() {
            let _ = stream.shutdown().await;
            waiters.fail_all(|| crate::proto::error::Error::Closed);
            if ended.is_none() {
                // Done without a terminal event (cannot happen today): still leave the table.
                rt.unregister(&session, SessionState::Closed);
            }
            return;
        }
        if let Some(until) = draining {
            if core.pending_requests() == 0 || Instant::now() >= until {
                core.close();
                continue;
            }
        }
        let deadline = match (core.poll_timeout(), draining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read(&mut buf) => {
                let now = Instant::now();
                match read {
                    Ok(0) => core.handle_eof(now),
                    Ok(n) => {
                        rt.counters.received(session.transport(), n);
                        core.handle_bytes(now, &buf[..n]);
                    }
                    Err(error) => {
                        tracing::debug!(session = %session, %error, "read failed");
                        if crate::transport::tls_conn::is_tls_error(&error) {
                            core.fail(NackReason::TlsFailed);
                        } else {
                            core.handle_eof(now);
                        }
                    }
                }
            }
            _ = sleep => core.handle_timeout(Instant::now()),
            Some(command) = commands.recv() => {
                apply_command(&rt, &mut core, &mut waiters, &session, Instant::now(), command);
            }
            _ = shutdown.changed(), if draining.is_none() => {
                // Requests in flight may finish until the drain deadline; then Release.
                draining = Some(rt.drain_deadline());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_port_in_use_is_an_error_naming_the_address() {
        let first = bind_listener(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = first.local_addr().unwrap();
        let error = bind_listener(addr).unwrap_err();
        let Error::Io(cause) = &error else {
            panic!("not an i/o error: {error}");
        };
        assert_eq!(cause.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue() {
        // More than the 128 that `TcpListener::bind` queues: beyond those, SYNs would be dropped
        // and these connects would hang in retransmissions (the kernel allows up to
        // net.core.somaxconn, 4096 by default).
        const BURST: usize = 500;
        let listener = bind_listener(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connects.spawn(tokio::time::timeout(
                Duration::from_secs(3),
                TcpStream::connect(addr),
            ));
        }
        let mut streams = Vec::with_capacity(BURST);
        while let Some(connected) = connects.join_next().await {
            let stream = connected.unwrap().expect("connect waited for the queue");
            streams.push(stream.unwrap());
        }
        assert_eq!(streams.len(), BURST);
    }
}
