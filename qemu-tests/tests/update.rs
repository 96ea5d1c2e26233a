//! Update scenarios on a whole machine: the boot stage, the slots' own
//! kernels, the updater inside the guest, reboots through QEMU.

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
use ed25519_dalek::SigningKey;
use image_tools::bundle::{self, BuildOptions, ImageSource};
use image_tools::mkdisk::{mkdisk, MkdiskOptions};
use qemu_tests::guest::{boot_stage_initramfs, ext4_image, release_image, Kernel, Release};
use qemu_tests::qemu::Machine;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
const STEP: Duration = Duration::from_secs(120);

struct Appliance {
    dir: tempfile::TempDir,
    kernel: Kernel,
    key: SigningKey,
    pem: PathBuf,
}

impl Appliance {
    fn new() -> Appliance {
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
        Appliance {
            kernel: Kernel::debian().unwrap(),
            dir,
            key,
            pem,
        }
    }

    fn image(&self, release: &Release) -> PathBuf {
        let out = self.dir.path().join(format!("{}.ext4", release.version));
        release_image(self.dir.path(), &self.kernel, release, &self.pem, &out).unwrap();
        out
    }

    /// A bundle of `image`, on an ext4 "USB stick" the guest mounts at /media.
    fn media(&self, version: &str, image: &Path) -> PathBuf {
        let stick = self.dir.path().join(format!("stick-{version}"));
        std::fs::create_dir_all(&stick).unwrap();
        let opts = BuildOptions {
            compatible: "switchback-qemu".into(),
            version: version.into(),
            security_version: 1,
            data_schema: None,
            build_time: 1,
            level: 3,
            chunk_size: 4 << 20,
            threads: 2,
            migrations: Vec::new(),
            base: None,
        };
        let src = [ImageSource {
            target: "rootfs".into(),
            path: image.to_path_buf(),
        }];
        bundle::build(
            &opts,
            &src,
            std::slice::from_ref(&self.key),
            &stick.join(format!("{version}.swb")),
            &mut |_| {},
        )
        .unwrap();
        let out = self.dir.path().join(format!("stick-{version}.ext4"));
        ext4_image(&stick, &out, "96M").unwrap();
        out
    }

    fn factory_disk(&self, v1: &Path) -> PathBuf {
        let out = self.dir.path().join("disk.img");
        let opts = MkdiskOptions {
            out: out.clone(),
            slot_size: 72 << 20,
            data_size: 16 << 20,
            slot_a: Some(v1.to_path_buf()),
            sector_size: 512,
        };
        mkdisk(&opts).unwrap();
        out
    }

    fn boot(&self, disk: &Path, stick: &Path) -> Machine {
        let initrd = self.dir.path().join("boot-stage.cpio");
        if !initrd.exists() {
            boot_stage_initramfs(&self.kernel, &initrd).unwrap();
        }
        Machine::boot_rebooting(
            &self.kernel.vmlinuz,
            &initrd,
            &[disk, stick],
            "console=ttyS0 panic=-1 quiet",
        )
        .unwrap()
    }
}

#[test]
fn update_a_to_b_reboot_health_passes_committed() {
    let app = Appliance::new();
    let v1 = app.image(&Release {
        version: "1.0.0",
        health_checks: "[]",
    });
    let v2 = app.image(&Release {
        version: "2.0.0",
        health_checks: r#"[{"name": "service", "command": ["test", "-f", "/data/app/heartbeat"], "timeout_s": 10}]"#,
    });
    let disk = app.factory_disk(&v1);
    let stick = app.media("2.0.0", &v2);
    let mut vm = app.boot(&disk, &stick);

    vm.expect("RELEASE 1.0.0 RUNNING ON slot_a", BOOT).unwrap();
    vm.expect("READY 1.0.0", STEP).unwrap();
    vm.send("updater install /media/2.0.0.swb --reboot")
        .unwrap();
    vm.expect("switchback boot stage: selected slot_b", BOOT)
        .unwrap();
    vm.expect("RELEASE 2.0.0 RUNNING ON slot_b", BOOT).unwrap();
    vm.expect(
        "slot_b (2.0.0) passed its health check and is committed",
        STEP,
    )
    .unwrap();
    vm.expect("READY 2.0.0", STEP).unwrap();
    vm.send("bootctl --disk /dev/vda status --json | tr -d ' \\n'; echo")
        .unwrap();
    let status = vm.expect("\"slots\":", STEP).unwrap();
    assert!(
        status.contains(r#"{"name":"slot_b","priority":2,"tries":0,"successful":true"#),
        "{status}"
    );
    assert!(
        status.contains(r#""booted":"slot_b""#) || status.contains(r#""next":"slot_b""#),
        "{status}"
    );
}
