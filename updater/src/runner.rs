//! Runs a program with a timeout and keeps the end of its output: what a
//! health check and a data migration both are.

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of a failed program's output kept for the record.
const OUTPUT_LINES: usize = 10;

#[derive(Debug)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// Why it failed: exit status, signal or timeout, and its last output lines.
    pub detail: String,
}

/// Runs `argv` with `env` added, until it exits, `timeout` passes or
/// `deadline` comes. Output goes to a temporary file, not a pipe, so a
/// chatty program cannot block on a full pipe.
pub fn run_command(
    name: &str,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    deadline: Instant,
) -> CheckResult {
    let fail = |detail: String| CheckResult {
        name: name.to_string(),
        passed: false,
        detail,
    };
    let Some(program) = argv.first() else {
        return fail("no program to run".into());
    };
    let mut out = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create an output file: {e}")),
    };
    let (stdout, stderr) = match (out.try_clone(), out.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return fail("cannot share the output file".into()),
    };
    let mut child = match Command::new(program)
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {program:?}: {e}")),
    };
    let own_limit = Instant::now() + timeout;
    let limit = own_limit.min(deadline);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return fail(format!("waiting for it: {e}")),
        }
    };
    let mut text = String::new();
    let _ = out.rewind().and_then(|()| out.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(OUTPUT_LINES)..];
    let output = if tail.is_empty() {
        String::new()
    } else {
        format!("; output: {}", tail.join(" | "))
    };
    match status {
        Some(s) if s.success() => CheckResult {
            name: name.to_string(),
            passed: true,
            detail: String::new(),
        },
        Some(s) => fail(format!("{s}{output}")),
        None if own_limit <= deadline => {
            fail(format!("timed out after {} s{output}", timeout.as_secs()))
        }
        None => fail(format!("cut off by the overall deadline{output}")),
    }
}
