//! `image-tools`: build signed release bundles and factory disks.

use anyhow::Result;
use clap::{Parser, Subcommand};
use image_tools::bundle::{default_threads, keys};
use image_tools::cli::{self, BuildArgs, Trust};
use image_tools::mkdisk::{self, MkdiskOptions};
use image_tools::ops;
use image_tools::stage::{self, StageOptions};
use image_tools::uki::{self, UkiOptions};
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
    /// Create an ed25519 signing key (PKCS#8 PEM) and its public key (PEM).
    Keygen {
        #[arg(long)]
        private: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// Build a signed release bundle from root filesystem images.
    Build(BuildArgs),
    /// Build a delta bundle: the rootfs image encoded against the base image
    /// the device runs (zstd patch-from, chunk by chunk).
    Delta {
        /// The image of the release the device runs now.
        #[arg(long)]
        base: PathBuf,
        #[command(flatten)]
        args: BuildArgs,
    },
    /// Add, replace or remove signatures of a built bundle (its payload
    /// untouched): sign where the key lives, a second signer after the first.
    Sign(cli::SignArgs),
    /// Write the public key (PEM) of a signer: a PKCS#11 token's key, or a
    /// private key file's.
    Pubkey {
        #[command(flatten)]
        signer: image_tools::signers::SignerArgs,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Show what a bundle says it holds (signature NOT checked).
    Inspect {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check the signature and every chunk; exit 0 only if all hold.
    Verify {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// For a delta bundle: the base image it applies to.
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Write an image out of a bundle after verifying it completely.
    Extract {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// For a delta bundle: the base image it applies to.
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long, default_value = "rootfs")]
        image: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Make a factory disk image: GPT, the ESP with the boot stage, slot_a with the first release, empty slot_b, ext4 data.
    Mkdisk(MkdiskOptions),
    /// Make the boot stage's EFI program: systemd's EFI stub with a kernel, an initramfs and a command line (a UKI).
    Uki(UkiOptions),
    /// Make the UEFI boot stage for the ESP: the stage as built (.ci/boot-efi) with the keys it verifies slots against.
    Stage(StageOptions),
    /// Wrap a signed bundle as a SWUpdate-style .swu for fleet servers.
    Swu(cli::SwuArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("image-tools: error: {e:#}");
        std::process::exit(image_tools::cli::exit_code(&e));
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { private, public } => {
            let id = keys::short_id(&keys::key_id(&keys::keygen(&private, &public)?));
            let (private, public) = (private.display(), public.display());
            println!("key id {id}: private {private}, public {public}");
        }
        Command::Build(args) => println!("{}", cli::build(args, None)?),
        Command::Delta { base, args } => println!("{}", cli::build(args, Some(base))?),
        Command::Sign(args) => println!("{}", cli::sign(args)?),
        Command::Pubkey { signer, out } => println!("{}", cli::public_key(&signer, &out)?),
        Command::Inspect { bundle, json } => bootctl::report::show(json, &ops::inspect(&bundle)?)?,
        Command::Verify {
            bundle,
            trust,
            base,
            threads,
        } => {
            let (m, signer) = ops::verify(&bundle, &trust.load()?, threads, base.as_deref())?;
            let bytes: u64 = m.images.iter().map(|i| i.size).sum();
            println!(
                "{}: OK: signed by {signer}, {} {}, {bytes} bytes in {} image(s) checked",
                bundle.display(),
                m.compatible,
                m.version,
                m.images.len()
            );
        }
        Command::Extract {
            bundle,
            trust,
            base,
            image,
            out,
            threads,
        } => {
            let keyring = trust.load()?;
            let m = ops::extract(&bundle, &keyring, &image, &out, threads, base.as_deref())?;
            println!(
                "{}: image {image} of {} {} verified and written",
                out.display(),
                m.compatible,
                m.version
            );
        }
        Command::Mkdisk(opts) => {
            let disk = mkdisk::mkdisk(&opts)?;
            println!("{}", mkdisk::summary(&opts, &disk));
        }
        Command::Uki(opts) => {
            uki::build(&opts)?;
            println!("{}: the boot stage as an EFI program", opts.out.display());
        }
        Command::Stage(opts) => println!("{}", stage::build(&opts)?),
        Command::Swu(args) => println!("{}", cli::swu(&args)?),
    }
    Ok(())
}
