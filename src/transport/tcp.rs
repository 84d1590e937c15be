//! The TCP transport: listeners and client connections, served by the stream driver
//! ([`super::stream`]); TLS connections run on the same driver over their encrypted stream.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::proto::error::{Error, Result};
use crate::runtime::metrics::AtLimit;
use crate::runtime::session::{Role, Session, SessionState, Transport};
use crate::runtime::Runtime;
use crate::transport::stream::{Accepted, Incoming, StreamDriver};
use crate::transport::{Endpoint, SessionLimit};

/// The accept queue of TCP and TLS listeners. `TcpListener::bind` listens with 128, as std
/// does; a burst of thousands of connections (libcoap-style load) overflows that, and each
/// dropped SYN costs its client a retransmission a second or more later. The kernel caps the
/// value at `net.core.somaxconn` (4096 by default since Linux 5.4). With 1024, a burst of 9,000
/// connections at one instant overflowed it by some 11,000 SYNs (`scripts/bench --burst`).
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

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

/// Binds `addr` and serves every connection accepted on it, all from one task.
pub(crate) async fn listen(rt: &Arc<Runtime>, addr: SocketAddr) -> Result<Endpoint> {
    let listener = bind_listener(addr)?;
    let local_addr = listener.local_addr()?;
    let incoming = TcpIncoming {
        rt: Arc::clone(rt),
        listener,
        local_addr,
        limit: SessionLimit::new(rt),
    };
    let driver = StreamDriver::<TcpStream>::new(rt, Transport::Tcp, local_addr);
    rt.spawn(driver.run(Some(incoming)));
    tracing::info!(%local_addr, "listening on tcp");
    Ok(Endpoint {
        transport: Transport::Tcp,
        local_addr,
    })
}

/// The connections of a TCP listener, each admitted to the endpoint's session limit.
struct TcpIncoming {
    rt: Arc<Runtime>,
    listener: TcpListener,
    local_addr: SocketAddr,
    limit: SessionLimit,
}

impl Incoming<TcpStream> for TcpIncoming {
    async fn next(&mut self) -> Accepted<TcpStream> {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.limit.admit() {
                    Some(place) => {
                        configure(&self.rt, &stream);
                        let local = stream.local_addr().unwrap_or(self.local_addr);
                        return Accepted {
                            stream,
                            peer,
                            local,
                            place,
                        };
                    }
                    None => {
                        tracing::debug!(%peer, "session limit reached: tcp connection refused");
                        self.rt.counters.at_limit(Transport::Tcp, AtLimit::Refused);
                    }
                },
                Err(error) => {
                    // Out of descriptors or similar: keep serving the others.
                    tracing::warn!(%error, "tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Connects to `peer` and returns once the peer's CSM arrived (within the connect timeout).
pub(crate) async fn connect(rt: &Arc<Runtime>, peer: SocketAddr) -> Result<Session> {
    let timeout = rt.settings.connect_timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(peer))
        .await
        .map_err(|_| Error::Timeout(format!("TCP connect to {peer}")))??;
    configure(rt, &stream);
    let local = stream.local_addr()?;
    let mut driver = StreamDriver::new(rt, Transport::Tcp, local);
    let session = driver.add(stream, peer, local, Role::Client, None);
    rt.spawn(driver.run_client());
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
