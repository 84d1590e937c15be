//! The stream driver: one task serves every connection of a TCP or TLS listener (or a client's
//! one connection), moving bytes and time in and out of each connection's [`StreamSession`]
//! and handing its events to the runtime's dispatch; it decides nothing about the protocol.
//!
//! A task per connection cost its future, a command channel and a read buffer each, most of an
//! idle connection's memory. Here a connection is its stream, its protocol state and a small
//! waker: the read buffer is one for the driver, commands come over one channel keyed by
//! [`SessionId`], deadlines live in one [`SessionTable`] with one sleep for the earliest, and
//! bytes are held per connection only for a partial frame (the decoder assembles frames) and
//! for output the peer has not taken yet.
//!
//! Each stream is polled with its connection's own waker ([`ConnWaker`]), which puts the
//! connection's key on the driver's ready queue and wakes the driver's task; this works over a
//! `TcpStream` and a TLS stream alike. The task serves the ready connections a few reads each
//! (a busy connection requeues behind the others instead of starving them), then waits in one
//! `select!` for more of them, the earliest deadline, a command, a new connection or shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::coop;

use crate::proto::error::{Error, NackReason};
use crate::proto::stream::StreamSession;
use crate::proto::table::{Addressed, Key, SessionTable, Timed};
use crate::runtime::dispatch::{apply_command, publish_stats, react};
use crate::runtime::session::{
    lock, Command, EndpointCommand, EndpointLink, Role, Session, SessionId, SessionState, Transport,
};
use crate::runtime::waiters::Waiters;
use crate::runtime::Runtime;
use crate::transport::{sleep_until_earlier, Admitted};

/// The read buffer every connection of a driver shares: a TLS record's plaintext at most, and
/// room for a few coalesced frames over TCP.
const READ_BUFFER: usize = 16 * 1024;

/// Reads one connection gets per turn before the other ready connections have theirs.
const READS_PER_TURN: usize = 4;

/// How long a session that ended may take to hand its last bytes (a Release or an Abort, TLS's
/// close_notify) to a peer that does not read them, before its connection is dropped anyway.
const LINGER: Duration = Duration::from_secs(5);

/// The most connections taken from the listener at one wake-up (see
/// `StreamDriver::accept_waiting`): enough to drain a burst quickly (64 left 9,000 connects at one
/// instant at 97-100 % of the trivial responder's pongs, 256 at 99-100 %), few enough that the
/// connections already served get their turn between batches.
const ACCEPT_BATCH: usize = 256;

/// A connection ready for a server session: accepted, and over TLS past its handshake.
pub(crate) struct Accepted<S> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// Its place in the endpoint's session limit, held as long as the connection is.
    pub(crate) place: Admitted,
}

/// Where a server driver's connections come from (a listener, or the handshakes of one).
pub(crate) trait Incoming<S>: Send {
    /// The next connection. Cancel-safe: the driver polls it in a `select!`.
    fn next(&mut self) -> impl Future<Output = Accepted<S>> + Send + '_;
}

/// The incoming connections of a client driver: none.
pub(crate) enum NoIncoming {}

impl<S: Send + 'static> Incoming<S> for NoIncoming {
    #[allow(clippy::manual_async_fn)]
    fn next(&mut self) -> impl Future<Output = Accepted<S>> + Send + '_ {
        std::future::pending()
    }
}

/// The keys of the connections whose streams woke, and the wake-up of the driver's task.
#[derive(Default)]
struct ReadyQueue {
    keys: Mutex<Vec<Key>>,
    notify: Notify,
}

impl ReadyQueue {
    fn push(&self, key: Key) {
        lock(&self.keys).push(key);
        // Stores a permit when the task is busy: it looks at the queue again before it waits.
        self.notify.notify_one();
    }

    /// Moves the queued keys into `into` (empty), keeping both vectors' capacity in use.
    fn take(&self, into: &mut Vec<Key>) {
        std::mem::swap(&mut *lock(&self.keys), into);
    }
}

