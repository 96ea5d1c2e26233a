//! `updater`: install releases into the inactive slot, report status.

use anyhow::Result;
use bootctl::host;
use bootctl::report::show;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use updater::cli::{
    activate, confirm_rollback, fleet, health_result, install, serve, ActivateArgs, Device,
    FleetArgs, History, InstallArgs, ServeArgs,
};
use updater::config::DEFAULT_PATH;
use updater::events::{Event, JsonLines, Observer};
use updater::state::StateFile;

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
    /// Install a bundle or a wrapped .swu (a file, `-` for standard input, or an http(s) URL) into the inactive slot.
    Install(InstallArgs),
    /// Make the release an `install --no-activate` left ready boot next, on
    /// trial, after checking it again.
    Activate(ActivateArgs),
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
        /// Boot the other release even though its security version is
        /// below the device's floor (recorded, and reported to the fleet).
        #[arg(long)]
        below_security_floor: bool,
    },
    /// Every install, commit and rollback with time, versions and reason.
    History,
    /// Take updates from the hawkBit DDI server in the config's `fleet`
    /// section: poll until stopped, or once with --once.
    Fleet(FleetArgs),
    /// Answer the local API (docs/api.md) on a Unix socket, and on the
    /// config's `serve.listen` with a login, until stopped.
    Serve(ServeArgs),
    /// The users who may log in to `serve` from the network.
    Password {
        #[command(subcommand)]
        action: PasswordAction,
    },
}

#[derive(Subcommand)]
enum PasswordAction {
    /// Give USER the password read from standard input (one line).
    Set {
        #[arg(long)]
        user: String,
    },
    /// USER may no longer log in.
    Remove {
        #[arg(long)]
        user: String,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    updater::arm_crash_points();
    let cli = Cli::parse();
    let json = cli.json;
    if let Err(e) = run(cli) {
        let code = updater::exit_code(&e);
        if json {
            let message = format!("{e:#}");
            JsonLines.event(&Event::Error { code, message });
        }
        eprintln!("updater: error: {e:#}");
        std::process::exit(code);
    }
}

fn run(cli: Cli) -> Result<()> {
    // The service opens the device for each request, under the lock only
    // for what changes it.
    match cli.command {
        Command::Serve(args) => return serve(&cli.config, &cli.target, args),
        // Set at commissioning, before any disk needs to be found.
        Command::Password { action } => {
            let config = updater::config::Config::load(&cli.config)?;
            match action {
                PasswordAction::Set { user } => {
                    let password = read_password()?;
                    updater::serve::set_password(&config, &user, &password)?;
                    println!("{user} may log in to the API");
                }
                PasswordAction::Remove { user } => {
                    if updater::serve::remove_user(&config, &user)? {
                        println!("{user} may no longer log in to the API");
                    } else {
                        println!("{user} had no password");
                    }
                }
            }
            return Ok(());
        }
        _ => {}
    }
    // Rollback takes the lock after its question: nobody waits on a
    // technician's answer.
    let lock = matches!(
        cli.command,
        Command::Install(_) | Command::Activate(_) | Command::Health { .. }
    );
    let mut dev = Device::open(&cli.config, &cli.target, lock)?;
    match cli.command {
        Command::Install(args) => install(&dev, args, cli.json)?,
        Command::Activate(args) => activate(&dev, args, cli.json)?,
        Command::Health { no_reboot } => {
            let booted = dev.booted()?;
            let outcome = updater::health::health(&dev.config, &dev.disk, dev.sector_size, booted)?;
            // The fleet server hears the verdict before any reboot.
            updater::fleet::report_after_health(&dev.config, &dev.disk);
            println!("{}", health_result(outcome, &dev.disk, booted, no_reboot)?);
        }
        Command::Rollback {
            yes,
            no_reboot,
            below_security_floor,
        } => {
            let booted = dev.booted()?;
            confirm_rollback(booted, !no_reboot, yes)?;
            dev.lock = Some(cli.target.lock(&dev.disk)?);
            let target = updater::rollback::rollback(
                &dev.config,
                &dev.disk,
                dev.sector_size,
                booted,
                below_security_floor,
            )?;
            println!("{target} boots next");
            if !no_reboot {
                updater::reboot(&dev.disk)?;
            }
        }
        Command::History => {
            let history = StateFile::of(&dev.config).state.history;
            show(cli.json, &History(history))?;
        }
        Command::Status => show(cli.json, &dev.status())?,
        Command::Fleet(args) => fleet(&dev, args)?,
        Command::Serve(_) | Command::Password { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// The first line of standard input, without its line end: piped in by a
/// commissioning script, or typed (`read -rs`) by a person.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("reading the password from standard input: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
