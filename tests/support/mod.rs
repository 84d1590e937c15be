//! Helpers shared by the integration tests that run real peers: libcoap's command-line tools as
//! child processes ([`libcoap`]), fresh certificates in a temporary directory ([`Pki`]), and
//! bounded waits.
//!
//! Each test target includes this with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod libcoap;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use coap_keepalive::certs::{read_pem, CertificateSet};
use coap_keepalive::{ClientCredentials, PemIdentity, ServerCredentials};

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs `body`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its time limit of {limit:?}"))
}

/// The next item of `rx`, failing the test if none arrives within `limit`.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, limit: Duration, what: &str) -> T {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
        .unwrap_or_else(|| panic!("{what} channel closed"))
}

/// Everything `rx` holds right now.
pub fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut items = Vec::new();
    while let Ok(item) = rx.try_recv() {
        items.push(item);
    }
    items
}

/// A fresh CA with a server certificate (`localhost`, `127.0.0.1`, `::1`) and a client
/// certificate, written to a temporary directory (`ca.pem`, `server.pem`, `server.key`,
/// `client.pem`, `client.key`, ...) that lives as long as this value.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The generated set, in memory.
    pub set: CertificateSet,
}

impl Pki {
    /// Generates a new set and writes it out.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let set = CertificateSet::generate().expect("generate certificates");
        set.write_to(dir.path()).expect("write certificates");
        Pki { dir, set }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one of the files (`"ca.pem"`, `"client.key"`, ...), as a command-line argument.
    pub fn path(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        assert!(path.exists(), "{} was not written", path.display());
        path.to_str().expect("UTF-8 temporary path").to_owned()
    }

    /// The CA certificate, read back from its file as an application would.
    pub fn ca_pem(&self) -> String {
        read_pem(&self.dir.path().join("ca.pem")).expect("read ca.pem")
    }

    /// The identity (`"server"` or `"client"`) read back from its files.
    pub fn identity(&self, who: &str) -> PemIdentity {
        PemIdentity::from_files(
            &self.dir.path().join(format!("{who}.pem")),
            &self.dir.path().join(format!("{who}.key")),
        )
        .expect("read identity")
    }

    /// Server credentials with the server certificate; clients must present a certificate
    /// signed by the CA when `require_client_certificate`.
    pub fn server_credentials(&self, require_client_certificate: bool) -> ServerCredentials {
        ServerCredentials::Certificate {
            identity: self.identity("server"),
            client_ca_pem: require_client_certificate.then(|| self.ca_pem()),
        }
    }

    /// Client credentials that verify the server against the CA, presenting the client
    /// certificate when `present_client_certificate`.
    pub fn client_credentials(&self, present_client_certificate: bool) -> ClientCredentials {
        ClientCredentials::Certificate {
            ca_pem: Some(self.ca_pem()),
            identity: present_client_certificate.then(|| self.identity("client")),
            insecure: false,
        }
    }
}