/// The waker of one connection's stream (readable, writable, or a TLS stream's own wake-up).
struct ConnWaker {
    key: Key,
    /// True while the key is in the ready queue: a connection is queued once however often its
    /// stream wakes before it is served.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl ConnWaker {
    fn queue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.key);
        }
    }
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.queue();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
    }
}

/// What a connection's turn left it waiting for.
enum Turn {
    /// Its stream (or a deadline, or a command) wakes it.
    Wait,
    /// It had more to read than one turn allows: queued again behind the others.
    Again,
    /// The session ended and its connection was shut down: it leaves the driver.
    Over,
}

/// One connection as the driver holds it.
struct Conn<S> {
    stream: S,
    core: StreamSession,
    handle: Session,
    waiters: Waiters,
    /// Set right after the connection enters the table, which gives it its key.
    wake: Option<Arc<ConnWaker>>,
    /// Output the stream has not taken yet, in order: empty and unallocated unless the peer
    /// reads slower than we write.
    unsent: Vec<u8>,
    /// Something was written that no flush has pushed out yet (TLS records in rustls's buffer).
    unflushed: bool,
    /// A write failed: nothing more goes to the stream.
    broken: bool,
    /// The dispatch reported the session's end (it left the registry there).
    ended: bool,
    /// The session is over: its last bytes and the shutdown of its stream may take until then.
    closing: Option<Instant>,
    _place: Option<Admitted>,
}

impl<S> Addressed for Conn<S> {
    fn peer(&self) -> SocketAddr {
        self.handle.peer()
    }
}

