//! The guest builder: Debian's kernel and modules, static Switchback
//! binaries, and an initramfs around them.

use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub use image_tools::arch::Arch;

/// A Debian package (`name` or `name:arch`), downloaded with `apt-get
/// download` once and unpacked with `dpkg -x` (never installed) into the
/// cache: the root of its files.
pub fn unpacked(package: &str) -> Result<PathBuf> {
    let cache = super::cache_dir();
    std::fs::create_dir_all(&cache)?;
    let dir = cache.join(package.replace(':', "_"));
    // Tests run in parallel: one fetches, the others wait for it.
    let lock = std::fs::File::create(cache.join(format!("{}.lock", package.replace(':', "_"))))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the package cache: {e}"))?;
    if !dir.join("root").exists() {
        // Unpacked beside, renamed into place: a cut leaves no half tree.
        let work = tempfile::tempdir_in(&cache)?;
        let download = |d: &Path| {
            run(Command::new("apt-get")
                .args(["download", package])
                .current_dir(d))
        };
        if download(work.path()).is_err() {
            run(Command::new("apt-get").arg("update").arg("-qq"))?;
            download(work.path())?;
        }
        let deb = std::fs::read_dir(work.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        run(Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(work.path().join("root")))?;
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(work.path().join("root"), dir.join("root"))?;
    }
    Ok(dir.join("root"))
}

/// Debian's kernel of one architecture, unpacked (not installed).
pub struct Kernel {
    pub arch: Arch,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

impl Kernel {
    /// `linux-image-amd64`'s current kernel.
    pub fn debian() -> Result<Kernel> {
        Kernel::debian_for(Arch::X86_64)
    }

    /// The current kernel behind `linux-image-amd64` or
    /// `linux-image-arm64:arm64`, fetched once per version.
    pub fn debian_for(arch: Arch) -> Result<Kernel> {
        let meta = match arch {
            Arch::X86_64 => "linux-image-amd64",
            Arch::Arm64 => "linux-image-arm64:arm64",
        };
        let depends = run(Command::new("apt-cache").args(["depends", meta]))?;
        let package = depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| {
                p.starts_with("linux-image-")
                    && p.chars().nth(12).is_some_and(|c| c.is_ascii_digit())
            })
            .with_context(|| {
                format!("apt-cache knows no kernel package behind {meta} (run apt-get update)")
            })?
            .to_string();
        let root = unpacked(&package)?;
        let boot = root.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .context("no vmlinuz in the kernel package")?;
        let release = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        Ok(Kernel {
            arch,
            vmlinuz,
            modules: root.join("lib/modules").join(release),
        })
    }

    /// The serial console's device: the PC's 16550 or the virt machine's PL011.
    pub fn console(&self) -> &'static str {
        match self.arch {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The module files needed to load `wanted` (names as `modprobe` takes
    /// them), dependencies first, read from each module's `depends=`.
    pub fn modules_for(&self, wanted: &[&str]) -> Result<Vec<PathBuf>> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![self.modules.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(name) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    by_name.insert(name.replace('-', "_"), p);
                }
            }
        }
        // Built into this kernel (arm64's watchdog core, say): nothing to load.
        let builtin: HashSet<String> =
            std::fs::read_to_string(self.modules.join("modules.builtin"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
                .map(|n| n.replace('-', "_"))
                .collect();
        let mut order = Vec::new();
        let mut seen = builtin;
        fn visit(
            name: &str,
            by_name: &BTreeMap<String, PathBuf>,
            seen: &mut HashSet<String>,
            order: &mut Vec<PathBuf>,
        ) -> Result<()> {
            let name = name.replace('-', "_");
            if !seen.insert(name.clone()) {
                return Ok(());
            }
            let path = by_name
                .get(&name)
                .with_context(|| format!("kernel module {name} not found"))?;
            let bytes = std::fs::read(path)?;
            let deps = bytes
                .windows(8)
                .position(|w| w == b"depends=")
                .map(|at| {
                    let rest = &bytes[at + 8..];
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(0);
                    String::from_utf8_lossy(&rest[..end]).into_owned()
                })
                .unwrap_or_default();
            for dep in deps.split(',').filter(|d| !d.is_empty()) {
                visit(dep, by_name, seen, order)?;
            }
            order.push(path.clone());
            Ok(())
        }
        for w in wanted {
            visit(w, &by_name, &mut seen, &mut order)?;
        }
        Ok(order)
    }
}

/// Builds Switchback's binaries statically (`+crt-static`) for `arch`, so
/// they run as the only userspace of an initramfs, and returns the path
/// of `bin`. One cargo call builds every binary the guests need, so the
/// dependencies are built once with one set of features (a call per
/// package would unify features differently and build some twice). A
/// target directory of its own: the outer `cargo test` holds the
/// workspace's. For arm64, Debian's cargo and rustc with its arm64 std,
/// with the packages, directory and settings of `.ci/aarch64`, whose own
/// build then finds everything done. The x86-64 ones, which nobody
/// ships, with the `guest` profile: release optimisation without the
/// minutes of whole-program LTO.
pub fn static_binary(arch: Arch, bin: &str) -> Result<PathBuf> {
    let ws = super::workspace();
    let (triple, target_dir, packages, profile, mut cmd) = match arch {
        Arch::X86_64 => {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // Only what finds the toolchain: each test binary's own cargo
            // variables (CARGO_CRATE_NAME, ...) would otherwise make one
            // test process rebuild what another built.
            let keep: Vec<(String, std::ffi::OsString)> = [
                "PATH",
                "HOME",
                "CARGO_HOME",
                "RUSTUP_HOME",
                "RUSTUP_TOOLCHAIN",
            ]
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var_os(k)?)))
            .collect();
            cmd.env_clear()
                .envs(keep)
                .env("RUSTFLAGS", "-C target-feature=+crt-static");
            (
                "x86_64-unknown-linux-gnu",
                ws.join("target/qemu-static"),
                &["bootctl", "updater"][..],
                "guest",
                cmd,
            )
        }
        Arch::Arm64 => {
            let mut cmd = Command::new("/usr/bin/cargo");
            // The environment `.ci/aarch64` runs its build in, exactly.
            let proxies: Vec<(&str, std::ffi::OsString)> = [
                "http_proxy",
                "https_proxy",
                "no_proxy",
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "NO_PROXY",
            ]
            .into_iter()
            .filter_map(|k| Some((k, std::env::var_os(k)?)))
            .collect();
            cmd.env_clear()
                .envs(proxies)
                .env("SWITCHBACK_AARCH64_CLEAN_ENV", "1")
                .env(
                    "HOME",
                    std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
                )
                .env("PATH", "/usr/bin:/bin")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                .env(
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                    "aarch64-linux-gnu-gcc",
                )
                .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
                .env(
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                    "-C target-feature=+crt-static",
                );
            (
                "aarch64-unknown-linux-gnu",
                std::env::var_os("CARGO_TARGET_DIR_AARCH64")
                    .map_or_else(|| ws.join("target/aarch64"), PathBuf::from),
                &["bootctl", "updater", "image-tools"][..],
                "release",
                cmd,
            )
        }
    };
    cmd.args([
        "build",
        "--locked",
        "--profile",
        profile,
        "--target",
        triple,
    ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(cmd.env("CARGO_TARGET_DIR", &target_dir).current_dir(&ws)).with_context(|| {
        format!(
            "building {} for {arch} (bash .ci/install-deps installs the toolchain)",
            packages.join(", ")
        )
    })?;
    Ok(target_dir.join(triple).join(profile).join(bin))
}

/// busybox-static for `arch`: the host's, or Debian's arm64 package.
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    match arch {
        Arch::X86_64 => ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("busybox not found: apt-get install busybox-static"),
        Arch::Arm64 => Ok(unpacked("busybox-static:arm64")?.join("bin/busybox")),
    }
}

