//! Server-side resources: handlers registered by path, `/.well-known/core`, 4.04 / 4.05, and
//! the observers of observable resources (RFC 7641).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::proto::message::{Method, Request, Response, Status, LINK_FORMAT};
use crate::proto::option::{IF_MATCH, IF_NONE_MATCH};
use crate::runtime::session::{lock, Command, Session, SessionId};

/// Answers a request at once. The handler reads every option of the request (its fields,
/// [`Request::option`], the typed accessors) and sets options on the response it returns
/// (ETag, Max-Age, Location-Path, any number): the server sends them all.
pub type Handler = Arc<dyn Fn(&Request, &Session) -> Response + Send + Sync>;
/// Answers a request later, through the [`Responder`] (a separate response).
pub type DeferredHandler = Arc<dyn Fn(&Request, &Session, Responder) + Send + Sync>;

/// Answers now or later, as it decides for each request (the built-in resources' kind).
pub(crate) type DecidingHandler = Arc<dyn Fn(&Request, &Session) -> Reply + Send + Sync>;

/// What a [`DecidingHandler`] chose.
pub(crate) enum Reply {
    /// Answer with this now (piggybacked on the ACK).
    Now(Response),
    /// Acknowledge now and answer through the [`Responder`] later.
    Later(Box<dyn FnOnce(Responder) + Send>),
}

#[derive(Clone)]
enum MethodHandler {
    Now(Handler),
    Later(DeferredHandler),
    Deciding(DecidingHandler),
}

/// A resource: a path, a handler per method, and whether it can be observed.
#[derive(Clone)]
pub struct Resource {
    path: Vec<String>,
    handlers: Vec<(Method, MethodHandler)>,
    observable: bool,
    conditional: bool,
    attributes: Vec<String>,
}

impl Resource {
    /// A resource at `path` (`"/a/b"`) with no methods yet (every method gets 4.05).
    pub fn new(path: &str) -> Resource {
        Resource {
            path: Request::get(path).path,
            handlers: Vec::new(),
            observable: false,
            conditional: false,
            attributes: Vec::new(),
        }
    }

    /// Handles `method` with `handler`.
    pub fn method<F>(mut self, method: Method, handler: F) -> Resource
    where
        F: Fn(&Request, &Session) -> Response + Send + Sync + 'static,
    {
        self.handlers.retain(|(m, _)| *m != method);
        self.handlers
            .push((method, MethodHandler::Now(Arc::new(handler))));
        self
    }

    /// Handles `method` later: the handler gets a [`Responder`] and may answer from any task.
    /// A Confirmable request is acknowledged at once, and the response follows separately.
    pub fn method_deferred<F>(mut self, method: Method, handler: F) -> Resource
    where
        F: Fn(&Request, &Session, Responder) + Send + Sync + 'static,
    {
        self.handlers.retain(|(m, _)| *m != method);
        self.handlers
            .push((method, MethodHandler::Later(Arc::new(handler))));
        self
    }

    /// Handles `method` with a handler that answers some requests now and others later.
    pub(crate) fn method_deciding(mut self, method: Method, handler: DecidingHandler) -> Resource {
        self.handlers.retain(|(m, _)| *m != method);
        self.handlers
            .push((method, MethodHandler::Deciding(handler)));
        self
    }

    /// Handles GET.
    pub fn get<F>(self, handler: F) -> Resource
    where
        F: Fn(&Request, &Session) -> Response + Send + Sync + 'static,
    {
        self.method(Method::Get, handler)
    }

    /// Handles PUT.
    pub fn put<F>(self, handler: F) -> Resource
    where
        F: Fn(&Request, &Session) -> Response + Send + Sync + 'static,
    {
        self.method(Method::Put, handler)
    }

    /// Handles POST.
    pub fn post<F>(self, handler: F) -> Resource
    where
        F: Fn(&Request, &Session) -> Response + Send + Sync + 'static,
    {
        self.method(Method::Post, handler)
    }

    /// Handles DELETE.
    pub fn delete<F>(self, handler: F) -> Resource
    where
        F: Fn(&Request, &Session) -> Response + Send + Sync + 'static,
    {
        self.method(Method::Delete, handler)
    }

    /// Lets clients observe it: a GET with Observe = 0 registers the client, and
    /// [`crate::Context::notify`] sends each observer the GET handler's current answer.
    pub fn observable(mut self) -> Resource {
        self.observable = true;
        self
    }