impl<S> Timed for Conn<S> {
    fn poll_timeout(&self) -> Option<Instant> {
        match self.closing {
            Some(until) => Some(until),
            None => self.core.poll_timeout(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Serves the connection: flush and react, write out, then read (at most `reads` times),
    /// until its stream has nothing more for now. While `draining`, a session with no request
    /// of ours in flight (or every one, past the drain deadline) is closed with a Release.
    fn turn(
        &mut self,
        rt: &Runtime,
        buf: &mut [u8],
        mut reads: usize,
        draining: Option<Instant>,
    ) -> Turn {
        let Some(wake) = self.wake.clone() else {
            return Turn::Over;
        };
        // Before any poll: a wake-up from here on queues the connection again.
        wake.queued.store(false, Ordering::Release);
        let waker = Waker::from(wake);
        let mut cx = TaskContext::from_waker(&waker);
        // The last read brought bytes: more may be waiting than this turn reads.
        let mut more = false;
        loop {
            self.pump(rt, &mut cx);
            if self.ended || self.core.is_done() {
                return self.finish(rt, &mut cx);
            }
            if let Some(until) = draining {
                if self.core.pending_requests() == 0 || Instant::now() >= until {
                    self.core.close();
                    if self.core.is_done() {
                        continue;
                    }
                }
            }
            match self.write_out(&mut cx) {
                Poll::Pending => return Turn::Wait,
                // The failure is the protocol's to report: pump it.
                Poll::Ready(()) if self.broken => continue,
                Poll::Ready(()) => {}
            }
            if reads == 0 {
                return if more { Turn::Again } else { Turn::Wait };
            }
            if !coop::has_budget_remaining() {
                return Turn::Again;
            }
            reads -= 1;
            let mut read = ReadBuf::new(buf);
            let polled = Pin::new(&mut self.stream).poll_read(&mut cx, &mut read);
            let now = Instant::now();
            match polled {
                Poll::Pending => return Turn::Wait,
                Poll::Ready(Ok(())) if read.filled().is_empty() => self.core.handle_eof(now),
                Poll::Ready(Ok(())) => {
                    more = true;
                    let bytes = read.filled();
                    rt.counters.received(self.handle.transport(), bytes.len());
                    self.core.handle_bytes(now, bytes);
                }
                Poll::Ready(Err(error)) => {
                    tracing::debug!(session = %self.handle, %error, "read failed");
                    if crate::transport::tls_conn::is_tls_error(&error) {
                        self.core.fail(NackReason::TlsFailed);
                    } else {
                        self.core.handle_eof(now);
                    }
                }
            }
        }
    }

    /// Sends what the protocol queued and hands its events to the dispatch until both are
    /// drained: the flush-and-react loop of every driver.
    fn pump(&mut self, rt: &Runtime, cx: &mut TaskContext<'_>) {
        loop {
            if let Some(bytes) = self.core.poll_transmit() {
                self.send(rt, cx, bytes);
                continue;
            }
            publish_stats(&mut self.core, &self.handle);
            let Some(event) = self.core.poll_event() else {
                break;
            };
            let now = Instant::now();
            let handle = &self.handle;
            if react(rt, &mut self.core, &mut self.waiters, handle, now, event).is_some() {
                self.ended = true;
            }
        }
    }

    /// Hands `bytes` to the stream; what it does not take waits, behind what waits already.
    fn send(&mut self, rt: &Runtime, cx: &mut TaskContext<'_>, mut bytes: Vec<u8>) {
        if self.broken {
            return;
        }
        let len = bytes.len();
        if self.unsent.is_empty() {
            match write_some(&mut self.stream, cx, &bytes) {
                Ok(written) => {
                    self.unflushed |= written > 0;
                    if written < len {
                        bytes.drain(..written);
                        self.unsent = bytes;
                    }
                }
                Err(error) => return self.write_failed(&error),
            }
        } else {
            self.unsent.extend_from_slice(&bytes);
        }
        rt.counters.sent(self.handle.transport(), len);
    }

    /// Writes what waits and flushes it; `Pending` (the waker is set) while the stream takes no
    /// more. A failed write fails the session.
    fn write_out(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.broken {
            return Poll::Ready(());
        }
        if !self.unsent.is_empty() {
            match write_some(&mut self.stream, cx, &self.unsent) {
                Ok(written) if written == self.unsent.len() => {
                    // Its memory goes with it: the common case holds none.
                    self.unsent = Vec::new();
                    self.unflushed = true;
                }
                Ok(written) => {
                    self.unsent.drain(..written);
                    self.unflushed |= written > 0;
                    return Poll::Pending;
                }
                Err(error) => {
                    self.write_failed(&error);
                    return Poll::Ready(());
                }
            }
        }
        if self.unflushed {
            // As before this driver, a failed flush is left to the next read or write to report.
            if Pin::new(&mut self.stream).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
            self.unflushed = false;
        }
        Poll::Ready(())
    }

    fn write_failed(&mut self, error: &io::Error) {
        tracing::debug!(session = %self.handle, %error, "write failed");
        self.broken = true;
        self.unsent = Vec::new();
        self.unflushed = false;
        self.core.fail(NackReason::NotDeliverable);
    }

    /// The session is over: its last bytes go out, then the stream is shut down (over TLS with
    /// close_notify), unless the peer takes none of it for [`LINGER`].
    fn finish(&mut self, rt: &Runtime, cx: &mut TaskContext<'_>) -> Turn {
        self.closing.get_or_insert_with(|| Instant::now() + LINGER);
        if self.write_out(cx).is_pending() {
            return Turn::Wait;
        }
        if !self.broken && Pin::new(&mut self.stream).poll_shutdown(cx).is_pending() {
            return Turn::Wait;
        }
        self.end(rt);
        Turn::Over
    }

    /// What remains of the session once its connection goes: its waiters learn it is closed.
    fn end(&mut self, rt: &Runtime) {
        self.waiters.fail_all(|| Error::Closed);
        if !self.ended && !self.handle.state().is_terminal() {
            // Done without a terminal event (cannot happen today): still leave the table.
            rt.unregister(&self.handle, SessionState::Closed);
        }
    }
}

/// Writes as much of `bytes` as the stream takes now (0 when it takes none: the waker is set).
fn write_some<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut TaskContext<'_>,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *stream).poll_write(cx, &bytes[written..]) {
            Poll::Pending => break,
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(error)) => return Err(error),
        }
    }
    Ok(written)
}

