//! `coap-keepalive get | put | post | delete | observe`: one request (or an observation) to a
//! CoAP server, printed for people: the response code, then the payload.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coap_keepalive::Result;
use coap_keepalive::{CoapUri, Context, Method, Request, Response, Session, SessionState};

use super::args::parse_secs;
use super::output::{refuse_multicast, usage_error, Signals};

/// Arguments shared by the request subcommands.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The resource: coap://HOST[:PORT]/PATH[?QUERY] or coap+tcp://...
    uri: String,
    /// Payload to send (PUT / POST).
    #[arg(short = 'e', long = "payload", value_name = "TEXT")]
    payload: Option<String>,
    /// Send the request Non-confirmable (UDP / DTLS).
    #[arg(long)]
    non: bool,
    /// Seconds to wait for the response.
    #[arg(short = 't', long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
    #[command(flatten)]
    security: super::secure::ClientSecurityArgs,
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
}

fn build(method: Method, args: &RequestArgs) -> Result<(CoapUri, Request)> {
    let uri = CoapUri::parse(&args.uri)?;
    let mut request = Request::new(method, &uri.path.join("/"));
    request.query = uri.query.clone();
    if let Some(payload) = &args.payload {
        request = request
            .with_payload(payload.as_bytes().to_vec())
            .with_content_format(coap_keepalive::content_format::TEXT_PLAIN);
    }
    if args.non {
        request = request.non_confirmable();
    }
    Ok((uri, request))
}

/// Connects as the URI and the security options say; prints why on failure.
async fn connect(uri: &CoapUri, args: &RequestArgs) -> Result<Option<(Context, Session)>> {
    let credentials = args.security.credentials(uri.transport)?;
    let ctx = Context::builder()
        .connect_timeout(
            args.security
                .handshake_timeout
                .max(Duration::from_millis(1)),
        )
        .build()?;
    match ctx.connect_with(&uri.to_string(), &credentials).await {
        Ok(session) => Ok(Some((ctx, session))),
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
}

/// What makes this command line wrong although clap accepted it: a payload for a method
/// without one, a flag the URI's transport would ignore, a multicast address.
async fn usage_problem(
    method: Method,
    args: &RequestArgs,
    uri: &CoapUri,
) -> Result<Option<String>> {
    if args.payload.is_some() && !matches!(method, Method::Put | Method::Post) {
        let name = format!("{method:?}").to_uppercase();
        return Ok(Some(format!(
            "-e (--payload) applies to PUT and POST only: a {name} carries no payload"
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

/// Sends one request and prints the response; exits 1 unless it is a 2.xx, 2 on a usage error.
pub async fn run(method: Method, args: RequestArgs) -> Result<ExitCode> {
    let (uri, request) = build(method, &args)?;
    if let Some(problem) = usage_problem(method, &args, &uri).await? {
        return Ok(usage_error(&problem));
    }
    let Some((ctx, session)) = connect(&uri, &args).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let outcome = session.request_with_timeout(request, args.timeout).await;
    ctx.shutdown().await;
    let response = outcome?;
    print_response(&response);
    Ok(if response.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Observes a resource and prints the first response, then each notification, numbered;
/// the last line counts both alike.
pub async fn observe(args: ObserveArgs) -> Result<ExitCode> {
    let mut signals = Signals::new();
    let (uri, request) = build(Method::Get, &args.request)?;
    if let Some(problem) = usage_problem(Method::Get, &args.request, &uri).await? {
        return Ok(usage_error(&problem));
    }
    let Some((ctx, session)) = connect(&uri, &args.request).await? else {
        return Ok(ExitCode::FAILURE);
    };
    session.set_request_timeout(args.request.timeout);
    let mut observation = session.observe(&request.path_str()).await?;
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
            _ = &mut deadline => break,
            _ = signals.recv() => break,
        }
    }
    let _ = observation.cancel().await;
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
