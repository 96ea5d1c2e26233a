//! Runs a program the way a health check and a data migration must run:
//! in its own process group (a timeout, or its end, kills everything it
//! started), with a clean environment (a fixed `PATH` plus the documented
//! variables), `/` as its working directory, no standard input, and only
//! the last few KiB of its output kept. Output is read through a pipe, so a
//! chatty program fills neither memory nor a disk. A migration also runs
//! confined ([`crate::confine`]): the first process of a PID namespace of
//! its own, killed by its PID at the timeout, so nothing it started
//! outlives it whatever process group it moved to.

use crate::confine::Confinement;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `PATH` a check or migration gets, whatever the caller's was.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of output kept for the record (state file, history, messages).
pub const OUTPUT_TAIL: usize = 4096;
/// Lines of that tail shown in a one-line message.
const OUTPUT_LINES: usize = 10;

#[derive(Debug)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// Why it failed: exit status, signal or timeout, and its last output lines.
    pub detail: String,
}

/// Keeps the last [`OUTPUT_TAIL`] bytes of a stream.
fn keep_tail(mut from: std::fs::File, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(mut t) = tail.lock() else { return };
                t.extend_from_slice(&buf[..n]);
                if t.len() > OUTPUT_TAIL {
                    let cut = t.len() - OUTPUT_TAIL;
                    t.drain(..cut);
                }
            }
        }
    }
}

/// Runs `argv` with `env` as its whole environment besides `PATH`, until
/// it exits or `timeout` passes (or `deadline`, when one is given, comes
/// first). With `confine`, it runs in that confinement.
pub fn run_command(
    name: &str,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    deadline: Option<Instant>,
    confine: Option<&Confinement>,
) -> CheckResult {
    let fail = |detail: String| CheckResult {
        name: name.to_string(),
        passed: false,
        detail,
    };
    let Some(program) = argv.first() else {
        return fail("no program to run".into());
    };
    // Close-on-exec: the program gets the write end as its stdout and
    // stderr only, never the read end or a second copy.
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot create an output pipe: {e}")),
    };
    let stderr_end = match write_end.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot share the output pipe: {e}")),
    };
    // A confined program's waiter writes the program's PID here.
    let report = match confine.map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return fail(format!("cannot create a pipe: {e}")),
    };
    let spawned = {
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(stderr_end))
            .process_group(0);
        if let (Some(c), Some((_, w))) = (confine, &report) {
            let (c, w) = (c.clone(), w.as_raw_fd());
            // SAFETY: the closure runs between fork and exec; it only makes
            // system calls on data prepared before the fork (no allocation).
            unsafe {
                cmd.pre_exec(move || c.enter(w));
            }
        }
        cmd.spawn()
        // The command, and with it our copies of the pipe's write end, is
        // dropped here: the reader sees the end when the program's group is gone.
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {program:?}: {e}")),
    };
    let group = Pid::from_raw(child.id() as i32);
    // The confined program itself, the first of its PID namespace: killed
    // by PID, it takes everything it started along.
    let first = report.and_then(|(r, w)| {
        drop(w);
        let mut pid = [0u8; 4];
        std::fs::File::from(r)
            .read_exact(&mut pid)
            .ok()
            .map(|()| Pid::from_raw(i32::from_ne_bytes(pid)))
    });
    let tail = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let tail = tail.clone();
        let file = std::fs::File::from(read_end);
        std::thread::spawn(move || keep_tail(file, tail))
    };
    let own_limit = Instant::now() + timeout;
    let limit = deadline.map_or(own_limit, |d| own_limit.min(d));
    // Watch for the exit without reaping it: until it is reaped, the
    // program's process ID (and so its group's) cannot be given to
    // another process, so the kill below cannot hit a stranger.
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let exited = loop {
        match waitid(Id::Pid(group), flags) {
            Ok(WaitStatus::StillAlive) if Instant::now() >= limit => break Ok(false),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => break Ok(true),
            Err(e) => break Err(e),
        }
    };
    // Whatever it left behind goes with it: a timed-out program's children,
    // and background processes of one that exited. The confined one first:
    // until the waiter (alive, unreaped) has reaped it, its PID is its own.
    if let Some(pid) = first {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    let _ = killpg(group, Signal::SIGKILL);
    let reaped = child.wait();
    let status = match (exited, reaped) {
        (Ok(true), Ok(s)) => Ok(Some(s)),
        (Ok(false), _) => Ok(None),
        (Err(e), _) => Err(std::io::Error::from(e)),
        (_, Err(e)) => Err(e),
    };
    // A process that left the group may hold the pipe open: wait a little,
    // then take what has been read.
    let waited = Instant::now();
    while !reader.is_finished() && waited.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = tail
        .lock()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = &lines[lines.len().saturating_sub(OUTPUT_LINES)..];
    let output = if shown.is_empty() {
        String::new()
    } else {
        format!("; output: {}", shown.join(" | "))
    };
    match status {
        Err(e) => fail(format!("waiting for it: {e}")),
        Ok(Some(s)) if s.success() => CheckResult {
            name: name.to_string(),
            passed: true,
            detail: String::new(),
        },
        Ok(Some(s)) => fail(format!("{s}{output}")),
        Ok(None) if limit == own_limit => {
            fail(format!("timed out after {} s{output}", timeout.as_secs()))
        }
        Ok(None) => fail(format!("cut off by the overall deadline{output}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_s: u64) -> CheckResult {
        run_command(
            "t",
            &["/bin/sh".into(), "-c".into(), script.into()],
            &[("ONLY".into(), "this".into())],
            Duration::from_secs(timeout_s),
            None,
            None,
        )
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survivor");
        let r = sh(
            &format!("(sleep 2; touch {}) & sleep 60", marker.display()),
            1,
        );
        assert!(
            !r.passed && r.detail.contains("timed out after 1 s"),
            "{r:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
        assert!(!marker.exists(), "a child of the timed-out check survived");
    }

    #[test]
    fn output_is_bounded_and_the_environment_clean() {
        let r = sh(
            "head -c 50000000 /dev/zero | tr '\\0' x; echo; env | sort; pwd; exit 3",
            60,
        );
        assert!(!r.passed, "{r:?}");
        assert!(r.detail.len() < OUTPUT_TAIL + 200, "{}", r.detail.len());
        assert!(r.detail.contains("exit status: 3"), "{}", r.detail);
        assert!(r.detail.contains("ONLY=this") && r.detail.contains(&format!("PATH={PATH}")));
        assert!(!r.detail.contains("CARGO"), "{}", r.detail);
        assert!(r.detail.ends_with("| /"), "{}", r.detail);
    }
}
