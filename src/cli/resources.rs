//! The example resources `serve` offers: `/` (what this is), `/time` (observable, notified
//! every second by default, as libcoap's example server does), `/echo` (keeps what was PUT or
//! POSTed, up to the context's maximum body size, and GET returns it).

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coap_keepalive::observe;
use coap_keepalive::{Context, Request, Resource, Response, Session, Status};

use super::output::Printer;

/// Adds the example resources to `ctx` and, when `notify_every` is set, a task that notifies
/// the observers of `/time` at that period. With `log`, every request to them is printed
/// with the response's code.
pub fn install(ctx: &Context, notify_every: Option<Duration>, log: Option<Printer>) {
    let logged = move |request: &Request, session: &Session, response: Response| {
        if let Some(printer) = log {
            let line = if NOTIFYING.get() {
                notification_line(request, &response)
            } else {
                request_line(request, &response)
            };
            printer.session(session, &line);
        }
        response
    };
    ctx.add_resource(
        Resource::new("/")
            .get(move |request, session| {
                logged(
                    request,
                    session,
                    Response::content_text(
                        "coap-keepalive server: GET /time (observable), GET/PUT/POST /echo",
                    ),
                )
            })
            .attribute("title=\"coap-keepalive\""),
    );
    // Fresh until the next notification is due, and a second more (RFC 7641 §4.3.1: a
    // notification comes before Max-Age runs out): a client whose notifications stop coming,
    // because a NAT forgot its binding say, registers again soon after (§3.3.1).
    let time_max_age = notify_every
        .filter(|every| !every.is_zero())
        .map_or(60, |every| {
            every.as_secs().saturating_add(1).min(u64::from(u32::MAX)) as u32
        });
    ctx.add_resource(
        Resource::new("/time")
            .observable()
            .attribute("rt=\"time\"")
            .get(move |request, session| {
                logged(
                    request,
                    session,
                    Response::content_text(utc_now()).with_max_age(time_max_age),
                )
            }),
    );
    // The body last PUT or POSTed, with its Content-Format. A PUT is answered 2.04 alone (a
    // 1 MB upload is not sent back); a POST's 2.04 carries the body back, as an echo does.
    let echo = Arc::new(Mutex::new(Stored::default()));
    let (get, put, post) = (echo.clone(), echo.clone(), echo);
    ctx.add_resource(
        Resource::new("/echo")
            .get(move |request, session| {
                let stored = lock(&get).clone();
                let mut response = Response::new(Status::Content).with_payload(stored.body);
                if let Some(format) = stored.content_format {
                    response = response.with_content_format(format);
                }
                logged(request, session, response)
            })
            .put(move |request, session| {
                *lock(&put) = Stored::of(request);
                logged(request, session, Response::new(Status::Changed))
            })
            .post(move |request, session| {
                *lock(&post) = Stored::of(request);
                let mut response =
                    Response::new(Status::Changed).with_payload(request.payload.clone());
                if let Some(format) = request.content_format {
                    response = response.with_content_format(format);
                }
                logged(request, session, response)
            }),
    );
    if let Some(period) = notify_every.filter(|p| !p.is_zero()) {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                // The handler runs once per observer inside notify: it is not a request.
                NOTIFYING.set(true);
                ctx.notify("/time");
                NOTIFYING.set(false);
            }
        });
    }
}

/// What `/echo` holds: the last body PUT or POSTed to it, and its Content-Format.
#[derive(Debug, Clone, Default)]
struct Stored {
    body: Vec<u8>,
    content_format: Option<u16>,
}

impl Stored {
    fn of(request: &Request) -> Stored {
        Stored {
            body: request.payload.clone(),
            content_format: request.content_format,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    /// True while `ctx.notify` runs the handlers for the observers (on this thread).
    static NOTIFYING: Cell<bool> = const { Cell::new(false) };
}

/// `notification /time: 2.05, 20 bytes`.
fn notification_line(request: &Request, response: &Response) -> String {
    format!(
        "notification /{}: {}, {} bytes",
        request.path.join("/"),
        response.code(),
        response.payload.len()
    )
}

/// `GET /time (observe) -> 2.05, 20 bytes`: a request and its answer, for people.
fn request_line(request: &Request, response: &Response) -> String {
    let method = format!("{:?}", request.method).to_uppercase();
    let mut path = format!("/{}", request.path.join("/"));
    if !request.query.is_empty() {
        path = format!("{path}?{}", request.query.join("&"));
    }
    let observe = match request.observe {
        Some(observe::REGISTER) => " (observe)",
        Some(observe::DEREGISTER) => " (cancel observe)",
        _ => "",
    };
    let body = if request.payload.is_empty() {
        String::new()
    } else {
        format!(" with {} bytes", request.payload.len())
    };
    format!(
        "{method} {path}{observe}{body} -> {}, {} bytes",
        response.code(),
        response.payload.len()
    )
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC time.
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
