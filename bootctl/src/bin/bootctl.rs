//! `bootctl`: read and change which slot boots.

use anyhow::Result;
use bootctl::boot_stage::BootStage;
use bootctl::host;
use bootctl::report::StatusReport;
use bootctl::{Disk, Error, Slot, DEFAULT_TRIES};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Switchback boot control: the A/B slots' GPT boot flags"
)]
struct Cli {
    #[command(flatten)]
    target: host::DiskArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Both slots' boot flags, the booted slot and the next boot.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Boot SLOT next, on trial.
    SetActive {
        slot: Slot,
        #[arg(long, default_value_t = DEFAULT_TRIES)]
        tries: u8,
    },
    /// Record that SLOT (default: the booted one) passed its health check.
    MarkGood { slot: Option<Slot> },
    /// Make SLOT (default: the booted one) unbootable.
    MarkBad { slot: Option<Slot> },
    /// Boot the other, previously good slot next. The raw flag change: it
    /// knows no releases, versions or security floor, and records nothing.
    /// A technician wants `updater rollback`.
    Rollback {
        #[arg(long)]
        json: bool,
    },
    /// Run as the boot stage (PID 1 of an initramfs): select, arm the
    /// watchdog, kexec the chosen slot's kernel. Started by default as PID 1.
    BootStage {
        /// The disk holding the slots (default: the one whose partitions are
        /// named slot_a and slot_b).
        #[arg(long = "slots-disk")]
        slots_disk: Option<PathBuf>,
        #[arg(long, default_value_t = BootStage::DEFAULT_WATCHDOG_S)]
        watchdog_timeout: u32,
    },
    /// Run the boot selection once, persist the spent try, print the slot.
    Select {
        #[arg(long)]
        json: bool,
    },
    /// For the release's initramfs: open the root partition through
    /// dm-verity with the parameters the boot stage verified and passed
    /// (`switchback.verity=`), and print the device to mount; without them,
    /// print PARTITION itself.
    OpenRoot { partition: String },
}

fn main() {
    if std::process::id() == 1 {
        BootStage::default().run_as_init();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("bootctl: error: {e:#}");
        let code = e.downcast_ref::<Error>().map_or(1, Error::exit_code);
        std::process::exit(code);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::BootStage {
        slots_disk,
        watchdog_timeout,
    } = &cli.command
    {
        let disk = slots_disk.clone();
        BootStage {
            disk,
            watchdog_timeout_s: *watchdog_timeout,
        }
        .run_as_init();
    }
    if let Command::OpenRoot { partition } = &cli.command {
        let root =
            bootctl::dm::open_root(partition).map_err(|e| Error::Verity(format!("{e:#}")))?;
        println!("{}", root.display());
        return Ok(());
    }
    let cmdline = host::read_cmdline();
    let path = match cli.target.disk.clone() {
        Some(p) => p,
        None => host::root_disk(&cmdline).ok_or_else(|| {
            Error::Invalid(
                "cannot find the disk of the running root from /proc/cmdline: pass --disk".into(),
            )
        })?,
    };
    let sector_size = cli.target.sector_size();
    let writes = !matches!(cli.command, Command::Status { .. });
    // Taken before anything is read, so the state acted on is current.
    let _lock = if writes {
        Some(cli.target.lock(&path)?)
    } else {
        None
    };
    let mut disk = Disk::open(&path, sector_size, writes)?;
    let state = disk.read()?;
    let booted = cli.target.booted(&cmdline, &state.table)?;
    let named_or_booted = |slot: Option<Slot>| slot.or(booted).ok_or(Error::BootedUnknown);
    let shown = path.display().to_string();
    let after = match cli.command {
        Command::BootStage { .. } => unreachable!("handled above: boot_stage never returns"),
        Command::OpenRoot { .. } => unreachable!("handled above"),
        Command::Status { json } => {
            bootctl::report::show(json, &StatusReport::new(&shown, &state, booted))?;
            return Ok(());
        }
        Command::SetActive { slot, tries } => disk.set_active(slot, tries)?,
        Command::MarkGood { slot } => disk.mark_good(named_or_booted(slot)?)?,
        Command::MarkBad { slot } => disk.mark_bad(named_or_booted(slot)?)?,
        Command::Rollback { json } => {
            let (target, _) = disk.rollback(booted)?;
            match json {
                true => println!("{}", serde_json::json!({ "next": target })),
                false => println!("{target} boots next"),
            }
            return Ok(());
        }
        Command::Select { json } => {
            let s = disk.select()?;
            if s.fallback {
                eprintln!(
                    "bootctl: warning: no slot is bootable; trying {} anyway",
                    s.slot
                );
            }
            match json {
                true => println!("{}", serde_json::to_string(&s)?),
                false => println!("{}", s.slot),
            }
            return Ok(());
        }
    };
    print!("{}", StatusReport::new(&shown, &after, booted));
    Ok(())
}