/// systemd's EFI stub for `arch`: the host's, or Debian's arm64 package.
pub fn efi_stub(arch: Arch) -> Result<PathBuf> {
    let path = Path::new(arch.default_stub());
    Ok(match arch {
        Arch::X86_64 => path.to_path_buf(),
        Arch::Arm64 => unpacked("systemd-boot-efi:arm64")?.join(path.strip_prefix("/")?),
    })
}

/// A busybox-based initramfs: files copied in, `/init` a shell script.
pub struct Initramfs {
    root: tempfile::TempDir,
    console: &'static str,
}

impl Initramfs {
    /// An initramfs for `kernel`'s machine, its console on that machine's
    /// serial port.
    pub fn new(kernel: &Kernel) -> Result<Initramfs> {
        let staging = tempfile::tempdir()?;
        let root = staging.path();
        for d in ["bin", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(busybox(kernel.arch)?, root.join("bin/busybox"))?;
        Ok(Initramfs {
            root: staging,
            console: kernel.console(),
        })
    }

    pub fn add(&self, src: &Path, dest: &str) -> Result<&Self> {
        let to = self.root.path().join(dest.trim_start_matches('/'));
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src, &to)
            .with_context(|| format!("copying {} into the initramfs", src.display()))?;
        Ok(self)
    }

