//! `image-tools`: build signed release bundles and factory disks.

use anyhow::Result;
use clap::{Parser, Subcommand};
use image_tools::mkdisk::{mkdisk, MkdiskOptions};
use image_tools::size::parse_size;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Switchback vendor tools: release bundles and factory disks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a factory disk image: GPT, slot_a with the first release, empty slot_b, ext4 data.
    Mkdisk {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = parse_size)]
        slot_size: u64,
        #[arg(long, value_parser = parse_size)]
        data_size: u64,
        /// Root filesystem image for slot_a.
        #[arg(long)]
        slot_a: Option<PathBuf>,
        #[arg(long, default_value = "512", value_parser = ["512", "4096"])]
        sector_size: String,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("image-tools: error: {e:#}");
        std::process::exit(image_tools::exit_code(&e));
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mkdisk {
            out,
            slot_size,
            data_size,
            slot_a,
            sector_size,
        } => {
            let opts = MkdiskOptions {
                out,
                slot_size,
                data_size,
                slot_a,
                sector_size: sector_size.parse()?,
            };
            let disk = mkdisk(&opts)?;
            println!(
                "{}: slot_a {} MiB at {}, slot_b {} MiB at {}, data {} MiB at {}",
                opts.out.display(),
                disk.slots[0].size >> 20,
                disk.slots[0].offset,
                disk.slots[1].size >> 20,
                disk.slots[1].offset,
                disk.data.size >> 20,
                disk.data.offset
            );
        }
    }
    Ok(())
}
