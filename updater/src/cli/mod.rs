//! What the `updater` verbs need before and after the library does the
//! work: the device they act on (config, disk, lock, booted slot, state
//! location checked) and the lines they print. The binary's `main.rs`
//! parses arguments and calls these, and exits with [`exit::exit_code`].

pub mod exit;

use crate::config::Config;
use crate::events::{JsonLines, Observer, Terminal};
use crate::fleet::{Client, FleetOptions};
use crate::health::HealthOutcome;
use crate::source::{HttpOptions, Source};
use crate::state::{HistoryEntry, StateFile};
use crate::status::UpdaterStatus;
use crate::UpdateError;
use anyhow::Result;
use bootctl::host::{self, DiskArgs};
use bootctl::lock::DiskLock;
use bootctl::{Disk, Error as BootError, Slot};
use std::fmt::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use switchback_bundle::Keyring;

/// The appliance a command acts on.
pub struct Device {
    pub config: Config,
    pub config_path: PathBuf,
    pub disk: PathBuf,
    pub sector_size: Option<u64>,
    pub boot_state: bootctl::State,
    /// None on a disk image without `--booted-slot`.
    pub booted: Option<Slot>,
    /// Held for a state-changing command from before anything was read,
    /// so the state acted on is current.
    pub lock: Option<DiskLock>,
}

impl Device {
    /// Loads the config at `config_path`, finds the disk (`--disk`, the
    /// config's `disk`, or the disk of the running root), takes its lock
    /// when `lock`, reads its boot flags and checks that the state
    /// directory is where it must be.
    pub fn open(config_path: &Path, target: &DiskArgs, lock: bool) -> Result<Device> {
        let mut config = Config::load(config_path)?;
        let cmdline = host::read_cmdline();
        let disk = target
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
        let sector_size = target.sector_size();
        let lock = if lock {
            Some(target.lock(&disk)?)
        } else {
            None
        };
        let boot_state = Disk::open(&disk, sector_size, false)?.read()?;
        let booted = target.booted(&cmdline, &boot_state.table)?;
        let block_device = std::fs::metadata(&disk).is_ok_and(|m| m.file_type().is_block_device());
        let data_devnum = block_device.then(|| {
            let data = boot_state.table.data.as_ref()?;
            bootctl::sysfs::SysBlock::system().partition_devnum(&disk, data.index + 1)
        });
        crate::state::check_location(&config.state_dir(), &disk, data_devnum).map_err(
            |reason| UpdateError::Config {
                path: config_path.to_path_buf(),
                reason,
            },
        )?;
        config.disk_guid = boot_state.disk_guid();
        crate::state::check_disk(
            &StateFile::of(&config),
            &disk,
            config.disk_guid.as_deref(),
            block_device,
        )?;
        Ok(Device {
            config,
            config_path: config_path.to_path_buf(),
            disk,
            sector_size,
            boot_state,
            booted,
            lock,
        })
    }

    /// The booted slot, which installs, health checks and rollbacks need.
    pub fn booted(&self) -> Result<Slot> {
        Ok(self.booted.ok_or(BootError::BootedUnknown)?)
    }

    /// An install of this device's own, as `install` and the API start one
    /// (the fleet's carry its action, version and digest besides).
    pub fn install_options(
        &self,
        allow_downgrade: bool,
        activate: bool,
        threads: usize,
        memory: u64,
    ) -> Result<crate::install::InstallOptions> {
        Ok(crate::install::InstallOptions {
            disk: self.disk.clone(),
            sector_size: self.sector_size,
            booted: self.booted()?,
            allow_downgrade,
            threads,
            memory,
            fleet_action: None,
            activate,
            expect_version: None,
            artifact_digest: None,
        })
    }

    /// An activation of the ready release, as `activate` and the API ask it.
    pub fn activate_options(
        &self,
        allow_downgrade: bool,
        threads: usize,
    ) -> Result<crate::activate::ActivateOptions> {
        Ok(crate::activate::ActivateOptions {
            disk: self.disk.clone(),
            sector_size: self.sector_size,
            booted: self.booted()?,
            allow_downgrade,
            threads,
            fleet_action: None,
        })
    }

