//! `coap-keepalive get | put | post | delete | observe`: one request (or an observation) to a
//! CoAP server, printed for people: the response code, then the payload (or, with `-o FILE`,
//! the body written to FILE and a line saying so). Bodies larger than a block move block-wise
//! (RFC 7959) without the user seeing blocks; `-b` picks the block size.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::Result;
use coap_keepalive::{CoapUri, Context, Method, Request, Response, Session, SessionState, Status};
use coap_keepalive::{
    Event, EventKind, Events, Observation, ReconnectPolicy, ReconnectingObservation,
    ReconnectingSession,
};

use super::args::{parse_block_size, parse_body_size, parse_secs};
use super::output::{refuse_multicast, usage_error, Signals};
use super::reconnect::{self, ReconnectArgs};

/// Arguments shared by the request subcommands and `observe`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The resource: coap://HOST[:PORT]/PATH[?QUERY] or coap+tcp://...
    uri: String,
    /// Payload to send, as text (PUT / POST).
    #[arg(
        short = 'e',
        long = "payload",
        value_name = "TEXT",
        conflicts_with = "file"
    )]
    payload: Option<String>,
    /// Send this file's bytes as the payload (PUT / POST; `-` reads stdin). A body larger than
    /// a block goes block-wise (RFC 7959 Block1).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Block size of block-wise transfer (RFC 7959), both ways: 16, 32, 64, 128, 256, 512 or
    /// 1024 bytes (default 1024). A GET asks the server for blocks this small.
    #[arg(short = 'b', long = "block-size", value_name = "BYTES", value_parser = parse_block_size)]
    block_size: Option<usize>,
    /// The largest response body to fetch block-wise, in bytes (default 1048576, 1 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_body_size)]
    max_body_size: Option<usize>,
    /// Send the request Non-confirmable (UDP / DTLS).
    #[arg(long)]
    non: bool,
    /// Seconds to wait for the response; block-wise, for each block's (the clock restarts with
    /// every block, so a large body may take longer in all).
    #[arg(short = 't', long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
    #[command(flatten)]
    security: super::secure::ClientSecurityArgs,
    /// The keepalive and transmission settings (`-K` keeps an observation's session pinged).
    #[command(flatten)]
    settings: super::settings::KeepaliveArgs,
}

/// Arguments of `get`, `put`, `post` and `delete`: one request and its response.
#[derive(Debug, Args)]
pub struct ExchangeArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Write the body of a 2.xx response to FILE (`-`: print it, as without -o); the body of
    /// any other response is printed and FILE left alone.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Arguments of `observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Stop after this many seconds (0: until interrupted or the observation ends).
    #[arg(short = 's', long = "duration", value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    duration: Duration,
    /// Stop after this many notifications, the first response not counted (0: no limit).
    #[arg(short = 'c', long, default_value_t = 0)]
    count: u64,
    #[command(flatten)]
    reconnect: ReconnectArgs,
    /// coap:// only: the session's keepalive interval found by the adaptive search (as
    /// `ping --adaptive`; -K is the fixed interval until then, default 15 s), one line per
    /// step of the search.
    #[command(flatten)]
    adaptive: super::adaptive::AdaptiveArgs,
}

/// The fixed keepalive interval of `observe --adaptive` when no -K is given.
const ADAPTIVE_FALLBACK: Duration = Duration::from_secs(15);

/// The notifications `observe` prints: of one session's observation, or, with `--reconnect`,
/// of one that is registered again on every new session.
enum Watching {
    Once(Observation),
    Reconnecting(ReconnectingObservation),
}

impl Watching {
    fn first(&self) -> &Response {
        match self {
            Watching::Once(o) => o.first(),
            Watching::Reconnecting(o) => o.first(),
        }
    }

    async fn next(&mut self) -> Option<Response> {
        match self {
            Watching::Once(o) => o.next().await,
            Watching::Reconnecting(o) => o.next().await,
        }
    }

    async fn cancel(self) {
        match self {
            Watching::Once(o) => {
                let _ = o.cancel().await;
            }
            // Dropping it deregisters at the current session.
            Watching::Reconnecting(o) => drop(o),
        }
    }
}

/// The request the arguments describe, its body read (from `-e`, `-f FILE` or stdin).
fn build(
    method: Method,
    uri: &CoapUri,
    args: &RequestArgs,
) -> std::result::Result<Request, String> {
    let mut request = Request::new(method, &uri.path.join("/"));
    request.query = uri.query.clone();
    if let Some(payload) = &args.payload {
        request = request
            .with_payload(payload.as_bytes().to_vec())
            .with_content_format(coap_keepalive::content_format::TEXT_PLAIN);
    }
    if let Some(file) = &args.file {
        // Whatever the file holds: no Content-Format is claimed for it.
        request = request.with_payload(read_body(file)?);
    }
    if let Some(bytes) = args.block_size {
        request = request.with_block_size(bytes);
    }
    if args.non {
        request = request.non_confirmable();
    }
    Ok(request)
}

