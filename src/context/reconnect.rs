//! A client session that comes back on its own: when the session fails (a keepalive nack, a
//! closed or reset connection, a NAT that forgot the binding) or the peer closes it, a
//! supervisor task connects again after a [`ReconnectPolicy`] wait (exponential backoff with
//! full jitter), registers its observations again on the new session, and reports what it
//! does as [`EventKind::Reconnecting`], [`EventKind::Reconnected`] and
//! [`EventKind::ReconnectGaveUp`] on [`Context::events`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::credentials::ClientCredentials;
use crate::proto::backoff::ReconnectPolicy;
use crate::proto::error::Result;
use crate::proto::message::{Request, Response};
use crate::runtime::events::EventKind;
use crate::runtime::session::{Observation, Session};

/// A client session to one URI that connects again whenever it ends, until it is closed or
/// dropped (or its policy gives up). Requests go to the current session; observations made
/// through it are registered again on every new one and keep their stream.
///
/// ```no_run
/// # async fn example() -> coap_keepalive::Result<()> {
/// use std::time::Duration;
/// use coap_keepalive::{ClientCredentials, Context, ReconnectPolicy};
///
/// let ctx = Context::new();
/// let policy = ReconnectPolicy::new(Duration::from_secs(1), Duration::from_secs(60));
/// let client = ctx
///     .connect_reconnecting("coap+tcp://192.0.2.1", &ClientCredentials::None, policy)
///     .await?;
/// let mut time = client.observe("/time").await?;
/// while let Some(notification) = time.next().await {
///     println!("{}", notification.payload_str());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReconnectingSession {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    current: watch::Sender<Session>,
    observations: Mutex<Vec<Watched>>,
    stop: watch::Sender<bool>,
}

/// An observation to register again on every new session.
#[derive(Debug)]
struct Watched {
    path: String,
    notifications: mpsc::UnboundedSender<Response>,
}

impl Context {
    /// Connects to `uri` as [`Context::connect_with`] does, and keeps connecting again, as
    /// `policy` says, whenever the session ends without [`ReconnectingSession::close`]. The
    /// first connection's error is returned as it is: only a session that existed is
    /// restored.
    pub async fn connect_reconnecting(
        &self,
        uri: &str,
        credentials: &ClientCredentials,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingSession> {
        let session = self.connect_with(uri, credentials).await?;
        let shared = Arc::new(Shared {
            current: watch::channel(session).0,
            observations: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
        });
        let supervisor = Supervisor {
            ctx: self.clone(),
            uri: uri.to_owned(),
            credentials: credentials.clone(),
            policy,
            shared: Arc::clone(&shared),
        };
        self.rt.spawn(supervisor.run());
        Ok(ReconnectingSession { shared })
    }
}

impl ReconnectingSession {
    /// The current session (while reconnecting, the one that ended).
    pub fn session(&self) -> Session {
        self.shared.current.borrow().clone()
    }

    /// Sends `request` on the current session.
    pub async fn request(&self, request: Request) -> Result<Response> {
        self.session().request(request).await
    }

    /// Observes `path` on the current session, and again on every session after it. The
    /// first response is the registration's; on each new session the response to the new
    /// registration comes as the next notification (the representation there and then).
    pub async fn observe(&self, path: &str) -> Result<ReconnectingObservation> {
        let observation = self.session().observe(path).await?;
        let first = observation.first().clone();
        let (notifications, rx) = mpsc::unbounded_channel();
        forward(observation, notifications.clone());
        lock(&self.shared.observations).push(Watched {
            path: path.to_owned(),
            notifications,
        });
        Ok(ReconnectingObservation {
            first,
            notifications: rx,
        })
    }

    /// Stops reconnecting and closes the current session; observations end.
    pub fn close(&self) {
        self.shared.stop.send_replace(true);
        lock(&self.shared.observations).clear();
        self.session().close();
    }
}

impl Drop for ReconnectingSession {
    fn drop(&mut self) {
        self.close();
    }
}

/// An observation of a [`ReconnectingSession`]: its notifications, across sessions. It ends
/// when the reconnecting session is closed, dropped or gives up, or the server stops it.
#[derive(Debug)]
pub struct ReconnectingObservation {
    first: Response,
    notifications: mpsc::UnboundedReceiver<Response>,
}

impl ReconnectingObservation {
    /// The response to the first registration.
    pub fn first(&self) -> &Response {
        &self.first
    }

