//! `coap-keepalive`: serve, ping, demo and certs — the command line of the coap-keepalive stack.
//!
//! It prints for people: one line per event, a summary at the end, and a non-zero exit status
//! on failure. `-v` / `-vv` add the library's tracing output on stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// A CoAP keepalive stack: servers and pings over UDP, DTLS, TCP and TLS that keep sessions
/// provably alive.
#[derive(Debug, Parser)]
#[command(name = "coap-keepalive", version, about)]
struct Args {
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CoAP on the given addresses: answer pings and requests, ping clients every -K idle
    /// seconds, print ping / pong / nack events.
    Serve(cli::serve::ServeArgs),
    /// Ping a CoAP peer like ping(8): one line per ping's fate (numbered by seq), a summary at
    /// the end; exits 1 when no pong came back.
    Ping(cli::ping::PingArgs),
    /// GET a resource and print the response (-o FILE: write its body to FILE).
    Get(cli::request::ExchangeArgs),
    /// PUT a payload (-e TEXT, or -f FILE) to a resource.
    Put(cli::request::ExchangeArgs),
    /// POST a payload (-e TEXT, or -f FILE) to a resource.
    Post(cli::request::ExchangeArgs),
    /// DELETE a resource.
    Delete(cli::request::ExchangeArgs),
    /// Observe a resource (RFC 7641) and print each notification.
    Observe(cli::request::ObserveArgs),
    /// Run a server and clients on loopback over every transport, show pings and pongs both
    /// ways (the server pings the quiet clients), then silence the server: the pinging clients
    /// nack, the quiet ones notice nothing. Needs no arguments and no setup.
    Demo(cli::demo::DemoArgs),
    /// List the sessions of a `serve --metrics ADDR` like ss(8): transport, role, state
    /// (a failed one with its reason), peer, idle time, RTT, pings; filter with -t / -s.
    Sessions(cli::sessions::SessionsArgs),
    /// Write a CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate
    /// with their keys, as PEM, for trying DTLS and TLS out.
    Certs(cli::certs::CertsArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::output::init_tracing(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("coap-keepalive: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = args.verbose;
    let result = runtime.block_on(async {
        match args.command {
            Command::Serve(a) => cli::serve::run(a, verbose).await,
            Command::Ping(a) => cli::ping::run(a).await,
            Command::Demo(a) => cli::demo::run(a).await,
            Command::Get(a) => cli::request::run(coap_keepalive::Method::Get, a).await,
            Command::Put(a) => cli::request::run(coap_keepalive::Method::Put, a).await,
            Command::Post(a) => cli::request::run(coap_keepalive::Method::Post, a).await,
            Command::Delete(a) => cli::request::run(coap_keepalive::Method::Delete, a).await,
            Command::Observe(a) => cli::request::observe(a).await,
            Command::Certs(a) => cli::certs::run(a),
            Command::Sessions(a) => cli::sessions::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("coap-keepalive: {error}");
            ExitCode::FAILURE
        }
    }
}
