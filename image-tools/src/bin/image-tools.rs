//! `image-tools`: build signed release bundles and factory disks.

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use image_tools::bundle::writer::{DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL};
use image_tools::bundle::{
    self, default_threads, keys, BuildOptions, ImageSource, Keyring, MigrationSource, Phase,
};
use image_tools::mkdisk::{mkdisk, MkdiskOptions};
use image_tools::ops;
use image_tools::progress::byte_bar;
use image_tools::size::parse_size;
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

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Trust {
    /// A public key (PEM) to trust.
    #[arg(long)]
    public: Option<PathBuf>,
    /// A directory of trusted public keys (*.pem, *.pub).
    #[arg(long)]
    keyring: Option<PathBuf>,
}

impl Trust {
    fn load(&self) -> Result<Keyring> {
        Ok(match (&self.public, &self.keyring) {
            (Some(p), _) => Keyring::from_key(p)?,
            (None, Some(d)) => Keyring::load_dir(d)?,
            (None, None) => bail!("name a trusted key with --public or --keyring"),
        })
    }
}

fn parse_image(s: &str) -> Result<ImageSource, String> {
    let (target, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write TARGET=PATH, e.g. rootfs=rootfs.img"))?;
    Ok(ImageSource {
        target: target.to_string(),
        path: PathBuf::from(path),
    })
}

#[derive(Args)]
struct BuildArgs {
    /// Private signing key; repeat to add signatures.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// TARGET=PATH, e.g. rootfs=rootfs.img; repeatable.
    #[arg(long = "image", required = true, value_parser = parse_image)]
    images: Vec<ImageSource>,
    #[arg(long)]
    compatible: String,
    /// Release version (semver).
    #[arg(long = "version")]
    release_version: String,
    #[arg(long, default_value_t = 0)]
    security_version: u64,
    /// The data schema this release expects.
    #[arg(long)]
    data_schema: Option<u32>,
    /// zstd level (1-19).
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_size)]
    chunk_size: u64,
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    #[arg(long)]
    out: PathBuf,
    /// A data migration executable; give --from, --to and --phase after
    /// each, and --snapshot DIR (repeatable) for the data directories it
    /// changes.
    #[arg(long = "migration")]
    migrations: Vec<PathBuf>,
    #[arg(long)]
    from: Vec<u32>,
    #[arg(long)]
    to: Vec<u32>,
    #[arg(long, value_parser = ["expand", "finalize"])]
    phase: Vec<String>,
    #[arg(long)]
    snapshot: Vec<String>,
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
    Build {
        #[command(flatten)]
        args: BuildArgs,
    },
    /// Build a delta bundle: the rootfs image encoded against the base image
    /// the device runs (zstd patch-from, chunk by chunk).
    Delta {
        /// The image of the release the device runs now.
        #[arg(long)]
        base: PathBuf,
        #[command(flatten)]
        args: BuildArgs,
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
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| run(cli, &matches));
    if let Err(e) = result {
        eprintln!("image-tools: error: {e:#}");
        std::process::exit(image_tools::exit_code(&e));
    }
}

/// SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn build_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Keygen { private, public } => {
            let key = keys::keygen(&private, &public)?;
            println!(
                "key id {}: private {}, public {}",
                keys::short_id(&keys::key_id(&key)),
                private.display(),
                public.display()
            );
        }
        Command::Build { args } => build(args, None, matches.subcommand_matches("build"))?,
        Command::Delta { base, args } => {
            build(args, Some(base), matches.subcommand_matches("delta"))?
        }
        Command::Inspect { bundle, json } => {
            let report = ops::inspect(&bundle)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
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
            let m = ops::extract(
                &bundle,
                &trust.load()?,
                &image,
                &out,
                threads,
                base.as_deref(),
            )?;
            println!(
                "{}: image {image} of {} {} verified and written",
                out.display(),
                m.compatible,
                m.version
            );
        }
        Command::Mkdisk(opts) => {
            let disk = mkdisk(&opts)?;
            println!("{}", image_tools::mkdisk::summary(&opts, &disk));
        }
        Command::Uki(opts) => {
            uki::build(&opts)?;
            println!("{}: the boot stage as an EFI program", opts.out.display());
        }
    }
    Ok(())
}

/// Pairs each --migration with its --from, --to and --phase (in order), and
/// gives each --snapshot to the --migration it follows on the command line.
fn group_migrations(
    m: &clap::ArgMatches,
    paths: Vec<PathBuf>,
    from: Vec<u32>,
    to: Vec<u32>,
    phase: Vec<String>,
    snapshot: Vec<String>,
) -> Result<Vec<MigrationSource>> {
    let n = paths.len();
    if from.len() != n || to.len() != n || phase.len() != n {
        bail!("each --migration needs its own --from, --to and --phase ({n} migrations, {} --from, {} --to, {} --phase)", from.len(), to.len(), phase.len());
    }
    let at: Vec<usize> = m
        .indices_of("migrations")
        .map(|i| i.collect())
        .unwrap_or_default();
    let mut out: Vec<MigrationSource> = paths
        .into_iter()
        .zip(from.into_iter().zip(to).zip(phase))
        .map(|(path, ((from, to), phase))| MigrationSource {
            path,
            from,
            to,
            phase: if phase == "expand" {
                Phase::Expand
            } else {
                Phase::Finalize
            },
            snapshot: Vec::new(),
        })
        .collect();
    let snap_at: Vec<usize> = m
        .indices_of("snapshot")
        .map(|i| i.collect())
        .unwrap_or_default();
    for (dir, pos) in snapshot.into_iter().zip(snap_at) {
        let owner = at
            .iter()
            .rposition(|&a| a < pos)
            .context("--snapshot must follow the --migration it belongs to")?;
        out[owner].snapshot.push(dir);
    }
    Ok(out)
}

fn build(args: BuildArgs, base: Option<PathBuf>, matches: Option<&clap::ArgMatches>) -> Result<()> {
    let BuildArgs {
        keys: key_paths,
        images,
        compatible,
        release_version,
        security_version,
        data_schema,
        level,
        chunk_size,
        threads,
        out,
        migrations,
        from,
        to,
        phase,
        snapshot,
    } = args;
    let build_matches = matches.context("no build arguments")?;
    let migrations = group_migrations(build_matches, migrations, from, to, phase, snapshot)?;
    let signing = key_paths
        .iter()
        .map(|p| keys::load_private(p))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = BuildOptions {
        compatible,
        version: release_version,
        security_version,
        data_schema,
        build_time: build_time()?,
        level,
        chunk_size,
        threads,
        migrations,
        base,
    };
    let total = images
        .iter()
        .map(|i| std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = byte_bar(total, "build");
    let manifest = bundle::build(&opts, &images, &signing, &out, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    let size = std::fs::metadata(&out)?.len();
    println!(
        "{}: {} {} for {}, {} bytes from {} bytes of images, {} signature(s)",
        out.display(),
        manifest.compatible,
        manifest.version,
        manifest
            .images
            .iter()
            .map(|i| i.target.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        size,
        total,
        signing.len()
    );
    Ok(())
}