/// The bytes of `file`, or of stdin for `-`.
fn read_body(file: &Path) -> std::result::Result<Vec<u8>, String> {
    if file == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
        return Ok(body);
    }
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Connects as the URI and the security options say; prints why on failure. With a
/// `reconnect` policy the session connects again whenever it ends.
async fn connect(uri: &CoapUri, args: &RequestArgs) -> Result<Option<(Context, Session)>> {
    Ok(connect_with_policy(uri, args, None)
        .await?
        .map(|(ctx, session, _)| (ctx, session)))
}

async fn connect_with_policy(
    uri: &CoapUri,
    args: &RequestArgs,
    reconnect: Option<ReconnectPolicy>,
) -> Result<Option<(Context, Session, Option<ReconnectingSession>)>> {
    let credentials = args.security.credentials(uri.transport)?;
    let mut builder = args.settings.apply(Context::builder()).connect_timeout(
        args.security
            .handshake_timeout
            .max(Duration::from_millis(1)),
    );
    if let Some(bytes) = args.block_size {
        // For observe, which has no per-request setting, and for every later block.
        builder = builder.block_size(bytes);
    }
    if let Some(bytes) = args.max_body_size {
        builder = builder.max_body_size(bytes);
    }
    let ctx = builder.build()?;
    let connected = match reconnect {
        Some(policy) => ctx
            .connect_reconnecting(&uri.to_string(), &credentials, policy)
            .await
            .map(|client| (client.session(), Some(client))),
        None => ctx
            .connect_with(&uri.to_string(), &credentials)
            .await
            .map(|session| (session, None)),
    };
    match connected {
        Ok((session, client)) => Ok(Some((ctx, session, client))),
        Err(error) => {
            let why = super::secure::explain(&error, uri.transport, &credentials);
            eprintln!("coap-keepalive: {uri}: {why}");
            Ok(None)
        }
    }
}

fn print_response(response: &Response) {
    println!("{}", response.status_line());
    if !response.payload.is_empty() {
        println!("{}", response.payload_str());
    }
    if let Some(limit) = response
        .size1()
        .filter(|_| response.status == Status::RequestEntityTooLarge)
    {
        println!("(the server takes bodies of at most {limit} bytes: Size1)");
    }
}

/// Prints the response; with `output` (not `-`) a 2.xx's body goes to that file instead, and a
/// line says how many bytes did. Fails when the file cannot be written.
fn deliver(response: &Response, output: Option<&Path>) -> std::result::Result<(), String> {
    let Some(path) = output.filter(|p| *p != Path::new("-") && response.is_success()) else {
        print_response(response);
        return Ok(());
    };
    println!("{}", response.status_line());
    std::fs::write(path, &response.payload)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let bytes = response.payload.len();
    let plural = if bytes == 1 { "" } else { "s" };
    println!("{bytes} byte{plural} written to {}", path.display());
    Ok(())
}

/// What makes this command line wrong although clap accepted it: a payload for a method
/// without one, a flag the URI's transport would ignore, a multicast address.
async fn usage_problem(
    method: Method,
    args: &RequestArgs,
    uri: &CoapUri,
) -> Result<Option<String>> {
    let payload = if args.payload.is_some() {
        Some("-e (--payload)")
    } else {
        args.file.as_ref().map(|_| "-f (--file)")
    };
    if let Some(flag) = payload.filter(|_| !matches!(method, Method::Put | Method::Post)) {
        let name = format!("{method:?}").to_uppercase();
        return Ok(Some(format!(
            "{flag} applies to PUT and POST only: a {name} carries no payload"
        )));
    }
    if args.non && uri.transport.ping_style() != coap_keepalive::PingStyle::Datagram {
        return Ok(Some(format!(
            "--non applies to coap:// and coaps:// only: {}:// has no message types",
            uri.transport.scheme()
        )));
    }
    if let Some(problem) = args.security.ignored_by(uri.transport) {
        return Ok(Some(problem));
    }
    let peer = uri.resolve().await?;
    Ok(refuse_multicast(peer.ip()).map(|problem| format!("{uri}: {problem}")))
}

