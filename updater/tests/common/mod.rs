//! Test devices and releases shared by the updater's integration tests.
#![allow(dead_code)]

use assert_cmd::Command;
use bootctl::provision::{self, Layout, Provisioned};
use bootctl::{BootAttrs, Disk, Slot};
use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
use ed25519_dalek::SigningKey;
use image_tools::bundle::{self, BuildOptions, ImageSource};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MIB: usize = 1 << 20;

pub struct Device {
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub config: PathBuf,
    pub layout: Provisioned,
}

pub fn pattern(len: usize, salt: u32) -> Vec<u8> {
    let mut x = 0x2545_F491u32 ^ salt.wrapping_mul(0x9E37_79B9);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 4 == 0 {
                (x >> 24) as u8
            } else {
                (i >> 9) as u8
            }
        })
        .collect()
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A factory disk in a fresh directory (or in `dir`), slot_a and data
/// filled with known bytes, a config trusting key 1.
pub fn device_in(dir: tempfile::TempDir, slot_mib: u64) -> Device {
    let disk = dir.path().join("disk.img");
    let layout = provision::create(
        &disk,
        Layout {
            esp_size: 1 << 20,
            slot_size: slot_mib << 20,
            data_size: 2 << 20,
            sector_size: 512,
        },
    )
    .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(
        &pattern(layout.slots[0].size as usize, 100),
        layout.slots[0].offset,
    )
    .unwrap();
    f.write_all_at(&pattern(layout.data.size as usize, 200), layout.data.offset)
        .unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(
        keys.join("vendor.pem"),
        key(1)
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let config = dir.path().join("config.json");
    let state_dir = dir.path().join("state");
    // The mounted data partition.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        &config,
        serde_json::json!({
            "compatible": "acme-gw",
            "keyring": keys,
            "data_dir": dir.path().join("data"),
            "state_dir": state_dir,
            "boot_tries": 4,
        })
        .to_string(),
    )
    .unwrap();
    Device {
        dir,
        disk,
        config,
        layout,
    }
}

pub fn device() -> Device {
    device_in(tempfile::tempdir().unwrap(), 8)
}

pub struct Release<'a> {
    pub version: &'a str,
    pub compatible: &'a str,
    pub security_version: u64,
    pub target: &'a str,
    pub signer: SigningKey,
    pub image: Vec<u8>,
    pub data_schema: Option<u32>,
    pub migrations: Vec<bundle::MigrationSource>,
    /// Makes a delta bundle against this base image.
    pub base: Option<PathBuf>,
    pub chunk_size: u64,
    /// The root carries a dm-verity hash tree (its image must be whole
    /// 4 KiB blocks).
    pub verity: bool,
}

pub fn release(version: &str) -> Release<'_> {
    Release {
        version,
        compatible: "acme-gw",
        security_version: 1,
        target: "rootfs",
        signer: key(1),
        image: pattern(3 * MIB + 12345, 7),
        data_schema: None,
        migrations: Vec::new(),
        base: None,
        chunk_size: 256 << 10,
        verity: false,
    }
}

impl Device {
    pub fn bundle(&self, r: &Release) -> PathBuf {
        bundle_in(self.dir.path(), r)
    }
}

pub fn bundle_in(dir: &Path, r: &Release) -> PathBuf {
    let img = dir.join(format!("{}-{}.img", r.version, r.target));
    std::fs::write(&img, &r.image).unwrap();
    let out = dir.join(format!("{}-{}-{}.swb", r.version, r.compatible, r.target));
    let opts = BuildOptions {
        compatible: r.compatible.into(),
        version: r.version.into(),
        security_version: r.security_version,
        data_schema: r.data_schema,
        build_time: 1,
        level: 3,
        chunk_size: r.chunk_size,
        threads: 2,
        migrations: r.migrations.clone(),
        base: r.base.clone(),
        verity: r.verity,
    };
    bundle::build(
        &opts,
        &[ImageSource {
            target: r.target.into(),
            path: img,
        }],
        &[&r.signer],
        &out,
        &mut |_| {},
    )
    .unwrap();
    out
}

impl Device {
    pub fn updater(&self, booted: &str) -> Command {
        let mut c = Command::cargo_bin("updater").unwrap();
        c.arg("--config")
            .arg(&self.config)
            .arg("--disk")
            .arg(&self.disk)
            .args(["--booted-slot", booted]);
        c
    }

