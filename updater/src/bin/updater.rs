//! `updater`: install releases into the inactive slot, report status.

use anyhow::{Context, Result};
use bootctl::{host, Disk, Error as BootError};
use clap::{Parser, Subcommand};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use switchback_bundle::Keyring;
use updater::config::{Config, DEFAULT_PATH};
use updater::events::{Event, JsonLines, Observer, Terminal};
use updater::health::{health, HealthOutcome};
use updater::install::{install, InstallOptions};
use updater::rollback::rollback;
use updater::source::{self, HttpOptions, Source};
use updater::state::StateFile;
use updater::status::UpdaterStatus;
use updater::UpdateError;

/// Asks on the terminal; without one, the answer is no.
fn confirm(question: &str) -> Result<bool> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[derive(Parser)]
#[command(
    version,
    about = "Switchback updater: signed A/B updates for this appliance"
)]
struct Cli {
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// --disk overrides the config's `disk`.
    #[command(flatten)]
    target: host::DiskArgs,
    /// JSON output: JSON lines of events for install, one object for queries.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install a bundle (a file, `-` for standard input, or an http(s) URL) into the inactive slot.
    Install {
        source: Source,
        /// Install a lower version than the one running.
        #[arg(long)]
        allow_downgrade: bool,
        /// Reboot into the new release when done.
        #[arg(long)]
        reboot: bool,
        #[arg(long, default_value_t = switchback_bundle::default_threads())]
        threads: usize,
        /// Over HTTP: failed attempts allowed over the whole download, with doubling waits.
        #[arg(long, default_value_t = HttpOptions::default().max_retries)]
        retries: u32,
        /// Over HTTP: seconds without progress before a connection is dropped and resumed.
        #[arg(long, default_value_t = HttpOptions::default().idle_timeout.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        idle_timeout: u64,
    },
    /// The slots, their releases and boot flags, and the last install.
    Status,
    /// Post-boot health check: commit the booted release, or mark it bad and
    /// reboot into the previous one. Run by init at every boot.
    Health {
        /// Do not reboot after a failed check (tests, manual runs).
        #[arg(long)]
        no_reboot: bool,
    },
    /// Boot the other slot's (proven) release next, and reboot.
    Rollback {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        no_reboot: bool,
    },
    /// Every install, commit and rollback with time, versions and reason.
    History,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let json = cli.json;
    if let Err(e) = run(cli) {
        let code = updater::exit_code(&e);
        if json {
            JsonLines.event(&Event::Error {
                code,
                message: format!("{e:#}"),
            });
        }
        eprintln!("updater: error: {e:#}");
        std::process::exit(code);
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    let cmdline = host::read_cmdline();
    let disk_path = cli
        .target
        .disk
        .clone()
        .or_else(|| config.disk.clone())
        .or_else(|| host::root_disk(&cmdline))
        .ok_or_else(|| {
            BootError::Invalid(
                "cannot find the disk of the running root: set `disk` in the config or pass --disk"
                    .into(),
            )
        })?;
    let sector_size = cli.target.sector_size();
    let changes_state = matches!(
        cli.command,
        Command::Install { .. } | Command::Health { .. }
    );
    // Taken before anything is read, so the state acted on is current
    // (rollback takes it after its question).
    let _lock = if changes_state {
        Some(cli.target.lock(&disk_path)?)
    } else {
        None
    };
    let boot_state = Disk::open(&disk_path, sector_size, false)?.read()?;
    let booted = cli.target.booted(&cmdline, &boot_state.table)?;
    let data_devnum = std::fs::metadata(&disk_path)
        .is_ok_and(|m| m.file_type().is_block_device())
        .then(|| {
            let data = boot_state.table.data.as_ref()?;
            bootctl::sysfs::SysBlock::system().partition_devnum(&disk_path, data.index + 1)
        });
    updater::state::check_location(&config.state_dir(), &disk_path, data_devnum).map_err(
        |reason| UpdateError::Config {
            path: cli.config.clone(),
            reason,
        },
    )?;

    match cli.command {
        Command::Install {
            source,
            allow_downgrade,
            reboot,
            threads,
            retries,
            idle_timeout,
        } => {
            let booted = booted.ok_or(BootError::BootedUnknown)?;
            let opts = InstallOptions {
                disk: disk_path,
                sector_size,
                booted,
                allow_downgrade,
                threads,
            };
            let input = source::open(
                &source,
                &HttpOptions {
                    max_retries: retries,
                    idle_timeout: std::time::Duration::from_secs(idle_timeout),
                    ..HttpOptions::default()
                },
            )?;
            let mut observer: Box<dyn Observer> = if cli.json {
                Box::new(JsonLines)
            } else {
                Box::<Terminal>::default()
            };
            let done = install(&config, input, &opts, observer.as_mut())
                .with_context(|| format!("installing {source}"))?;
            if !cli.json {
                println!(
                    "{} {} installed into {}; it boots on trial at the next reboot",
                    done.manifest.compatible, done.manifest.version, done.slot
                );
            }
            if reboot {
                nix::unistd::sync();
                nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
                    .context("rebooting")?;
            } else if !cli.json {
                println!("reboot to activate it (or run with --reboot)");
            }
        }
        Command::Health { no_reboot } => {
            let booted = booted.ok_or(BootError::BootedUnknown)?;
            match health(&config, &disk_path, sector_size, booted)? {
                HealthOutcome::AlreadyGood => {
                    println!("{booted} is committed already; nothing to do")
                }
                HealthOutcome::Committed { version } => {
                    println!(
                        "{booted} ({}) passed its health check and is committed",
                        version.as_deref().unwrap_or("unknown release")
                    )
                }
                HealthOutcome::RolledBack {
                    from,
                    version,
                    reason,
                } => {
                    return Err(UpdateError::RolledBack {
                        slot: from,
                        version,
                        reason,
                    }
                    .into());
                }
                HealthOutcome::Failed { reason, fallback } => {
                    let err = UpdateError::HealthFailed {
                        slot: booted.name(),
                        fallback: fallback.name(),
                        reason,
                    };
                    if !no_reboot {
                        eprintln!("updater: {err}; rebooting");
                        updater::reboot()?;
                    }
                    return Err(err.into());
                }
            }
        }
        Command::Rollback { yes, no_reboot } => {
            let booted = booted.ok_or(BootError::BootedUnknown)?;
            if !yes
                && !confirm(&format!(
                    "Boot {} next instead of the running {booted}{}? [y/N] ",
                    booted.other(),
                    if no_reboot { "" } else { ", and reboot now" }
                ))?
            {
                return Err(UpdateError::NotConfirmed.into());
            }
            // Only now: nobody waits on a technician's answer.
            let _lock = cli.target.lock(&disk_path)?;
            let target = rollback(&config, &disk_path, sector_size, booted)?;
            println!("{target} boots next");
            if !no_reboot {
                updater::reboot()?;
            }
        }
        Command::History => {
            let state = StateFile::load(&config.state_dir());
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&state.state.history)?);
            } else {
                for h in &state.state.history {
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.time),
                    );
                    let mut line = format!(
                        "{when} {:<13} {:<7} {}",
                        h.event,
                        h.slot,
                        h.version.as_deref().unwrap_or("-")
                    );
                    if let Some(f) = &h.from_version {
                        line += &format!(" (from {f})");
                    }
                    if let Some(r) = &h.reason {
                        line += &format!(": {r}");
                    }
                    println!("{line}");
                }
            }
        }
        Command::Status => {
            let state = StateFile::load(&config.state_dir());
            let (on_disk, disk_warnings) = match Keyring::load_dir(&config.keyring) {
                Ok(k) => updater::evidence::releases(&disk_path, &boot_state, &k),
                Err(e) => ([None, None], vec![format!("{e:#}")]),
            };
            let mut status = UpdaterStatus::new(
                &disk_path.display().to_string(),
                &boot_state,
                booted,
                &state,
                &on_disk,
            );
            status.warnings.extend(disk_warnings);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
    }
    Ok(())
}
