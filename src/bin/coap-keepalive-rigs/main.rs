//! `coap-keepalive-rigs`: the test rigs of the coap-keepalive stack, kept out of the product
//! binary. Each run is bounded in sessions and time and talks to loopback only.
//!
//! - `load`: a load generator that pings a server from N sessions at a fixed rate
//!   (`scripts/bench`);
//! - `soak`: thousands of sessions over every transport connect, ping, fail and reconnect while
//!   RSS and open descriptors must stay flat (`scripts/soak`, and `--quick` in `scripts/test`);
//! - `flood`: one datagram from each of N source addresses at a UDP server (`scripts/flood`,
//!   and `scripts/bench`'s flood row);
//! - `burst`: N sessions start at once, each timed from its first message to its first answer
//!   (`scripts/bench --burst`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "../../cli/args.rs"]
mod args;
mod burst;
mod flood;
mod load;
mod proc;
mod server;
mod soak;

/// Test rigs for coap-keepalive: load, soak and flood runs on loopback.
#[derive(Debug, Parser)]
#[command(name = "coap-keepalive-rigs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load-test a server on loopback: N sessions, each from its own port, ping it at a fixed
    /// rate; prints answered %, p50 / p99 RTT and timeouts (used by scripts/bench).
    Load(Box<load::LoadArgs>),
    /// Soak the stack: thousands of sessions over every transport connect, ping, fail and
    /// reconnect for 10 minutes (1 with --quick) while RSS and open fds must stay flat.
    Soak(soak::SoakArgs),
    /// One datagram from each of N distinct source addresses at a UDP server; peak RSS shown.
    Flood(flood::FloodArgs),
    /// N sessions start at once (TCP connects at one instant, UDP first pings within a
    /// second), then ping once a second: time from each one's first message to its first
    /// answer, and the pongs of a fixed window (used by scripts/bench --burst).
    Burst(burst::BurstArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("coap-keepalive-rigs: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(a) => load::run(*a).await,
            Command::Soak(a) => soak::run(a).await,
            Command::Flood(a) => flood::run(a).await,
            Command::Burst(a) => burst::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("coap-keepalive-rigs: {error}");
            ExitCode::FAILURE
        }
    }
}