    /// [`Device::updater`] as a process to start and kill.
    pub fn updater_process(&self, booted: &str) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("updater"));
        c.arg("--config")
            .arg(&self.config)
            .arg("--disk")
            .arg(&self.disk)
            .args(["--booted-slot", booted]);
        c
    }

    /// `updater ARGS` on `booted`, run where a reboot cannot restart this
    /// machine: as root, as the first process of a PID namespace of its
    /// own (`unshare --pid --fork`), where `reboot(2)` kills that process
    /// with SIGHUP instead; as another user, `reboot(2)` fails with EPERM.
    /// Either way a reboot attempted shows as a failure, never a restart.
    pub fn updater_guarded(&self, booted: &str, args: &[&str]) -> assert_cmd::assert::Assert {
        let inner = self.updater_process(booted);
        let mut c = if nix::unistd::Uid::effective().is_root() {
            let mut c = std::process::Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child", "--"])
                .arg(inner.get_program())
                .args(inner.get_args());
            c
        } else {
            eprintln!(
                "not root: a reboot would fail with EPERM instead of being caught by unshare"
            );
            inner
        };
        c.args(args);
        assert_cmd::Command::from_std(c)
            .timeout(std::time::Duration::from_secs(120))
            .assert()
    }

    /// `updater install` of `r`'s bundle from `booted`, killed (as by a
    /// power cut) once `marker` exists: the migration's sign that it is
    /// half-way.
    pub fn install_killed_at(&self, booted: &str, r: &Release, marker: &Path) {
        let mut updater = self
            .updater_process(booted)
            .arg("install")
            .arg(self.bundle(r))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !marker.exists() {
            assert!(t0.elapsed().as_secs() < 60, "the migration never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        updater.kill().unwrap();
        updater.wait().unwrap();
    }

    /// `updater install` of `r`'s bundle, booted from `booted`, which must
    /// succeed.
    pub fn install_ok(&self, booted: &str, r: &Release) {
        self.updater(booted)
            .arg("install")
            .arg(self.bundle(r))
            .assert()
            .success();
    }

    /// `updater health --no-reboot` on `booted`, which must succeed.
    pub fn health_ok(&self, booted: &str) {
        self.updater(booted)
            .args(["health", "--no-reboot"])
            .assert()
            .success();
    }

    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(&self.disk)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
    pub fn slot(&self, s: Slot) -> Vec<u8> {
        let r = self.layout.slots[s.index()];
        self.read(r.offset, r.size)
    }
    pub fn data(&self) -> Vec<u8> {
        self.read(self.layout.data.offset, self.layout.data.size)
    }
    pub fn attrs(&self) -> [BootAttrs; 2] {
        Disk::open(&self.disk, None, false)
            .unwrap()
            .read()
            .unwrap()
            .attrs()
    }
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("state/state.json")).unwrap())
            .unwrap()
    }
    /// Makes slot_b hold a proven release, as after an earlier good update.
    pub fn make_b_good(&self) {
        Disk::open(&self.disk, None, true)
            .unwrap()
            .update(|a| {
                a[1] = BootAttrs {
                    priority: 1,
                    tries: 0,
                    successful: true,
                };
                Ok(())
            })
            .unwrap();
    }
}

impl Device {
    /// Replaces the health section of the device's config.
    pub fn set_health(&self, health: serde_json::Value) {
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap();
        c["health"] = health;
        std::fs::write(&self.config, c.to_string()).unwrap();
    }

    /// A reboot: the boot stage's selection, try spent and persisted.
    pub fn boot(&self) -> Slot {
        Disk::open(&self.disk, None, true)
            .unwrap()
            .select()
            .unwrap()
            .slot
    }