    /// Loads `modules` in order, then runs `script` (busybox sh, with the
    /// console on the serial port).
    pub fn init(&self, modules: &[PathBuf], script: &str) -> Result<&Self> {
        let mut init = format!(
            "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nexec >/dev/{} 2>&1\n",
            self.console
        );
        for m in modules {
            let name = m
                .file_name()
                .and_then(|n| n.to_str())
                .context("module name")?;
            self.add(m, &format!("lib/modules/{name}"))?;
            init +=
                &format!("insmod /lib/modules/{name} || echo \"GUEST: insmod {name} failed\"\n");
        }
        init += script;
        init += "\npoweroff -f\n";
        let path = self.root.path().join("init");
        std::fs::write(&path, init)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(self)
    }

    /// Puts `modules` into /lib/modules with an `order` file listing them
    /// in load order, each with its parameters from `params` (keyed by
    /// module name): what `bootctl boot-stage` reads.
    pub fn modules(&self, modules: &[PathBuf], params: &[(&str, &str)]) -> Result<&Self> {
        let mut order = String::new();
        for m in modules {
            let name = m
                .file_name()
                .and_then(|n| n.to_str())
                .context("module name")?;
            self.add(m, &format!("lib/modules/{name}"))?;
            order += name;
            if let Some((_, p)) = params
                .iter()
                .find(|(module, _)| name.strip_suffix(".ko") == Some(*module))
            {
                order += " ";
                order += p;
            }
            order.push('\n');
        }
        std::fs::write(self.root.path().join("lib/modules/order"), order)?;
        Ok(self)
    }

    /// Makes `program` the initramfs's /init.
    pub fn init_program(&self, program: &Path) -> Result<&Self> {
        self.add(program, "init")
    }

    /// Packs the tree as a newc cpio archive.
    pub fn pack(&self, out: &Path) -> Result<()> {
        let list = run(Command::new("find").arg(".").current_dir(self.root.path()))?;
        // zstd-compressed, as Debian 12's are: the boot stage holds the
        // initramfs in memory until the kernel starts (the 128 MiB
        // machine's margin), and the kernel unpacks it itself.
        let mut zstd = Command::new("zstd")
            .args(["-q", "-3", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(out)?)
            .spawn()
            .context("running zstd (apt-get install zstd)")?;
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(self.root.path())
            .stdin(std::process::Stdio::piped())
            .stdout(zstd.stdin.take().context("zstd stdin")?)
            .spawn()
            .context("running cpio (apt-get install cpio)")?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("cpio stdin")?
            .write_all(list.as_bytes())?;
        if !child.wait()?.success() {
            bail!("cpio failed packing {}", out.display());
        }
        if !zstd.wait()?.success() {
            bail!("zstd failed packing {}", out.display());
        }
        Ok(())
    }
}

/// An ext4 image of `size` built from `dir` (`mkfs.ext4 -d`), with the
/// file system label `label` (how the guest finds it, whatever the bus
/// names the disk).
pub fn ext4_image(dir: &Path, out: &Path, size: &str, label: &str) -> Result<()> {
    // 4 KiB blocks, as mkfs gives any real root: a small file system
    // would get 1 KiB ones, which the kernel cannot mount on a dm-verity
    // device of 4 KiB blocks.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", label, "-d"])
        .arg(dir)
        .arg(out)
        .arg(size))?;
    Ok(())
}

