//! A small but real appliance to test and demo: releases as slot images,
//! signed bundles on a virtio "USB stick", the factory disk, and a machine
//! that boots through the boot stage.

use crate::guest::{
    boot_stage_cmdline, boot_stage_initramfs, esp_size, ext4_image, release_image, uefi_boot_stage,
    Kernel, Release, FLEET_HW_REVISION,
};
use crate::qemu::{Firmware, Machine, Options};
use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
use ed25519_dalek::SigningKey;
use image_tools::bundle::{self, BuildOptions, ImageSource, MigrationSource};
use image_tools::mkdisk::{mkdisk, MkdiskOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const BOOT: Duration = Duration::from_secs(240);
pub const STEP: Duration = Duration::from_secs(120);
pub const HEARTBEAT_CHECK: &str =
    r#"[{"name": "service", "command": ["test", "-f", "/data/app/heartbeat"], "timeout_s": 10}]"#;

pub struct Appliance {
    pub dir: tempfile::TempDir,
    kernel: Kernel,
    key: SigningKey,
    pem: PathBuf,
    firmware: Firmware,
    /// The factory disk starts the boot stage through an extlinux.conf
    /// (U-Boot without UEFI), not as an EFI program.
    extlinux: bool,
    /// Under Secure Boot: the db key and certificate the boot stage and
    /// every release's kernel are signed with.
    db: Option<(PathBuf, PathBuf)>,
    /// Bundles carry a dm-verity hash tree for their root.
    verity: bool,
    /// The boot stage starts only releases whose root is under dm-verity
    /// (`image-tools stage --require-verity`).
    require_verity: bool,
}

impl Appliance {
    /// An x86-64 appliance with UEFI firmware (OVMF).
    pub fn new() -> Appliance {
        Appliance::on(Firmware::Ovmf)
    }

    /// An appliance of `firmware`'s machine whose factory disk boots the
    /// boot stage as an EFI program.
    pub fn on(firmware: Firmware) -> Appliance {
        Appliance::make(firmware, false)
    }

    /// An arm64 appliance whose U-Boot has no UEFI: the factory disk boots
    /// the boot stage through the extlinux.conf `mkdisk` writes.
    pub fn uboot_extlinux() -> Appliance {
        Appliance::make(Firmware::UBoot, true)
    }

    /// This appliance with its releases' roots under dm-verity
    /// (`image-tools build --verity`).
    pub fn with_verity(mut self) -> Appliance {
        self.verity = true;
        self
    }

    /// This appliance with a boot stage that starts no release without a
    /// dm-verity tree (`image-tools stage --require-verity`).
    pub fn requiring_verity(mut self) -> Appliance {
        self.require_verity = true;
        self
    }

    fn make(firmware: Firmware, extlinux: bool) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[0x17; 32]);
        let pem = dir.path().join("vendor.pem");
        std::fs::write(
            &pem,
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let mut kernel = Kernel::debian_for(firmware.arch()).unwrap();
        // Under Secure Boot the vendor signs the kernel for db before it
        // goes into the root (docs/boot-flow.md, "Secure Boot").
        let db = (firmware == Firmware::OvmfSecureBoot)
            .then(|| crate::guest::snakeoil_db(dir.path()).unwrap());
        if let Some((db_key, db_cert)) = &db {
            let signed = dir.path().join("vmlinuz.signed");
            std::fs::copy(&kernel.vmlinuz, &signed).unwrap();
            image_tools::secureboot::sign(&signed, db_key, db_cert).unwrap();
            kernel.vmlinuz = signed;
        }
        Appliance {
            kernel,
            dir,
            key,
            pem,
            firmware,
            extlinux,
            db,
            verity: false,
            require_verity: false,
        }
    }

    pub fn image(&self, release: &Release) -> PathBuf {
        let out = self.dir.path().join(format!("{}.ext4", release.version));
        release_image(self.dir.path(), &self.kernel, release, &self.pem, &out).unwrap();
        out
    }

    /// A signed bundle of `image` for `compatible`.
    pub fn bundle(
        &self,
        name: &str,
        version: &str,
        compatible: &str,
        image: &Path,
        migrations: Vec<MigrationSource>,
    ) -> PathBuf {
        let opts = BuildOptions {
            compatible: compatible.into(),
            version: version.into(),
            security_version: 1,
            data_schema: if migrations.is_empty() { None } else { Some(2) },
            build_time: 1,
            level: 3,
            chunk_size: 4 << 20,
            threads: 2,
            migrations,
            base: None,
            verity: self.verity,
        };
        let out = self.dir.path().join(format!("{name}.swb"));
        let src = [ImageSource {
            target: "rootfs".into(),
            path: image.to_path_buf(),
        }];
        bundle::build(&opts, &src, &[&self.key], &out, &mut |_| {}).unwrap();
        out
    }

    /// `bundle` signed by `key` alone: the vendor's signature replaced.
    pub fn resign_by(&self, bundle: &Path, key: &SigningKey) {
        let vendor = bundle::keys::short_id(&bundle::keys::key_id(&self.key.verifying_key()));
        bundle::signing::resign(
            bundle,
            bundle,
            &[key as &dyn bundle::signing::Signer],
            &[vendor],
        )
        .unwrap();
    }

    /// Writes `image` into `slot` of `disk` with the signed record of its
    /// `bundle` at the slot's end, as an install leaves the slot (the boot
    /// flags untouched): for scenarios that start after an install.
    pub fn write_slot(&self, disk: &Path, slot: bootctl::Slot, image: &Path, bundle: &Path) {
        use std::os::unix::fs::FileExt;
        let keyring = bundle::Keyring::from_verifying_keys([self.key.verifying_key()]);
        let head = image_tools::ops::open(bundle)
            .unwrap()
            .verify(&keyring)
            .unwrap()
            .head;
        let table = bootctl::Disk::open(disk, None, false)
            .unwrap()
            .read()
            .unwrap();
        let entry = table.table.entry(slot);
        let (offset, size) = (
            entry.first_lba * 512,
            (entry.last_lba + 1 - entry.first_lba) * 512,
        );
        let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
        f.write_all_at(&std::fs::read(image).unwrap(), offset)
            .unwrap();
        bundle::trailer::write(&f, offset, size, &head).unwrap();
    }

    /// `image` as a release for a fleet server: its bundle wrapped as a
    /// `.swu` for [`FLEET_HW_REVISION`].
    pub fn swu(&self, version: &str, image: &Path) -> PathBuf {
        let bundle = self.bundle(version, version, "switchback-qemu", image, Vec::new());
        let manifest = bundle::Envelope::read(std::fs::File::open(&bundle).unwrap())
            .unwrap()
            .unverified_manifest()
            .unwrap();
        let out = self.dir.path().join(format!("{version}.swu"));
        bundle::swu::wrap_file(&bundle, &manifest, &[FLEET_HW_REVISION.into()], &out).unwrap();
        out
    }

    /// An ext4 "USB stick" holding `files`; the guest mounts it at /media.
    pub fn stick(&self, files: &[&Path]) -> PathBuf {
        let dir = self.dir.path().join("stick");
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let out = self.dir.path().join("stick.ext4");
        ext4_image(&dir, &out, "160M", "stick").unwrap();
        out
    }

    /// A bundle of `image` alone on a stick.
    pub fn media(&self, version: &str, image: &Path) -> PathBuf {
        let b = self.bundle(version, version, "switchback-qemu", image, Vec::new());
        self.stick(&[&b])
    }

    /// The factory disk: the boot stage on its ESP, `v1` in slot_a.
    pub fn factory_disk(&self, v1: &Path) -> PathBuf {
        self.factory_disk_named("disk", v1)
    }

    /// `factory_disk` for one of several machines: `name.img`. `v1` may
    /// be a signed bundle: the factory release then has its signed record
    /// and the device knows its version from the first boot.
    pub fn factory_disk_named(&self, name: &str, v1: &Path) -> PathBuf {
        self.factory_disk_sized(name, v1, 72 << 20)
    }

    /// `factory_disk_named` with slots of `slot_size` bytes. A raw `v1`
    /// (its file named after its version) goes in as its signed bundle: the
    /// boot stage starts only signed releases.
    pub fn factory_disk_sized(&self, name: &str, v1: &Path, slot_size: u64) -> PathBuf {
        let out = self.dir.path().join(format!("{name}.img"));
        let v1 = &if v1.extension().is_some_and(|e| e == "swb") {
            v1.to_path_buf()
        } else {
            let version = v1.file_stem().and_then(|s| s.to_str()).unwrap();
            self.bundle(
                &format!("factory-{version}"),
                version,
                "switchback-qemu",
                v1,
                Vec::new(),
            )
        };
        let arch = self.kernel.arch;
        let (boot_efi, boot_kernel, boot_initrd) = if self.extlinux {
            let initrd = self.dir.path().join("boot-stage.cpio");
            if !initrd.exists() {
                let plain = self.dir.path().join("boot-stage-unkeyed.cpio");
                boot_stage_initramfs(&self.kernel, &plain).unwrap();
                self.key_stage(None, Some(plain), &initrd);
            }
            (None, Some(self.kernel.vmlinuz.clone()), Some(initrd))
        } else {
            (Some(self.boot_stage()), None, None)
        };
        let opts = MkdiskOptions {
            out: out.clone(),
            esp_size: esp_size(arch),
            arch,
            boot_efi,
            boot_kernel,
            boot_initrd,
            boot_cmdline: boot_stage_cmdline(&self.kernel),
            slot_size,
            data_size: 16 << 20,
            slot_a: Some(v1.to_path_buf()),
            public: Some(self.pem.clone()),
            sector_size: bootctl::host::SectorSize::B512,
        };
        mkdisk(&opts).unwrap();
        out
    }

    /// The UEFI boot stage trusting the vendor's key, as the factory puts
    /// it on the ESP; built once per appliance.
    fn boot_stage(&self) -> PathBuf {
        let efi = self.dir.path().join(self.kernel.arch.efi_loader());
        if !efi.exists() {
            self.key_stage(Some(uefi_boot_stage(self.kernel.arch).unwrap()), None, &efi);
        }
        efi
    }

    /// `image-tools stage` of the UEFI stage `efi` or the Linux stage's
    /// `initrd`: trusting the vendor's key, as this appliance demands.
    fn key_stage(&self, efi: Option<PathBuf>, initrd: Option<PathBuf>, out: &Path) {
        let stage = image_tools::stage::StageOptions {
            arch: self.kernel.arch,
            efi,
            initrd,
            trust: image_tools::cli::Trust {
                public: Some(self.pem.clone()),
                keyring: None,
            },
            require_verity: self.require_verity,
            db: image_tools::secureboot::DbKey {
                db_key: self.db.as_ref().map(|d| d.0.clone()),
                db_cert: self.db.as_ref().map(|d| d.1.clone()),
            },
            out: out.to_path_buf(),
        };
        image_tools::stage::build(&stage).unwrap();
    }

    /// Powers on the machine with `disk` (booted by the firmware) and the
    /// `stick`; a reboot or a watchdog reset starts it again.
    pub fn boot(&self, disk: &Path, stick: &Path) -> Machine {
        self.boot_with(disk, stick, Options::default())
    }

    /// `boot`, with writes to `disk` slowed to `write_bps` bytes a second.
    pub fn boot_throttled(&self, disk: &Path, stick: &Path, write_bps: u32) -> Machine {
        self.boot_with(
            disk,
            stick,
            Options {
                write_bps: Some(write_bps),
                ..Options::default()
            },
        )
    }

    /// Powers on a machine of a fleet: `disk` alone, a network card on
    /// QEMU's user network (the host is 10.0.2.2), and `serial` as the
    /// firmware's serial number; reboots start it again.
    pub fn boot_networked(&self, disk: &Path, serial: &str) -> Machine {
        Machine::start(
            &[disk],
            Options {
                reboots: true,
                net: true,
                serial: Some(serial.into()),
                firmware: self.firmware,
                ..Options::default()
            },
        )
        .unwrap()
    }

    /// Boots `disk` on QEMU's user network with the host's loopback port
    /// `host` forwarded to the appliance's `guest` port.
    pub fn boot_forwarding(&self, disk: &Path, host: u16, guest: u16) -> Machine {
        Machine::start(
            &[disk],
            Options {
                reboots: true,
                net: true,
                forward: Some((host, guest)),
                firmware: self.firmware,
                ..Options::default()
            },
        )
        .unwrap()
    }

    /// `boot` with other `opts` (the boot disk's bus, write throttling).
    pub fn boot_with(&self, disk: &Path, stick: &Path, opts: Options) -> Machine {
        Machine::start(
            &[disk, stick],
            Options {
                reboots: true,
                firmware: self.firmware,
                ..opts
            },
        )
        .unwrap()
    }
}