    /// What `updater status` shows: flags, records and each slot's release
    /// as its signed trailer on the disk says.
    pub fn status(&self) -> UpdaterStatus {
        let state = StateFile::of(&self.config);
        let (on_disk, warnings) = match Keyring::load_dir(&self.config.keyring) {
            Ok(k) => crate::evidence::releases(&self.disk, &self.boot_state, &k),
            Err(e) => ([None, None], vec![format!("{e:#}")]),
        };
        let mut status = UpdaterStatus::new(
            &self.disk.display().to_string(),
            &self.boot_state,
            self.booted,
            &state,
            &on_disk,
        );
        status.warnings.extend(warnings);
        // Only a fleet client that waits for an operator keeps one; a
        // config that no longer has one is not offered an answer it
        // would refuse.
        let local = self
            .config
            .fleet
            .as_ref()
            .is_some_and(|f| f.confirm == crate::config::Confirm::Local);
        if !local {
            status.fleet_confirmation = None;
        }
        let cmdline = bootctl::host::read_cmdline();
        if self.booted.is_some() && crate::not_the_running_disk(&self.disk, &cmdline).is_none() {
            status.running_root = Some(crate::integrity::describe());
        }
        status
    }
}

/// A technician's rollback goes ahead only when asked for with `--yes` or
/// confirmed on the terminal.
pub fn confirm_rollback(booted: Slot, reboot: bool, yes: bool) -> Result<()> {
    let then = if reboot { ", and reboot now" } else { "" };
    let question = format!(
        "Boot {} next instead of the running {booted}{then}? [y/N] ",
        booted.other()
    );
    if yes || confirm(&question)? {
        Ok(())
    } else {
        Err(UpdateError::NotConfirmed.into())
    }
}

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

/// The line `updater health` prints for a pass, or the error it exits
/// with (a failed check reboots first unless `no_reboot`).
pub fn health_result(
    outcome: HealthOutcome,
    disk: &Path,
    booted: Slot,
    no_reboot: bool,
) -> Result<String> {
    match outcome {
        HealthOutcome::AlreadyGood => Ok(format!("{booted} is committed already; nothing to do")),
        HealthOutcome::Committed { version } => Ok(format!(
            "{booted} ({}) passed its health check and is committed",
            version.as_deref().unwrap_or("unknown release")
        )),
        HealthOutcome::RolledBack {
            from,
            version,
            reason,
        } => Err(UpdateError::RolledBack {
            slot: from.name(),
            version,
            reason,
        }
        .into()),
        HealthOutcome::Failed { reason, fallback } => {
            let err = UpdateError::HealthFailed {
                slot: booted.name(),
                fallback: fallback.name(),
                reason,
            };
            if !no_reboot {
                eprintln!("updater: {err}; rebooting");
                crate::reboot(disk)?;
            }
            Err(err.into())
        }
    }
}

/// `updater history`: as JSON, the list; as text, a line an event, oldest
/// first.
#[derive(serde::Serialize)]
#[serde(transparent)]
pub struct History(pub Vec<HistoryEntry>);

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&history_lines(&self.0))
    }
}

fn history_lines(history: &[HistoryEntry]) -> String {
    let mut out = String::new();
    for h in history {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.time),
        );
        let _ = write!(
            out,
            "{when} {:<13} {:<7} {}",
            h.event,
            h.slot,
            h.version.as_deref().unwrap_or("-")
        );
        if let Some(f) = &h.from_version {
            let _ = write!(out, " (from {f})");
        }
        if let Some(r) = &h.reason {
            let _ = write!(out, ": {r}");
        }
        out.push('\n');
    }
    out
}

/// What an install may use, for `install` and for the fleet's installs alike.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallMeans {
    #[arg(long, default_value_t = switchback_bundle::default_threads())]
    pub threads: usize,
    /// The most memory an install may use, whole process (e.g. 24M);
    /// default: the config's install_memory, else 16M.
    #[arg(long, value_name = "SIZE", value_parser = switchback_bundle::size::parse_size)]
    pub memory: Option<u64>,
    #[command(flatten)]
    pub http: HttpOptions,
}