/// What a release's root file system holds besides the common parts.
pub struct Release<'a> {
    pub version: &'a str,
    /// `health.checks` of the device config in this release.
    pub health_checks: &'a str,
    /// `boot_tries` of the device config (what installs from it give).
    pub boot_tries: u8,
    /// Shell run by init before the health check (e.g. a hang).
    pub before_health: &'a str,
    /// Ship no initramfs: the kernel cannot mount its root and panics.
    pub kernel_panics: bool,
    /// Ship no `/boot/vmlinuz`: the boot stage cannot start the slot.
    pub no_kernel: bool,
    /// A hawkBit DDI server (`fleet.url`): the release brings its network
    /// up by DHCP and runs `updater fleet` once the device has its token
    /// (`/data/fleet/token`, written at commissioning). The device is
    /// named by the machine's serial number.
    pub fleet_url: Option<&'a str>,
    /// `serve.listen` of the device config (`"0.0.0.0:8080"`): the
    /// release brings its network up by DHCP and runs `updater serve`
    /// once an API user has a password (set at commissioning).
    pub api_listen: Option<&'a str>,
    /// MiB of incompressible data in `/opt/filler`: a release larger than
    /// the machine's memory.
    pub filler_mib: u64,
    /// The kernel shipped instead of the appliance's (one not signed for
    /// Secure Boot, say).
    pub vmlinuz: Option<&'a Path>,
    /// The public keys of this release's keyring instead of the vendor's:
    /// a release that rotates the keys the device trusts.
    pub keys: &'a [&'a Path],
}

impl Default for Release<'_> {
    fn default() -> Self {
        Release {
            version: "1.0.0",
            health_checks: "[]",
            boot_tries: 2,
            before_health: "",
            kernel_panics: false,
            no_kernel: false,
            fleet_url: None,
            api_listen: None,
            filler_mib: 0,
            vmlinuz: None,
            keys: &[],
        }
    }
}

/// The key and certificate of the db of OVMF's Secure Boot build
/// ([`crate::qemu::Firmware::OvmfSecureBoot`]): Debian's snakeoil pair from
/// the `ovmf` package, the key decrypted into `dir` for `sbsign`.
pub fn snakeoil_db(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join("db.key");
    if !key.exists() {
        run(Command::new("openssl")
            .args(["pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key"])
            .args(["-passin", "pass:snakeoil", "-out"])
            .arg(&key))?;
    }
    Ok((key, PathBuf::from("/usr/share/ovmf/PkKek-1-snakeoil.pem")))
}

/// The modules a slot's own initramfs loads to mount its root, from a
/// virtio or an NVMe disk.
pub const SLOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "nvme",
    "ext4",
    "crc32c_generic",
    "dm_verity",
];

/// The modules a release loads for its network card (fleet updates).
pub const NET_MODULES: [&str; 1] = ["virtio_net"];

/// The hardware revision fleet releases report and `.swu`s are made for.
pub const FLEET_HW_REVISION: &str = "qemu-1";

