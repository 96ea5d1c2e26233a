//! What an install reports as it goes: JSON lines for scripts and fleet
//! agents (`--json`), a progress bar on a terminal, log lines otherwise.
//! An [`Observer`] is also where tests step in between two phases.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Signature, compatibility and version checks passed.
    Verified {
        compatible: String,
        version: String,
        signer: String,
        slot: String,
        bytes: u64,
        /// The most memory the install will use, in bytes.
        memory: u64,
    },
    /// A delta's base matched the running slot (read once, hashed).
    BaseChecked {
        slot: String,
        digest: String,
    },
    /// Image bytes verified and written so far.
    Progress {
        done: u64,
        total: u64,
    },
    /// Every chunk written and flushed to the slot.
    Written {
        slot: String,
        bytes: u64,
    },
    /// The slot read back equal to the manifest.
    ReadBack {
        slot: String,
        digest: String,
    },
    /// The boot flag now points at the new slot.
    Flipped {
        slot: String,
        tries: u8,
    },
    /// Written and checked, not flipped: `activate` makes it boot.
    Ready {
        slot: String,
        version: String,
    },
    Error {
        code: i32,
        message: String,
    },
}

pub trait Observer {
    fn event(&mut self, event: &Event);
}

/// One JSON object per line on standard output. A reader that goes away
/// does not stop the install: a half-written slot is worse than a lost
/// progress line.
pub struct JsonLines;

impl Observer for JsonLines {
    fn event(&mut self, event: &Event) {
        use std::io::Write;
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }
}

/// A progress bar (on a terminal) and log lines with each phase's duration.
#[derive(Default)]
pub struct Terminal {
    bar: Option<ProgressBar>,
    phase_start: Option<std::time::Instant>,
}

impl Terminal {
    /// Seconds since the previous phase ended, and starts the next one.
    fn lap(&mut self) -> f64 {
        let now = std::time::Instant::now();
        let secs = self
            .phase_start
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.phase_start = Some(now);
        secs
    }
}

/// The install's progress on a terminal (none in a log or a pipe).
fn install_bar(total: u64, slot: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "installing into {msg} {wide_bar} {percent}% {binary_bytes_per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total)
        .with_style(style)
        .with_message(slot.to_string())
}

impl Observer for Terminal {
    fn event(&mut self, event: &Event) {
        match event {
            Event::Verified {
                compatible,
                version,
                signer,
                slot,
                bytes,
                memory,
            } => {
                log::info!("{compatible} {version} signed by key {signer}… (the first 16 hex digits of its key id): installing {bytes} bytes into {slot}, within {} MiB of memory", memory >> 20);
                self.bar = Some(install_bar(*bytes, slot));
                self.lap();
            }
            Event::Progress { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*done);
                }
            }
            Event::Written { slot, bytes } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let secs = self.lap();
                let rate = *bytes as f64 / 1048576.0 / secs.max(1e-9);
                log::info!(
                    "{bytes} bytes verified and written to {slot} in {secs:.2} s ({rate:.0} MiB/s)"
                );
            }
            Event::BaseChecked { slot, digest } => {
                log::info!("delta base in {slot} verified: digest {digest}")
            }
            Event::ReadBack { slot, digest } => {
                log::info!("{slot} read back from the medium as written: image digest {digest}")
            }
            Event::Flipped { slot, tries } => {
                log::info!("{slot} boots next, on trial with {tries} tries")
            }
            Event::Ready { slot, version } => {
                log::info!("{slot} holds {version}, unbootable until `updater activate`")
            }
            Event::Error { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
            }
        }
    }
}