/// What woke the driver's task.
enum Wakeup<S> {
    Ready,
    Timers,
    Command(u32, SessionId, Command),
    Accepted(Accepted<S>),
    Shutdown,
}

/// The task serving every connection of one listener, or a client's one connection.
pub(crate) struct StreamDriver<S> {
    rt: Arc<Runtime>,
    transport: Transport,
    table: SessionTable<Conn<S>>,
    ready: Arc<ReadyQueue>,
    /// What the driver's sessions share: its command channel and our address, one link per
    /// address (a listener on a wildcard address gets connections at each of the host's).
    links: Vec<Arc<EndpointLink>>,
    commands: mpsc::UnboundedReceiver<EndpointCommand>,
    shutdown: watch::Receiver<bool>,
    /// Set once shutdown began: sessions with requests of ours in flight may finish until then.
    draining: Option<Instant>,
    /// The drain deadline passed and every session was closed.
    drained: bool,
}

impl<S> StreamDriver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A driver with no connection yet, for a listener at `local` (or a client's connection
    /// from there).
    pub(crate) fn new(rt: &Arc<Runtime>, transport: Transport, local: SocketAddr) -> Self {
        let (commands_tx, commands) = mpsc::unbounded_channel();
        StreamDriver {
            rt: Arc::clone(rt),
            transport,
            table: SessionTable::new(),
            ready: Arc::new(ReadyQueue::default()),
            links: vec![EndpointLink::new(commands_tx, local)],
            commands,
            shutdown: rt.shutdown_signal(),
            draining: None,
            drained: false,
        }
    }

    /// The link for sessions at our address `local`: the listener's own, or one made for the
    /// first connection at that address (of a listener on a wildcard address).
    fn link_for(&mut self, local: SocketAddr) -> Arc<EndpointLink> {
        if let Some(link) = self.links.iter().find(|link| link.local() == local) {
            return Arc::clone(link);
        }
        let link = self.links[0].at(local);
        self.links.push(Arc::clone(&link));
        link
    }

    /// Opens a session over `stream`, registered in the context. Our CSM goes out on the
    /// connection's first turn, as soon as the driver runs.
    pub(crate) fn add(
        &mut self,
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        role: Role,
        place: Option<Admitted>,
    ) -> Session {
        let link = self.link_for(local);
        let rt = &self.rt;
        let now = Instant::now();
        let slot = self.table.next_key();
        let handle = Session::new(
            rt.next_session_id(),
            peer,
            self.transport,
            role,
            link,
            slot.index(),
            now,
        );
        // Registered before the configuration is read: a context-wide keepalive change made
        // meanwhile is either in it or sent to the session as a command.
        rt.register(&handle);
        let mut core = StreamSession::new(
            rt.keepalive_config(),
            rt.session_rng(),
            now,
            rt.settings.max_message_size,
        );
        core.set_input_timeout(rt.settings.input_timeout);
        core.set_blockwise(Arc::clone(&rt.blockwise));
        let conn = Conn {
            stream,
            core,
            handle: handle.clone(),
            waiters: Waiters::default(),
            wake: None,
            unsent: Vec::new(),
            unflushed: false,
            broken: false,
            ended: false,
            closing: None,
            _place: place,
        };
        let key = self.table.insert(conn);
        debug_assert_eq!(key, slot, "the handle carries the connection's key");
        let wake = Arc::new(ConnWaker {
            key,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        wake.queue();
        if let Some(conn) = self.table.get_mut(key) {
            conn.wake = Some(wake);
        }
        handle
    }

    /// Serves a client's connection until it ends (or shutdown and its drain end it).
    pub(crate) async fn run_client(self) {
        self.run(None::<NoIncoming>).await;
    }

    /// Serves the connections `incoming` brings (none for a client) until shutdown and its
    /// drain, or, without `incoming`, until the last connection ended.
    pub(crate) async fn run<I: Incoming<S>>(mut self, mut incoming: Option<I>) {
        let span = tracing::debug_span!("endpoint", transport = %self.transport);
        let serve = async {
            let mut buf = vec![0u8; READ_BUFFER];
            let mut batch = Vec::new();
            loop {
                if !coop::has_budget_remaining() {
                    // The connections' reads used it up: let the runtime's other tasks run.
                    coop::consume_budget().await;
                }
                self.serve_ready(&mut buf, &mut batch);
                if let Some(until) = self.draining {
                    if !self.drained && Instant::now() >= until {
                        self.drained = true;
                        self.drive_all(&mut buf);
                    }
                }
                if incoming.is_none() && self.table.is_empty() {
                    return;
                }
                match self.wait(incoming.as_mut()).await {
                    Wakeup::Ready => {}
                    Wakeup::Timers => self.on_timers(&mut buf),
                    Wakeup::Command(slot, id, command) => {
                        self.on_command(&mut buf, slot, id, command)
                    }
                    // A connection accepted after shutdown would start a session the drain
                    // does not close: it is dropped, as the listener is.
                    Wakeup::Accepted(_) | Wakeup::Shutdown if *self.shutdown.borrow() => {
                        incoming = None;
                        if self.draining.is_none() {
                            self.draining = Some(self.rt.drain_deadline());
                            self.drive_all(&mut buf);
                        }
                    }
                    Wakeup::Accepted(accepted) => {
                        self.on_accepted(accepted);
                        if let Some(incoming) = incoming.as_mut() {
                            self.accept_waiting(incoming);
                        }
                    }
                    Wakeup::Shutdown => {}
                }
            }
        };
        tracing::Instrument::instrument(serve, span).await;
    }

    /// Waits for a ready connection, the earliest deadline, a command, a new connection or
    /// shutdown.
    async fn wait<I: Incoming<S>>(&mut self, incoming: Option<&mut I>) -> Wakeup<S> {
        let drain_deadline = self.draining.filter(|_| !self.drained);
        let sleep = sleep_until_earlier(self.table.next_deadline(), drain_deadline);
        let accept = async {
            match incoming {
                Some(incoming) => incoming.next().await,
                None => std::future::pending().await,
            }
        };
        let draining = self.draining.is_some();
        tokio::select! {
            _ = self.ready.notify.notified() => Wakeup::Ready,
            _ = sleep => Wakeup::Timers,
            Some((slot, id, command)) = self.commands.recv() => Wakeup::Command(slot, id, command),
            accepted = accept => Wakeup::Accepted(accepted),
            _ = self.shutdown.changed(), if !draining => Wakeup::Shutdown,
        }
    }

    /// Serves the connections whose streams woke, a turn each. Once the task's budget with
    /// the runtime is spent, the rest stay queued for its next run.
    fn serve_ready(&mut self, buf: &mut [u8], batch: &mut Vec<Key>) {
        self.ready.take(batch);
        let mut keys = batch.drain(..);
        while let Some(key) = keys.next() {
            if !coop::has_budget_remaining() {
                // Still marked queued: back in line as they were.
                self.ready.push(key);
                keys.for_each(|key| self.ready.push(key));
                return;
            }
            self.drive(key, buf, READS_PER_TURN);
        }
    }

    /// Gives one connection its turn, then reschedules, requeues or removes it.
    fn drive(&mut self, key: Key, buf: &mut [u8], reads: usize) {
        self.drive_with(key, buf, reads, |_, _| {});
    }

    /// Runs `first` on one connection (a command, its timers), then gives it its turn, all in
    /// the session's span.
    fn drive_with(
        &mut self,
        key: Key,
        buf: &mut [u8],
        reads: usize,
        first: impl FnOnce(&mut Conn<S>, &Runtime),
    ) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        // Made for the turn rather than kept: a span per connection would cost its bytes for
        // as long as the connection lives, and a disabled one costs nothing to make.
        let span = tracing::debug_span!(
            "session",
            id = conn.handle.id().0,
            transport = %self.transport,
            role = %conn.handle.role(),
            peer = %conn.handle.peer()
        );
        let _entered = span.enter();
        first(conn, &self.rt);
        match conn.turn(&self.rt, buf, reads, self.draining) {
            Turn::Wait => self.table.reschedule(key),
            Turn::Again => {
                if let Some(wake) = &conn.wake {
                    wake.queue();
                }
                self.table.reschedule(key);
            }
            Turn::Over => {
                self.table.remove(key);
            }
        }
    }

    /// Gives every connection a turn (at the start of the drain and at its deadline).
    fn drive_all(&mut self, buf: &mut [u8]) {
        for key in self.table.keys() {
            self.drive(key, buf, 0);
        }
    }

    fn on_timers(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        while let Some(key) = self.table.pop_due(now) {
            let Some(conn) = self.table.get_mut(key) else {
                continue;
            };
            if conn.closing.is_some_and(|until| until <= now) {
                tracing::debug!(session = %conn.handle, "peer took no last bytes: dropped");
                conn.end(&self.rt);
                self.table.remove(key);
                continue;
            }
            self.drive_with(key, buf, 0, |conn, _| conn.core.handle_timeout(now));
        }
    }

    fn on_command(&mut self, buf: &mut [u8], slot: u32, id: SessionId, command: Command) {
        let Some(key) = self.table.key_at(slot) else {
            // The session ended: nothing left to act on.
            return;
        };
        if self
            .table
            .get(key)
            .is_none_or(|conn| conn.handle.id() != id)
        {
            // The session ended (its slot's generation moved on): nothing left to act on.
            return;
        }
        let now = Instant::now();
        self.drive_with(key, buf, 0, |conn, rt| {
            apply_command(
                rt,
                &mut conn.core,
                &mut conn.waiters,
                &conn.handle,
                now,
                command,
            );
        });
    }

    /// Takes up to [`ACCEPT_BATCH`] more connections that are already waiting, without
    /// waiting for any. In a burst (a fleet reconnecting after an outage) one connection per
    /// wake-up left the listen queue to overflow and the clients to retransmit their SYNs a
    /// second later. `next` is cancel-safe, so a poll that finds nothing costs nothing; the
    /// driver's next `wait` polls it again with the task's own waker.
    fn accept_waiting<I: Incoming<S>>(&mut self, incoming: &mut I) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..ACCEPT_BATCH {
            let next = std::pin::pin!(incoming.next());
            match next.poll(&mut cx) {
                std::task::Poll::Ready(accepted) => self.on_accepted(accepted),
                std::task::Poll::Pending => return,
            }
        }
    }

    fn on_accepted(&mut self, accepted: Accepted<S>) {
        let Accepted {
            stream,
            peer,
            local,
            place,
        } = accepted;
        let session = self.add(stream, peer, local, Role::Server, Some(place));
        tracing::debug!(session = %session, "{} connection accepted", self.transport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection costs in the driver's table beside its heap (the session handle, the
    /// socket's registration with the runtime): an idle TCP connection should stay well under
    /// the 2 kB a task per connection took for its read buffer alone.
    #[test]
    fn an_idle_connection_is_small() {
        let conn = std::mem::size_of::<Conn<tokio::net::TcpStream>>();
        let core = std::mem::size_of::<StreamSession>();
        println!("Conn<TcpStream> {conn} bytes, of which StreamSession {core}");
        assert!(conn <= core + 160, "Conn<TcpStream> is {conn} bytes");
        // The request / response state (exchanges and block-wise transfers) is boxed and
        // allocated only while in use: 384 bytes on x86_64 (496 with it inline).
        assert!(core <= 400, "StreamSession is {core} bytes");
    }
}