/// The release initramfs's init: mounts the partition that `root=PARTUUID=`
/// names (the boot stage's command line), through dm-verity when the stage
/// passed the release's verified root hash (`bootctl open-root`), and
/// switches to it. No udev and no
/// blkid here, so the partition's GUID is read from its GPT entry: sysfs
/// gives each partition's number, the table header where the entries are
/// (the backup header at the disk's end when the primary is not one, as
/// after a cut the stage could not repair). A disk flashed from the same
/// image (a technician's stick) has the same GUIDs: two matches are
/// refused, never guessed between.
const SLOT_ROOT_BY_PARTUUID: &str = r#"want=$(sed -n 's/.*root=PARTUUID=\([^ ]*\).*/\1/p' /proc/cmdline | tr A-F a-f)
partuuid() { # partition's sysfs dir -> its GPT unique GUID
  disk=$(basename "$(dirname "$(readlink -f "$1")")"); n=$(cat "$1/partition")
  bs=$(cat "/sys/block/$disk/queue/logical_block_size")
  sector() { dd if="/dev/$disk" bs=$bs skip=$1 count=1 2>/dev/null; }
  hdr=1
  if test "$(sector $hdr | head -c 8)" != "EFI PART"; then
    hdr=$(( $(cat "/sys/block/$disk/size") * 512 / bs - 1 ))
    test "$(sector $hdr | head -c 8)" = "EFI PART" || return
  fi
  set -- $(sector $hdr | od -An -tu8 -j 72 -N8) $(sector $hdr | od -An -tu4 -j 84 -N4)
  at=$(( (n - 1) * $2 ))
  set -- $(sector $(( $1 + at / bs )) | od -An -tx1 -j $(( at % bs + 16 )) -N16)
  echo "$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
}
roots=; i=0
while test -z "$roots" && test $i -lt 100; do
  for p in /sys/class/block/*; do
    test -f "$p/partition" && test "$(partuuid "$p")" = "$want" && roots="$roots /dev/$(basename "$p")"
  done
  test -n "$roots" || { sleep 0.1; i=$((i+1)); }
done
set -- $roots
if test $# -gt 1; then
  echo "SLOT INITRAMFS: $# partitions have PARTUUID=$want ($roots): a copy of this disk is plugged in; not guessing"
elif test $# -eq 1 && root=$(bootctl open-root "$1") && mount -o ro -t ext4 "$root" /mnt && umount /proc /sys && mount --move /dev /mnt/dev; then
  exec switch_root /mnt /sbin/init
else
  echo "SLOT INITRAMFS: no partition PARTUUID=$want, or it does not open or mount"
fi"#;

/// The boot stage kernel's command line, inside its EFI program (or the
/// extlinux.conf). arm64's kernel has the watchdog core built in: its
/// `stop_on_reboot=0` (see [`boot_stage_initramfs`]) is given here.
pub fn boot_stage_cmdline(kernel: &Kernel) -> String {
    match kernel.arch {
        Arch::X86_64 => "console=ttyS0 panic=-1 quiet".into(),
        Arch::Arm64 => "console=ttyAMA0 panic=-1 quiet watchdog.stop_on_reboot=0".into(),
    }
}

/// A release's root file system image: the kernel, an initramfs that mounts
/// the slot read-only and switches to it, busybox, the static Switchback
/// binaries, the device config and keyring, and an init that mounts /data,
/// runs `updater health`, and leaves a shell on the console.
pub fn release_image(
    dir: &Path,
    kernel: &Kernel,
    release: &Release,
    keyring_pem: &Path,
    out: &Path,
) -> Result<()> {
    let root = dir.join(format!("rootfs-{}", release.version));
    for d in [
        "boot",
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "data",
        "media",
        "tmp",
        "lib/modules",
        "etc/switchback/keys",
        "usr/bin",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    if !release.no_kernel {
        std::fs::copy(
            release.vmlinuz.unwrap_or(&kernel.vmlinuz),
            root.join("boot/vmlinuz"),
        )?;
    }
    let slot_ir = Initramfs::new(kernel)?;
    // `bootctl open-root`: the root through dm-verity when the boot stage
    // passed its verified root hash.
    slot_ir.add(&static_binary(kernel.arch, "bootctl")?, "bin/bootctl")?;
    slot_ir.init(&kernel.modules_for(SLOT_MODULES)?, SLOT_ROOT_BY_PARTUUID)?;
    if !release.kernel_panics {
        slot_ir.pack(&root.join("boot/initrd.img"))?;
    }
    // busybox and its applets as links, made here: the root is read-only.
    std::fs::copy(busybox(kernel.arch)?, root.join("bin/busybox"))?;
    // Asked of the host's (the same Debian version, and it runs here; an
    // arm64 one needs binfmt_misc): a file just written can still be open
    // for writing in a child another test thread forked meanwhile, and
    // executing it then fails with "Text file busy".
    for applet in run(Command::new(busybox(Arch::X86_64)?).arg("--list"))?.lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    // What the slot's initramfs loaded (virtio itself) stays loaded.
    let loaded = kernel.modules_for(SLOT_MODULES)?;
    let net_modules: Vec<PathBuf> = kernel
        .modules_for(&NET_MODULES)?
        .into_iter()
        .filter(|m| !loaded.contains(m))
        .collect();
    let mut load_net = String::new();
    for m in &net_modules {
        let name = m.file_name().and_then(|n| n.to_str()).context("module")?;
        load_net += &format!("insmod /lib/modules/{name}\n");
    }
    let watchdog = kernel.modules_for(&["i6300esb"])?;
    let mut take_watchdog = String::new();
    for m in &watchdog {
        let name = m.file_name().and_then(|n| n.to_str()).context("module")?;
        take_watchdog += &format!("insmod /lib/modules/{name}; ");
    }
    for m in watchdog.iter().chain(&net_modules) {
        std::fs::copy(
            m,
            root.join("lib/modules")
                .join(m.file_name().context("module")?),
        )?;
    }
    std::fs::copy(
        static_binary(kernel.arch, "updater")?,
        root.join("usr/bin/updater"),
    )?;
    std::fs::copy(
        static_binary(kernel.arch, "bootctl")?,
        root.join("usr/bin/bootctl"),
    )?;
    if release.keys.is_empty() {
        std::fs::copy(keyring_pem, root.join("etc/switchback/keys/vendor.pem"))?;
    }
    for key in release.keys {
        let name = key.file_name().context("a key file's name")?;
        std::fs::copy(key, root.join("etc/switchback/keys").join(name))?;
    }
    std::fs::write(root.join("etc/release"), format!("{}\n", release.version))?;
    let fleet = match release.fleet_url {
        Some(url) => format!(
            r#", "fleet": {{"url": "{url}", "token_file": "/data/fleet/token", "hw_revision": "{FLEET_HW_REVISION}", "max_poll_s": 10}}"#
        ),
        None => String::new(),
    };
    let serve = match release.api_listen {
        Some(listen) => format!(r#", "serve": {{"listen": "{listen}"}}"#),
        None => String::new(),
    };
    std::fs::write(
        root.join("etc/switchback/config.json"),
        format!(
            r#"{{"compatible": "switchback-qemu", "keyring": "/etc/switchback/keys", "data_dir": "/data", "boot_tries": {}, "health": {{"deadline_s": 60, "checks": {}}}{fleet}{serve}}}"#,
            release.boot_tries, release.health_checks
        ),
    )?;
    // busybox udhcpc hands the lease to a script; this one takes the
    // address and the default route, nothing else.
    std::fs::write(
        root.join("etc/udhcpc.script"),
        "#!/bin/sh
case \"$1\" in bound|renew)
  ip addr flush dev \"$interface\"
  ip addr add \"$ip/$mask\" dev \"$interface\"
  ip route add default via \"${router%% *}\" dev \"$interface\"
esac
",
    )?;
    std::fs::set_permissions(
        root.join("etc/udhcpc.script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let init = r#"#!/bin/busybox sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null; mount -t tmpfs tmp /tmp
exec >/dev/CONSOLE 2>&1 </dev/CONSOLE
echo "RELEASE $(cat /etc/release) RUNNING ON $(sed -n 's/.*switchback.slot=\([^ ]*\).*/\1/p' /proc/cmdline)"
mount -t ext4 "$(findfs LABEL=data)" /data || echo "INIT: cannot mount /data"
stick=$(findfs LABEL=stick 2>/dev/null) && mount -o ro "$stick" /media
mkdir -p /data/app; (while true; do echo "$(cat /etc/release) alive" > /data/app/heartbeat; sleep 1; done) &
FLEET_NETWORK
BEFORE_HEALTH
updater health; echo "HEALTH EXIT $?"
# Healthy: the watchdog the boot stage armed is taken over (loading the
# driver stops it); a release that never gets here is reset by it.
TAKE_WATCHDOG
echo "READY $(cat /etc/release)"
FLEET_CLIENT
exec sh
"#;
    // Up before the health check, which sends its verdict before any
    // reboot; a few seconds at most, inside the boot stage's watchdog.
    let network = format!(
        r#"{load_net}
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 1 && echo "NET $(ip -4 -o addr show eth0 | awk '{{print $4}}')" || echo "INIT: no DHCP lease on eth0""#
    );
    // The fleet client starts once the device has its token: from the
    // factory on, the technician's commissioning writes it to /data.
    let client = "(while ! test -s /data/fleet/token; do sleep 1; done; exec updater fleet) &";
    // The API starts once a user has a password: with none, it would
    // refuse to start (no default credentials). Its socket goes to /tmp,
    // as the slot's root is never written.
    let api = "(while ! test -s /data/switchback/api-users.json; do sleep 1; done; exec updater serve --socket /tmp/updater.sock) &";
    let network = match (release.fleet_url, release.api_listen) {
        (None, None) => "",
        _ => network.as_str(),
    };
    let client = match (release.fleet_url, release.api_listen) {
        (Some(_), Some(_)) => format!("{client}\n{api}"),
        (Some(_), None) => client.to_string(),
        (None, Some(_)) => api.to_string(),
        (None, None) => String::new(),
    };
    std::fs::write(
        root.join("sbin/init"),
        init.replace("BEFORE_HEALTH", release.before_health)
            .replace("CONSOLE", kernel.console())
            .replace("TAKE_WATCHDOG", &take_watchdog)
            .replace("FLEET_NETWORK", network)
            .replace("FLEET_CLIENT", &client),
    )?;
    std::fs::set_permissions(
        root.join("sbin/init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    if release.filler_mib > 0 {
        std::fs::create_dir_all(root.join("opt"))?;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let block: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = std::fs::File::create(root.join("opt/filler"))?;
        for i in 0..release.filler_mib {
            // Each MiB differs, so that zstd finds no repeats across chunks.
            let mut b = block.clone();
            b[..8].copy_from_slice(&i.to_le_bytes());
            std::io::Write::write_all(&mut f, &b)?;
        }
    }
    // The filler's blocks and their metadata (4 KiB blocks, a larger
    // journal) need an eighth more than its size.
    ext4_image(
        &root,
        out,
        &format!("{}M", 64 + release.filler_mib * 9 / 8),
        "rootfs",
    )
}