impl InstallMeans {
    /// `--memory`, else the config's.
    pub fn memory_of(&self, config: &Config) -> u64 {
        self.memory.unwrap_or_else(|| config.install_memory())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    pub source: Source,
    /// Install a lower version than the one running.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Reboot into the new release when done.
    #[arg(long, conflicts_with = "no_activate")]
    pub reboot: bool,
    /// Write and check the release but leave it unbootable until
    /// `updater activate` (the moment of the reboot chosen later).
    #[arg(long)]
    pub no_activate: bool,
    #[command(flatten)]
    pub means: InstallMeans,
}

/// Where an install's or an activation's events go: JSON lines, or the
/// terminal.
fn observer(json: bool) -> Box<dyn Observer> {
    match json {
        true => Box::new(JsonLines),
        false => Box::<Terminal>::default(),
    }
}

/// `updater install`: installs, says what happened, reboots if asked.
pub fn install(dev: &Device, args: InstallArgs, json: bool) -> Result<()> {
    use anyhow::Context;
    let opts = dev.install_options(
        args.allow_downgrade,
        !args.no_activate,
        args.means.threads,
        args.means.memory_of(&dev.config),
    )?;
    let input = crate::source::open(&args.source, &args.means.http)?;
    let mut observer = observer(json);
    let done = crate::install::install(&dev.config, input, &opts, observer.as_mut())
        .with_context(|| format!("installing {}", args.source))?;
    let (m, slot) = (&done.manifest, done.slot);
    if !done.activated {
        if !json {
            println!(
                "{} {} installed into {slot}, not activated: it stays unbootable until `updater activate`",
                m.compatible, m.version
            );
        }
        return Ok(());
    }
    if !json {
        println!(
            "{} {} installed into {slot}; it boots on trial at the next reboot",
            m.compatible, m.version
        );
    }
    if args.reboot {
        crate::reboot(&dev.disk)?;
    } else if !json {
        println!("reboot to activate it (or run with --reboot)");
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct ActivateArgs {
    /// Activate a release lower than the one running.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Reboot into it at once.
    #[arg(long)]
    pub reboot: bool,
    #[arg(long, default_value_t = switchback_bundle::default_threads())]
    pub threads: usize,
}

/// `updater activate`: the ready release, checked again, boots next.
pub fn activate(dev: &Device, args: ActivateArgs, json: bool) -> Result<()> {
    let opts = dev.activate_options(args.allow_downgrade, args.threads)?;
    let mut observer = observer(json);
    let (slot, m) = crate::activate::activate(&dev.config, &opts, observer.as_mut())?;
    if !json {
        println!(
            "{} {} in {slot} checked again and activated; it boots on trial at the next reboot",
            m.compatible, m.version
        );
    }
    if args.reboot {
        crate::reboot(&dev.disk)?;
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Poll once, act on what the server says, and exit.
    #[arg(long)]
    pub once: bool,
    /// Never reboot, whatever the config says (tests, manual runs).
    #[arg(long)]
    pub no_reboot: bool,
    /// Confirm the action the server asks this device to confirm (its id,
    /// as the waiting cycle prints it).
    #[arg(
        long,
        value_name = "ACTION",
        requires = "once",
        conflicts_with = "deny"
    )]
    pub confirm: Option<String>,
    /// Deny it: the server closes the action.
    #[arg(long, value_name = "ACTION", requires = "once")]
    pub deny: Option<String>,
    #[command(flatten)]
    pub means: InstallMeans,
}

/// `updater fleet`: one cycle with `--once` (printing what it did),
/// otherwise polling until stopped.
pub fn fleet(dev: &Device, args: FleetArgs) -> Result<()> {
    let opts = FleetOptions {
        answer: args
            .confirm
            .map(|id| (id, true))
            .or(args.deny.map(|id| (id, false))),
        no_reboot: args.no_reboot,
        threads: args.means.threads,
        memory: args.means.memory_of(&dev.config),
        http: args.means.http,
    };
    let client = fleet_client(dev, opts)?;
    if !args.once {
        client.serve();
    }
    let (done, _) = client.cycle()?;
    println!("{done}");
    Ok(())
}

/// The fleet client of `dev`, for `updater fleet` and the API's answer to
/// a confirmation; refused when the config has no `fleet` section.
pub fn fleet_client(dev: &Device, opts: FleetOptions) -> Result<Client<'_>> {
    let Some(fleet) = &dev.config.fleet else {
        return Err(UpdateError::Config {
            path: dev.config_path.clone(),
            reason: "it has no `fleet` section (url, hw_revision, and token_file or a client certificate)".into(),
        }
        .into());
    };
    Ok(Client {
        config: &dev.config,
        config_path: dev.config_path.clone(),
        fleet,
        disk: dev.disk.clone(),
        sector_size: dev.sector_size,
        booted: dev.booted()?,
        opts,
        poll_cache: Default::default(),
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The Unix socket to listen on.
    #[arg(long, default_value = crate::serve::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The group that may use the socket besides its owner.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// End an upload that sends nothing for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upload_idle: u64,
    #[arg(long, default_value_t = switchback_bundle::default_threads())]
    pub threads: usize,
    /// The most memory an install may use (e.g. 24M); default: the
    /// config's install_memory, else 16M.
    #[arg(long, value_name = "SIZE", value_parser = switchback_bundle::size::parse_size)]
    pub memory: Option<u64>,
}

/// `updater serve`: the local API (docs/api.md), until stopped.
pub fn serve(config_path: &Path, target: &DiskArgs, args: ServeArgs) -> Result<()> {
    crate::serve::serve(crate::serve::ServeOptions {
        socket: args.socket,
        group: args.group,
        config_path: config_path.to_path_buf(),
        target: target.clone(),
        upload_idle: std::time::Duration::from_secs(args.upload_idle),
        threads: args.threads,
        memory: args.memory,
    })
}
