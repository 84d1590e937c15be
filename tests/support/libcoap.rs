//! libcoap 4.3.1's command-line tools (Debian's libcoap3-bin) as children of a test.
//!
//! - [`LibcoapProcess`]: any `coap-client-*` / `coap-server-*`, its stdout (the `-v 7` log)
//!   and stderr captured to files in its own temporary directory; killed and reaped on drop
//!   (continued first if it was stopped), so it dies however the test ends.
//! - [`LibcoapServer`]: `coap-server-* -A 127.0.0.1 -p P` on a port pair of its own (UDP and
//!   TCP on P, DTLS and TLS on P+1 when secured), returned once it answers.
//!
//! A missing binary fails the test with how to install it: CI never silently skips.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

/// What to do when a libcoap binary is missing.
pub const INSTALL_HINT: &str = "install libcoap3-bin (scripts/test does this)";

/// What libcoap's `/` answers: the first line of coap-server's index text.
pub const SERVER_INDEX: &str = "This is a test server made with libcoap";

/// How long a libcoap server gets to come up.
const STARTUP: Duration = Duration::from_secs(10);
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);

/// One of libcoap's three builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// No DTLS / TLS: `coap://` and `coap+tcp://` only.
    Notls,
    /// OpenSSL.
    Openssl,
    /// GnuTLS.
    Gnutls,
}

impl Build {
    /// `notls`, `openssl` or `gnutls`.
    pub fn name(self) -> &'static str {
        match self {
            Build::Notls => "notls",
            Build::Openssl => "openssl",
            Build::Gnutls => "gnutls",
        }
    }

    /// The client binary of this build.
    pub fn client(self) -> String {
        format!("coap-client-{}", self.name())
    }

    /// The server binary of this build.
    pub fn server(self) -> String {
        format!("coap-server-{}", self.name())
    }
}

/// A running libcoap binary. Dropping it kills it.
pub struct LibcoapProcess {
    command_line: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    // Removed after the child is dead (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl LibcoapProcess {
    /// Starts `program` with `args`, stdout and stderr going to files of its own.
    ///
    /// Panics with [`INSTALL_HINT`] when `program` is not installed.
    pub fn spawn<I, S>(program: &str, args: I) -> LibcoapProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let command_line = std::iter::once(program.to_owned())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let dir = tempfile::tempdir().expect("temporary directory");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"))
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("{program} not found: {INSTALL_HINT}")
            }
            Err(error) => panic!("cannot start {program}: {error}"),
        };
        LibcoapProcess {
            command_line,
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stdout so far: with `-v 7`, libcoap's debug log (and received payloads).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The command line and everything it wrote, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "--- {} ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.command_line,
            self.log(),
            self.stderr()
        )
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for it to exit on its own, failing the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}\n{}",
                self.report()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, `"TERM"`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// Freezes it (SIGSTOP): it stops answering, but its sockets stay open.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Asks it to exit (SIGTERM) and waits up to `limit`; `None` if it did not (drop kills it).
    pub async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }
}

impl Drop for LibcoapProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Continue a frozen child first, so that nothing is left stopped behind us even
            // should the kill below fail.
            let _ = Command::new("kill")
                .args(["-s", "CONT", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A port P such that UDP and TCP on P and P+1 of loopback were free a moment ago.
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let udp = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if port >= u16::MAX - 1 {
            continue;
        }
        let free = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
            && StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && StdTcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port pair on loopback");
}

/// A running `coap-server-*` on loopback port P (UDP, TCP) and, when secured, P+1 (DTLS, TLS).
pub struct LibcoapServer {
    process: LibcoapProcess,
    port: u16,
    secured: bool,
}

impl LibcoapServer {
    /// Starts `build`'s server with `args` (after `-A 127.0.0.1 -p P`) on a free port pair and
    /// returns once it answers: an empty CON on UDP P gets its RST, TCP P accepts, and, when
    /// `args` secure it (`-k` or `-c`), TLS P+1 accepts — libcoap binds UDP, DTLS, TCP and TLS
    /// in that order, so DTLS P+1 is bound by then. A port taken in the meantime (the server
    /// exits) is retried with another.
    pub async fn start(build: Build, args: &[&str]) -> LibcoapServer {
        let program = build.server();
        let secured = args.iter().any(|a| *a == "-k" || *a == "-c");
        for _attempt in 0..5 {
            let port = free_port_pair();
            let port_arg = port.to_string();
            let mut all_args = vec!["-A", "127.0.0.1", "-p", &port_arg];
            all_args.extend_from_slice(args);
            let mut server = LibcoapServer {
                process: LibcoapProcess::spawn(&program, &all_args),
                port,
                secured,
            };
            if server.wait_ready().await {
                return server;
            }
            eprintln!(
                "{program} exited on port {port}; trying another\n{}",
                server.process.report()
            );
        }
        panic!("{program} did not start on any of 5 port pairs");
    }

    /// Polls until every port answers; false if the server exited first.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind udp probe");
        udp.connect(self.addr()).await.expect("connect udp probe");
        let mut udp_ready = false;
        let mut message_id: u16 = 0x5a00;
        loop {
            if self.process.exited().is_some() {
                return false;
            }
            if !udp_ready {
                message_id = message_id.wrapping_add(1);
                udp_ready = answers_empty_con(&udp, message_id).await;
            }
            if udp_ready
                && TcpStream::connect(self.addr()).await.is_ok()
                && (!self.secured || TcpStream::connect(self.secure_addr()).await.is_ok())
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready on {} after {STARTUP:?}\n{}",
                self.process.command_line,
                self.port,
                self.process.report()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// UDP and TCP: loopback port P.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// DTLS and TLS: loopback port P+1.
    pub fn secure_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port + 1).into()
    }

    /// The server process (signals, log).
    pub fn process(&mut self) -> &mut LibcoapProcess {
        &mut self.process
    }

    /// Everything the server wrote, for failure messages.
    pub fn report(&self) -> String {
        self.process.report()
    }
}

/// True when an empty CON with `message_id` gets its RST within a short wait.
async fn answers_empty_con(udp: &UdpSocket, message_id: u16) -> bool {
    let [hi, lo] = message_id.to_be_bytes();
    if udp.send(&[0x40, 0x00, hi, lo]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // Before the server is up, ICMP port unreachable makes recv fail at once.
    match tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut buf)).await {
        Ok(Ok(n)) => buf[..n] == [0x70, 0x00, hi, lo],
        _ => false,
    }
}