/// The boot stage's initramfs: the modules for the disk (virtio or NVMe),
/// the watchdog and ext4, and the static `bootctl` as /init.
pub fn boot_stage_initramfs(kernel: &Kernel, out: &Path) -> Result<()> {
    let modules = kernel.modules_for(&[
        "virtio_pci",
        "virtio_blk",
        "nvme",
        "i6300esb",
        "ext4",
        "crc32c_generic",
    ])?;
    let ir = Initramfs::new(kernel)?;
    // A kexec is a reboot to the kernel: keep the watchdog running through it.
    ir.modules(&modules, &[("watchdog", "stop_on_reboot=0")])?;
    ir.init_program(&static_binary(kernel.arch, "bootctl")?)?;
    ir.pack(out)
}

/// `kernel` with `initrd` and [`boot_stage_cmdline`] as one EFI program
/// (`image-tools uki`), for a disk's ESP.
pub fn efi_program(kernel: &Kernel, initrd: &Path, out: &Path) -> Result<()> {
    image_tools::uki::build(&image_tools::uki::UkiOptions {
        arch: kernel.arch,
        stub: Some(efi_stub(kernel.arch)?),
        kernel: kernel.vmlinuz.clone(),
        initrd: initrd.to_path_buf(),
        cmdline: boot_stage_cmdline(kernel),
        out: out.to_path_buf(),
    })
}