/// Boots the factory machine (v1 on slot_a) with `stick`, to its shell.
pub fn factory(app: &Appliance, stick: &Path) -> (Machine, PathBuf) {
    factory_with(app, stick, Options::default())
}

/// `factory` with the machine started with `opts`.
pub fn factory_with(app: &Appliance, stick: &Path, opts: Options) -> (Machine, PathBuf) {
    let v1 = app.image(&Release::default());
    let disk = app.factory_disk(&v1);
    let mut vm = app.boot_with(&disk, stick, opts);
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    (vm, disk)
}

/// `version` boots on trial from `slot`, passes its health check, is
/// committed and reaches its shell.
pub fn runs_committed(vm: &mut Machine, version: &str, slot: &str) {
    vm.expect(&format!("RELEASE {version} RUNNING ON {slot}"), BOOT)
        .unwrap();
    let committed = format!("{slot} ({version}) passed its health check and is committed");
    vm.expect(&committed, STEP).unwrap();
    vm.expect(&format!("READY {version}"), STEP).unwrap();
}

/// Changes one byte of `slot` on the powered-off machine's `disk`, `at`
/// bytes into the slot (XOR `mask`), as a bit flip of the medium or
/// someone with the disk would.
pub fn change_byte_in_slot(disk: &Path, slot: bootctl::Slot, at: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let start = bootctl::Disk::open(disk, None, false)
        .unwrap()
        .read()
        .unwrap()
        .table
        .entry(slot)
        .first_lba
        * 512;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, start + at).unwrap();
    f.write_all_at(&[byte[0] ^ mask], start + at).unwrap();
}