    /// Says that its handlers evaluate conditional requests (RFC 7252 §5.10.8): they read
    /// [`Request::if_match`] and [`Request::if_none_match`] and answer 4.12 Precondition Failed
    /// when the condition does not hold. Without it, a request carrying If-Match or
    /// If-None-Match gets 4.02 Bad Option and no handler runs, so that a condition is never
    /// ignored (the RFC's answer to an option the server does not process).
    ///
    /// ```
    /// use coap_keepalive::{ETag, IfMatch, Resource, Response, Status};
    ///
    /// let current = ETag::from_u64(7);
    /// let config = Resource::new("/config").conditional().put(move |request, _session| {
    ///     let conditions = request.if_match();
    ///     if !conditions.is_empty() && !conditions.iter().any(|c| c.matches(true, Some(current))) {
    ///         return Response::new(Status::PreconditionFailed);
    ///     }
    ///     Response::new(Status::Changed).with_etag(ETag::from_u64(8))
    /// });
    /// # let _ = config;
    /// ```
    pub fn conditional(mut self) -> Resource {
        self.conditional = true;
        self
    }

    /// Adds a link-format attribute for `/.well-known/core` (e.g. `rt="time"`, `title="Clock"`).
    pub fn attribute(mut self, attribute: &str) -> Resource {
        self.attributes.push(attribute.to_string());
        self
    }

    fn handler(&self, method: Method) -> Option<&MethodHandler> {
        self.handlers
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, h)| h)
    }

    fn link(&self) -> String {
        let mut link = format!("</{}>", self.path.join("/"));
        if self.observable {
            link.push_str(";obs");
        }
        for attribute in &self.attributes {
            link.push(';');
            link.push_str(attribute);
        }
        link
    }
}

/// Sends the response to a request whose handler deferred it. Dropping it unanswered sends a
/// 5.00 Internal Server Error, so the client is never left waiting.
pub struct Responder {
    session: Session,
    method: Method,
    token: Vec<u8>,
    confirmable: bool,
    answered: bool,
}

impl Responder {
    fn to(request: &Request, session: &Session) -> Responder {
        Responder {
            session: session.clone(),
            method: request.method,
            token: request.token.clone(),
            confirmable: request.confirmable,
            answered: false,
        }
    }

    /// Sends `response` as the separate response.
    pub fn respond(mut self, response: Response) {
        self.send(response);
    }

    /// Sends `response` as a Non-confirmable separate response, even to a Confirmable request
    /// (RFC 7252 §5.2.3 allows it): one datagram, never retransmitted, for an answer whose
    /// loss the client tolerates (or, as the keepalive probe-back, measures).
    pub fn respond_non_confirmable(mut self, response: Response) {
        self.confirmable = false;
        self.send(response);
    }

    fn send(&mut self, response: Response) {
        self.answered = true;
        self.session.command(Command::SeparateResponse {
            method: self.method,
            token: self.token.clone(),
            confirmable: self.confirmable,
            response: checked(response, &self.session),
        });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.send(Response::new(Status::InternalServerError));
        }
    }
}

/// `response`, or a 5.00 Internal Server Error in its place when one of its options is invalid
/// (the handler's mistake: no peer gets a message the RFC forbids). Logged at warn.
fn checked(response: Response, session: &Session) -> Response {
    match response.check_options() {
        Ok(()) => response,
        Err(problem) => {
            tracing::warn!(session = %session, %problem, "a handler's response has an invalid option; answered 5.00");
            Response::new(Status::InternalServerError)
                .with_payload(format!("invalid response option: {problem}"))
        }
    }
}

/// What the router did with a request.
pub(crate) enum Routed {
    /// Answer with this now.
    Now(Response),
    /// The handler will answer through its Responder.
    Later,
}

struct Observer {
    session: Session,
    token: Vec<u8>,
    request: Request,
}

/// The resources of a context and their observers.
#[derive(Default)]
pub(crate) struct Router {
    resources: RwLock<BTreeMap<Vec<String>, Resource>>,
    observers: Mutex<BTreeMap<Vec<String>, Vec<Observer>>>,
    sequence: AtomicU32,
}

impl Router {
    pub(crate) fn add(&self, resource: Resource) {
        self.resources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(resource.path.clone(), resource);
    }