    /// The next notification (on a new session, first the answer to its registration).
    pub async fn next(&mut self) -> Option<Response> {
        self.notifications.recv().await
    }
}

impl Stream for ReconnectingObservation {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Response>> {
        self.notifications.poll_recv(cx)
    }
}

/// Hands the notifications of `observation` on until it ends or nobody listens.
fn forward(mut observation: Observation, to: mpsc::UnboundedSender<Response>) {
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = observation.next() => Some(next),
                _ = to.closed() => None,
            };
            match next {
                Some(Some(notification)) => {
                    if to.send(notification).is_err() {
                        break;
                    }
                }
                // The observation ended with its session (or at the server).
                Some(None) => return,
                None => break,
            }
        }
        // Nobody listens any more: deregister (RFC 7641 §3.6).
        let _ = observation.cancel().await;
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The task that watches the current session and replaces it when it ends.
struct Supervisor {
    ctx: Context,
    uri: String,
    credentials: ClientCredentials,
    policy: ReconnectPolicy,
    shared: Arc<Shared>,
}

impl Supervisor {
    async fn run(self) {
        let mut stop = self.shared.stop.subscribe();
        let mut shutdown = self.ctx.rt.shutdown_signal();
        let mut rng = self.ctx.rt.session_rng();
        loop {
            let ended = self.shared.current.borrow().clone();
            tokio::select! {
                _ = ended.closed() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = shutdown.wait_for(|down| *down) => return,
            }
            if *stop.borrow() || *shutdown.borrow() {
                return;
            }
            let mut attempt = 0u32;
            let session = loop {
                let Some(delay) = self.policy.delay(attempt, &mut rng) else {
                    tracing::warn!(session = %ended, attempts = attempt, "reconnect gave up");
                    self.emit(&ended, EventKind::ReconnectGaveUp { attempts: attempt });
                    lock(&self.shared.observations).clear();
                    return;
                };
                attempt += 1;
                tracing::info!(session = %ended, attempt, ?delay, "reconnecting");
                self.emit(&ended, EventKind::Reconnecting { attempt, delay });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = shutdown.wait_for(|down| *down) => return,
                }
                match self.ctx.connect_with(&self.uri, &self.credentials).await {
                    Ok(session) => break session,
                    Err(error) => tracing::debug!(%error, attempt, "reconnect attempt failed"),
                }
            };
            let restored = self.restore(&session).await;
            self.shared.current.send_replace(session.clone());
            tracing::info!(session = %session, previous = %ended, restored, "reconnected");
            self.emit(
                &session,
                EventKind::Reconnected {
                    previous: ended.id(),
                    restored,
                },
            );
        }
    }

    /// Registers every observation still listened to on `session`; how many took.
    async fn restore(&self, session: &Session) -> usize {
        let watched: Vec<(String, mpsc::UnboundedSender<Response>)> = {
            let mut observations = lock(&self.shared.observations);
            observations.retain(|w| !w.notifications.is_closed());
            observations
                .iter()
                .map(|w| (w.path.clone(), w.notifications.clone()))
                .collect()
        };
        let mut restored = 0;
        for (path, notifications) in watched {
            match session.observe(&path).await {
                Ok(observation) => {
                    restored += 1;
                    // The registration's answer: the representation on the new session.
                    let _ = notifications.send(observation.first().clone());
                    if observation.first().observe.is_some() {
                        forward(observation, notifications);
                    }
                }
                Err(error) => {
                    tracing::warn!(session = %session, %path, %error, "observation not restored");
                }
            }
        }
        restored
    }

    fn emit(&self, session: &Session, kind: EventKind) {
        self.ctx.rt.handlers.emit(session, kind);
    }
}