/// Sends one request and prints the response; exits 1 unless it is a 2.xx (or when a file
/// cannot be read or written), 2 on a usage error.
pub async fn run(method: Method, args: ExchangeArgs) -> Result<ExitCode> {
    let ExchangeArgs {
        request: args,
        output,
    } = args;
    let uri = CoapUri::parse(&args.uri)?;
    if let Some(problem) = usage_problem(method, &args, &uri).await? {
        return Ok(usage_error(&problem));
    }
    let request = match build(method, &uri, &args) {
        Ok(request) => request,
        Err(why) => return Ok(failure(&why)),
    };
    let Some((ctx, session)) = connect(&uri, &args).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let outcome = session.request_with_timeout(request, args.timeout).await;
    ctx.shutdown().await;
    let response = outcome?;
    if let Err(why) = deliver(&response, output.as_deref()) {
        return Ok(failure(&why));
    }
    Ok(if response.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Says why on stderr; exit status 1.
fn failure(why: &str) -> ExitCode {
    eprintln!("coap-keepalive: {why}");
    ExitCode::FAILURE
}

/// The next event, when there are events to read; pending forever otherwise.
async fn next_event(events: &mut Option<Events>) -> Option<Event> {
    match events {
        Some(events) => loop {
            match events.recv().await {
                Some(Ok(event)) => return Some(event),
                Some(Err(_lagged)) => continue,
                None => return std::future::pending().await,
            }
        },
        None => std::future::pending().await,
    }
}

/// Observes a resource and prints the first response, then each notification, numbered;
/// the last line counts both alike.
pub async fn observe(args: ObserveArgs) -> Result<ExitCode> {
    let mut signals = Signals::new();
    let uri = CoapUri::parse(&args.request.uri)?;
    if let Some(problem) = usage_problem(Method::Get, &args.request, &uri).await? {
        return Ok(usage_error(&problem));
    }
    if let Some(problem) = args.adaptive.problem(uri.transport) {
        return Ok(usage_error(&problem));
    }
    if args.adaptive.is_on() && args.reconnect.reconnect {
        return Ok(usage_error(
            "--adaptive and --reconnect together are not supported yet: the search follows one session",
        ));
    }
    let policy = args.reconnect.policy();
    let Some((ctx, session, client)) = connect_with_policy(&uri, &args.request, policy).await?
    else {
        return Ok(ExitCode::FAILURE);
    };
    let fixed = args.request.settings.keepalive.unwrap_or(ADAPTIVE_FALLBACK);
    let adaptive_config = args.adaptive.config(fixed);
    let mut events = (client.is_some() || adaptive_config.is_some()).then(|| ctx.events());
    // Held for the run: dropping it stops the search (the interval found stays).
    let _adaptive = match adaptive_config {
        Some(config) => {
            session.set_keepalive_interval(Some(fixed));
            Some(coap_keepalive::AdaptiveKeepalive::start(
                &ctx, &session, config,
            )?)
        }
        None => None,
    };
    session.set_request_timeout(args.request.timeout);
    let path = uri.path.join("/");
    let mut observation = match &client {
        Some(client) => Watching::Reconnecting(client.observe(&path).await?),
        None => Watching::Once(session.observe(&path).await?),
    };
    let first = observation.first();
    match first.observe {
        Some(sequence) => println!("{} (registered, observe {sequence})", first.status_line()),
        None => println!("{}", first.status_line()),
    }
    if !first.payload.is_empty() {
        println!("{}", first.payload_str());
    }
    if first.observe.is_none() {
        println!("(the server did not register the observation)");
        ctx.shutdown().await;
        return Ok(ExitCode::FAILURE);
    }
    let deadline = async {
        if args.duration.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(args.duration).await
        }
    };
    tokio::pin!(deadline);
    let mut seen = 0u64;
    // Whether the observation ended before the run did (the user's count, deadline or signal).
    let mut ended_early = false;
    loop {
        tokio::select! {
            notification = observation.next() => match notification {
                Some(response) => {
                    seen += 1;
                    let sequence = response
                        .observe
                        .map(|n| format!(" (observe {n})"))
                        .unwrap_or_default();
                    println!("notification {seen}: {}{sequence}", response.status_line());
                    if !response.payload.is_empty() {
                        println!("{}", response.payload_str());
                    }
                    if args.count > 0 && seen >= args.count {
                        break;
                    }
                }
                None => {
                    let why = match session.state() {
                        SessionState::Failed(reason) => {
                            format!("the session failed: {}", reason.as_str())
                        }
                        SessionState::Closed => "the session closed".to_owned(),
                        _ => "by the server, or a notification was rejected".to_owned(),
                    };
                    println!("(observation ended early: {why})");
                    ended_early = true;
                    break;
                }
            },
            Some(event) = next_event(&mut events) => {
                if let EventKind::Adaptive(step) = &event.kind {
                    if event.session.id() == session.id() {
                        println!("(adaptive: {step})");
                    }
                } else if let Some(said) = reconnect::said(&event) {
                    println!("({})", said.line);
                    if said.settled == Some(false) {
                        ended_early = true;
                        break;
                    }
                }
            }
            _ = &mut deadline => break,
            _ = signals.recv() => break,
        }
    }
    observation.cancel().await;
    drop(client);
    ctx.shutdown().await;
    println!(
        "the first response and {seen} notification{}",
        if seen == 1 { "" } else { "s" }
    );
    Ok(if ended_early {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