/// A disk at `out` whose ESP boots `kernel` with `initrd` (slots of
/// `slot_size` left empty, an empty data partition): for tests of a boot
/// stage of their own.
pub fn disk_booting(
    kernel: &Kernel,
    initrd: &Path,
    slot_size: u64,
    out: &Path,
) -> Result<bootctl::provision::Provisioned> {
    let efi = out.with_extension("efi");
    efi_program(kernel, initrd, &efi)?;
    disk_with_efi(kernel.arch, &efi, slot_size, out)
}

/// A disk at `out` whose ESP holds `efi` as the firmware's default loader
/// (slots of `slot_size` left empty, an empty data partition).
pub fn disk_with_efi(
    arch: Arch,
    efi: &Path,
    slot_size: u64,
    out: &Path,
) -> Result<bootctl::provision::Provisioned> {
    image_tools::mkdisk::mkdisk(&image_tools::mkdisk::MkdiskOptions {
        out: out.to_path_buf(),
        esp_size: esp_size(arch),
        arch,
        boot_efi: Some(efi.to_path_buf()),
        boot_kernel: None,
        boot_initrd: None,
        boot_cmdline: String::new(),
        slot_size,
        data_size: 4 << 20,
        slot_a: None,
        public: None,
        sector_size: bootctl::host::SectorSize::B512,
    })
}

/// An ESP that holds the boot stage: Debian's arm64 kernel is an
/// uncompressed Image of about 32 MiB.
pub fn esp_size(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 32 << 20,
        Arch::Arm64 => 64 << 20,
    }
}

/// The UEFI boot stage (`bootctl/uefi`), built by `.ci/boot-efi` for
/// `arch`: one EFI program that selects a slot and starts its kernel,
/// without a kernel of its own.
pub fn uefi_boot_stage(arch: Arch) -> Result<PathBuf> {
    let target = match arch {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    let script = super::workspace().join(".ci/boot-efi");
    let out = Command::new("bash").arg(&script).arg(target).output()?;
    if !out.status.success() {
        bail!(
            "{} {target} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(path.trim());
    ensure!(
        path.is_file(),
        "{} did not build {}",
        script.display(),
        path.display()
    );
    Ok(path)
}