/// Back on the factory release after a failed update, told why once.
pub fn back_on_a(vm: &mut Machine, why: &str) {
    vm.expect("switchback boot stage: selected slot_a", BOOT)
        .unwrap();
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    let line = vm.expect("was rolled back", STEP).unwrap();
    assert!(line.contains(why), "{line}");
    vm.expect("HEALTH EXIT 51", STEP).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
}

impl Default for Appliance {
    fn default() -> Self {
        Appliance::new()
    }
}

/// A machine of `memory_mib` MiB installs, boots and commits a release
/// larger than its memory, most of it incompressible: the updater stays
/// within its 16 MiB budget beside the running system, nothing is killed,
/// and the boot stage starts the new release in that memory.
pub fn installs_a_release_larger_than_its_memory(app: &Appliance, memory_mib: u32) {
    let v1 = app.image(&Release::default());
    let v2 = app.image(&Release {
        version: "2.0.0",
        filler_mib: u64::from(memory_mib) - 8,
        ..Release::default()
    });
    let v2_size = std::fs::metadata(&v2).unwrap().len();
    assert!(
        v2_size > u64::from(memory_mib) << 20,
        "the release is {v2_size} bytes"
    );
    let disk = app.factory_disk_sized("disk", &v1, v2_size + (8 << 20));
    let stick = app.media("2.0.0", &v2);
    let mut vm = app.boot_with(
        &disk,
        &stick,
        Options {
            memory_mib: Some(memory_mib),
            ..Options::default()
        },
    );
    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    vm.send("free -m; updater install /media/2.0.0.swb --reboot; echo INSTALL EXIT $?")
        .unwrap();
    // free -m: "Mem:  total  used  free ...", in MiB.
    let mem = vm.expect("Mem:", STEP).unwrap();
    let total: u64 = mem
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no total in {mem:?}"));
    assert!(total << 20 < v2_size, "{total} MiB of RAM: {mem}");
    vm.expect("within 16 MiB of memory", STEP).unwrap();
    // A killed install prints its exit and never flips: the machine
    // reboots into slot_b only after a whole, checked install.
    vm.expect(
        "switchback boot stage: selected slot_b",
        Duration::from_secs(900),
    )
    .unwrap();
    runs_committed(&mut vm, "2.0.0", "slot_b");
}