    fn resource(&self, path: &[String]) -> Option<Resource> {
        self.resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// The next Observe sequence number (24 bits, shared by the context's resources).
    fn next_sequence(&self) -> u32 {
        self.sequence
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(2)
            & 0x00FF_FFFF
    }

    /// Routes one request from `session`.
    pub(crate) fn route(&self, request: &Request, session: &Session) -> Routed {
        let conditional = [IF_MATCH, IF_NONE_MATCH]
            .into_iter()
            .find(|&number| request.option(number).is_some());
        let refused = |number| {
            let diagnostic = format!(
                "{}: this resource does not evaluate conditional requests",
                crate::proto::wire::options::name(number)
            );
            Routed::Now(Response::new(Status::BadOption).with_payload(diagnostic))
        };
        if request.path == [".well-known", "core"] {
            if let Some(number) = conditional {
                return refused(number);
            }
            return Routed::Now(match request.method {
                Method::Get => self.link_format(),
                _ => Response::new(Status::MethodNotAllowed),
            });
        }
        let Some(resource) = self.resource(&request.path) else {
            return Routed::Now(Response::new(Status::NotFound));
        };
        let Some(handler) = resource.handler(request.method).cloned() else {
            return Routed::Now(Response::new(Status::MethodNotAllowed));
        };
        if let Some(number) = conditional.filter(|_| !resource.conditional) {
            return refused(number);
        }
        let observing = resource.observable && request.method == Method::Get;
        if observing {
            match request.observe {
                Some(crate::proto::message::OBSERVE_REGISTER) => self.register(request, session),
                Some(crate::proto::message::OBSERVE_DEREGISTER) => {
                    self.forget(session.id(), &request.token)
                }
                _ => {}
            }
        }
        match handler {
            MethodHandler::Now(handler) => {
                let mut response = checked(handler(request, session), session);
                if observing
                    && request.observe == Some(crate::proto::message::OBSERVE_REGISTER)
                    && response.is_success()
                {
                    response.observe = Some(self.next_sequence());
                } else if observing
                    && request.observe == Some(crate::proto::message::OBSERVE_REGISTER)
                {
                    // An error ends the observation (RFC 7641 §4.2).
                    self.forget(session.id(), &request.token);
                }
                Routed::Now(response)
            }
            MethodHandler::Later(handler) => {
                handler(request, session, Responder::to(request, session));
                Routed::Later
            }
            MethodHandler::Deciding(handler) => match handler(request, session) {
                Reply::Now(response) => Routed::Now(checked(response, session)),
                Reply::Later(answer) => {
                    answer(Responder::to(request, session));
                    Routed::Later
                }
            },
        }
    }

    fn register(&self, request: &Request, session: &Session) {
        let mut observers = lock(&self.observers);
        let list = observers.entry(request.path.clone()).or_default();
        list.retain(|o| !(o.session.id() == session.id() && o.token == request.token));
        list.push(Observer {
            session: session.clone(),
            token: request.token.clone(),
            request: request.clone(),
        });
    }

    /// Forgets the observation of `session` with `token` (deregistration, RST to a notification).
    pub(crate) fn forget(&self, session: SessionId, token: &[u8]) {
        for list in lock(&self.observers).values_mut() {
            list.retain(|o| !(o.session.id() == session && o.token == token));
        }
    }

    /// Forgets every observation of an ended session.
    pub(crate) fn forget_session(&self, session: SessionId) {
        let mut observers = lock(&self.observers);
        for list in observers.values_mut() {
            list.retain(|o| o.session.id() != session);
        }
        observers.retain(|_, list| !list.is_empty());
    }

    /// How many observations each session holds.
    pub(crate) fn observation_counts(&self) -> std::collections::HashMap<SessionId, usize> {
        let mut counts = std::collections::HashMap::new();
        for list in lock(&self.observers).values() {
            for observer in list {
                *counts.entry(observer.session.id()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Number of observers of `path`.
    pub(crate) fn observer_count(&self, path: &str) -> usize {
        let path = Request::get(path).path;
        lock(&self.observers).get(&path).map_or(0, Vec::len)
    }

    /// Sends every observer of `path` the GET handler's current answer. Returns how many
    /// notifications went out.
    pub(crate) fn notify(&self, path: &str) -> usize {
        let path = Request::get(path).path;
        let Some(resource) = self.resource(&path) else {
            return 0;
        };
        let Some(MethodHandler::Now(handler)) = resource.handler(Method::Get).cloned() else {
            return 0;
        };
        let observers: Vec<(Session, Vec<u8>, Request)> = lock(&self.observers)
            .get(&path)
            .map(|list| {
                list.iter()
                    .map(|o| (o.session.clone(), o.token.clone(), o.request.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let sequence = self.next_sequence();
        for (session, token, request) in &observers {
            let mut response = checked(handler(request, session), session);
            if response.is_success() {
                response.observe = Some(sequence);
            } else {
                self.forget(session.id(), token);
            }
            session.command(Command::Notify {
                token: token.clone(),
                response,
            });
        }
        observers.len()
    }

    fn link_format(&self) -> Response {
        let links: Vec<String> = self
            .resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Resource::link)
            .collect();
        Response::new(Status::Content)
            .with_payload(links.join(",").into_bytes())
            .with_content_format(LINK_FORMAT)
    }
}
