//! The guest builder: Debian's kernel and modules, static Switchback
//! binaries, and an initramfs around them.

use anyhow::{bail, Context, Result};
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

/// Debian's kernel, unpacked (not installed) into the cache.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

impl Kernel {
    /// Downloads `linux-image-amd64`'s current kernel package once per
    /// version and unpacks it with `dpkg -x`.
    pub fn debian() -> Result<Kernel> {
        let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        let package = depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| {
                p.starts_with("linux-image-")
                    && p.chars().nth(12).is_some_and(|c| c.is_ascii_digit())
            })
            .context(
                "apt-cache knows no kernel package behind linux-image-amd64 (run apt-get update)",
            )?
            .to_string();
        let dir = super::cache_dir().join(&package);
        let done = dir.join(".unpacked");
        if !done.exists() {
            std::fs::create_dir_all(&dir)?;
            let download = |d: &Path| {
                run(Command::new("apt-get")
                    .args(["download", &package])
                    .current_dir(d))
            };
            if download(&dir).is_err() {
                run(Command::new("apt-get").arg("update").arg("-qq"))?;
                download(&dir)?;
            }
            let deb = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .context("apt-get download left no .deb")?;
            run(Command::new("dpkg")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root")))?;
            std::fs::remove_file(&deb)?;
            std::fs::write(&done, b"")?;
        }
        let boot = dir.join("root/boot");
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
            vmlinuz,
            modules: dir.join("root/lib/modules").join(release),
        })
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
        let mut order = Vec::new();
        let mut seen = HashSet::new();
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

/// Builds Switchback binaries statically (`+crt-static`), so they run as
/// the only userspace of an initramfs. A target directory of their own:
/// the outer `cargo test` holds the workspace's.
pub fn static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let ws = super::workspace();
    let target_dir = ws.join("target").join("qemu-static");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-p",
                package,
                "--bin",
                bin,
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(&ws),
    )?;
    Ok(target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(bin))
}

/// A busybox-based initramfs: files copied in, `/init` a shell script.
pub struct Initramfs {
    root: tempfile::TempDir,
}

impl Initramfs {
    pub fn new() -> Result<Initramfs> {
        let staging = tempfile::tempdir()?;
        let root = staging.path();
        for d in ["bin", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .context("busybox not found: apt-get install busybox-static")?;
        std::fs::copy(busybox, root.join("bin/busybox"))?;
        Ok(Initramfs { root: staging })
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
    /// console on ttyS0).
    pub fn init(&self, modules: &[PathBuf], script: &str) -> Result<&Self> {
        let mut init = String::from(
            "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nexec >/dev/ttyS0 2>&1\n",
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
    /// in load order (what `bootctl boot-stage` reads).
    pub fn modules(&self, modules: &[PathBuf]) -> Result<&Self> {
        let mut order = String::new();
        for m in modules {
            let name = m
                .file_name()
                .and_then(|n| n.to_str())
                .context("module name")?;
            self.add(m, &format!("lib/modules/{name}"))?;
            order += name;
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
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(self.root.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(out)?)
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
        Ok(())
    }
}

/// An ext4 image of `size` built from `dir` (`mkfs.ext4 -d`).
pub fn ext4_image(dir: &Path, out: &Path, size: &str) -> Result<()> {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(out)
        .arg(size))?;
    Ok(())
}