    pub fn history(&self) -> Vec<(String, String)> {
        self.state()["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["event"].as_str().unwrap().to_string(),
                    h["slot"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

pub fn letter(s: Slot) -> &'static str {
    match s {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Every file under `dir` with its bytes, for exact comparisons.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string() + "/",
                    Vec::new(),
                ));
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Installs `bundle` through the library, booted from slot_a, with an
/// observer that can step in between phases.
pub fn install_with(
    dev: &Device,
    bundle: &Path,
    observer: &mut dyn updater::events::Observer,
) -> anyhow::Result<updater::install::Installed> {
    let config = updater::config::Config::load(&dev.config)?;
    let opts = updater::install::InstallOptions {
        fleet_action: None,
        activate: true,
        expect_version: None,
        artifact_digest: None,
        disk: dev.disk.clone(),
        sector_size: None,
        booted: Slot::A,
        allow_downgrade: false,
        threads: 2,
        // The budget is the whole process's, and this one is a test
        // harness running other tests beside it.
        memory: 1 << 30,
    };
    updater::install::install(
        &config,
        Box::new(std::fs::File::open(bundle)?),
        &opts,
        observer,
    )
}

/// A memory cgroup limited to `limit` bytes, removed when dropped: v2
/// where the machine has its memory controller, else v1.
pub struct MemoryCgroup {
    dir: PathBuf,
    /// The file holding the most it was ever charged.
    pub peak: PathBuf,
}

impl MemoryCgroup {
    /// One for a test: `None` (the test says it is skipped) where it
    /// cannot be made, except under CI, where that fails the test.
    pub fn for_test(limit: u64) -> Option<MemoryCgroup> {
        if !switchback_test_support::needs_root("a memory cgroup") {
            return None;
        }
        match MemoryCgroup::make(limit) {
            Ok(g) => Some(g),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: no memory cgroup can be made here ({e})");
                None
            }
            Err(e) => panic!("CI runs this test, and no memory cgroup can be made: {e}"),
        }
    }

    pub fn make(limit: u64) -> Result<MemoryCgroup, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("switchback-test-{}-{n}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file, peak) = if v2_memory {
            let dir = v2.join(&name);
            (dir.clone(), dir.join("memory.max"), dir.join("memory.peak"))
        } else {
            let dir = Path::new("/sys/fs/cgroup/memory").join(&name);
            (
                dir.clone(),
                dir.join("memory.limit_in_bytes"),
                dir.join("memory.max_usage_in_bytes"),
            )
        };
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let group = MemoryCgroup { dir, peak };
        std::fs::write(&limit_file, limit.to_string())
            .map_err(|e| format!("writing {}: {e}", limit_file.display()))?;
        Ok(group)
    }

    /// `command` run inside the cgroup (the shell joins it, then execs).
    pub fn run(&self, command: &std::process::Command) -> std::process::Output {
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(command.get_program())
            .args(command.get_args());
        sh.output().unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs `args`, which must succeed; its standard output, trimmed.
pub fn run_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A device's disk file as a loop device with its partitions (`partx`:
/// `losetup -P` makes none here), detached when dropped. Needs root.
pub struct LoopDisk {
    pub path: String,
    mounted: Option<PathBuf>,
}

impl LoopDisk {
    pub fn attach(dev: &Device) -> LoopDisk {
        let path = run_ok(&["losetup", "-f", "--show", dev.disk.to_str().unwrap()]);
        let lo = LoopDisk {
            path,
            mounted: None,
        };
        run_ok(&["partx", "-a", &lo.path]);
        lo
    }

    /// Makes a file system on the data partition and mounts it at
    /// `dev.dir/mnt`; a config with its `data_dir` there (and the device's
    /// keyring), as on an appliance. Returns the config's path.
    pub fn mount_data(&mut self, dev: &Device) -> PathBuf {
        let mnt = dev.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        // The data partition's device, by its entry (the ESP comes first).
        let data = Disk::open(&dev.disk, None, false)
            .unwrap()
            .read()
            .unwrap()
            .table
            .data
            .unwrap();
        let data_dev = format!("{}p{}", self.path, data.index + 1);
        run_ok(&["mkfs.ext4", "-q", &data_dev]);
        run_ok(&["mount", &data_dev, mnt.to_str().unwrap()]);
        self.mounted = Some(mnt.clone());
        let config = dev.dir.path().join("on-data.json");
        let keys = dev.dir.path().join("keys");
        std::fs::write(
            &config,
            serde_json::json!({"compatible": "acme-gw", "keyring": keys, "data_dir": mnt})
                .to_string(),
        )
        .unwrap();
        config
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if let Some(mnt) = &self.mounted {
            let _ = std::process::Command::new("umount").arg(mnt).status();
        }
        // The kernel may hold a just-unmounted partition a moment longer.
        for _ in 0..20 {
            let done = std::process::Command::new("partx")
                .args(["-d", &self.path])
                .stderr(std::process::Stdio::null())
                .status();
            if done.is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.path])
            .status();
    }
}

/// A self-signed P-256 certificate for 127.0.0.1 and its key, made by
/// openssl in `dir`: the certificate's path and the key's. `end_entity`
/// marks it `CA:FALSE`, as a server's own certificate (rustls refuses a
/// CA's certificate presented as a server's); without it openssl makes a
/// CA certificate, which a client names as self-signed.
pub fn self_signed(dir: &Path, name: &str, cn: &str, end_entity: bool) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let mut openssl = std::process::Command::new("openssl");
    openssl.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    if end_entity {
        openssl.args(["-addext", "basicConstraints=critical,CA:FALSE"]);
    }
    let made = openssl
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}
