//! The built `coap-keepalive` binary as a child of a test: [`run`] to completion within a
//! limit, or [`Running`], whose stdout lines arrive as they are printed, that can be sent
//! SIGINT, and that is killed and reaped when dropped (also on panic).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_coap-keepalive");

/// Runs the binary with `args` to completion; panics with its output when it runs longer
/// than `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut running = Running::spawn(args);
    running.wait(limit)
}

/// stdout, stderr and the exit status, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The stdout lines of `output`.
pub fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A running `coap-keepalive` (or example binary); killed and reaped when dropped.
pub struct Running {
    /// The program's file name, for panic messages.
    name: String,
    args: Vec<String>,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Starts the binary with `args`, stdin closed, stdout and stderr piped.
    pub fn spawn(args: &[&str]) -> Running {
        Running::spawn_program(Path::new(BIN), args)
    }

    /// Starts another program (an example binary) with `args`, as [`Running::spawn`] does.
    pub fn spawn_program(program: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        Running {
            name: program.file_name().map_or_else(
                || program.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            args: args.iter().map(|a| a.to_string()).collect(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for a stdout line for which `wanted` holds, and returns it; panics
    /// with what was printed otherwise.
    pub fn wait_line(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        if let Some(line) = self.seen.iter().find(|l| wanted(l)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{} {:?}: no such line within {limit:?}; stdout so far:\n{}",
                    self.name,
                    self.args,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The stdout lines printed so far.
    pub fn seen(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        self.signal("-INT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} failed");
    }

    /// Waits up to `limit` for the exit; returns the exit status and everything printed.
    /// Panics with the output when it runs longer (the child is killed on drop).
    pub fn wait(&mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().expect("wait for coap-keepalive") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stdout = self.drain_stdout();
                panic!(
                    "{} {:?} ran longer than {limit:?}; stdout:\n{stdout}",
                    self.name, self.args
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.drain_stdout();
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        }
    }

    /// Every stdout line, once the pipe closed (the reader thread ends with the child).
    fn drain_stdout(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
