//! `coap-keepalive certs`: a CA, a server and a client certificate with their keys, as PEM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use coap_keepalive::credentials::CertificateSet;
use coap_keepalive::{Error, Result};

/// Arguments of `certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, ca.key, server.pem, server.key, client.pem and client.key
    /// into (created if missing; files of those names are replaced).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    out: PathBuf,
}

/// Generates the set and prints the paths written.
pub fn run(args: CertsArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Certificate(format!("cannot create {}: {e}", args.out.display())))?;
    let set = CertificateSet::generate()?;
    println!(
        "a CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate, \
         ECDSA P-256, valid for ten years:"
    );
    for path in set.write_to(&args.out)? {
        println!("  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
