//! The factory disk: the ESP with the boot stage where the firmware looks,
//! partitions where the tools expect them, slot_a holding the image, data a
//! clean ext4.

use assert_cmd::Command;
use std::io::Read;

/// `len` bytes that start as a PE image for `machine` (x86-64 0x8664,
/// arm64 0xaa64), which is all mkdisk reads of an EFI program.
fn efi_program(len: usize, machine: u16) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b
}

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap()
}

#[test]
fn factory_disk_holds_image_and_clean_ext4_data() {
    for sector in ["512", "4096"] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("rootfs.img");
        let content: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&image, &content).unwrap();
        let loader = dir.path().join("BOOTX64.EFI");
        let loader_bytes = efi_program(3_000_001, 0x8664);
        std::fs::write(&loader, &loader_bytes).unwrap();
        let disk = dir.path().join("disk.img");
        Command::cargo_bin("image-tools")
            .unwrap()
            .args([
                "mkdisk",
                "--esp-size",
                "32M",
                "--slot-size",
                "8M",
                "--data-size",
                "16M",
                "--sector-size",
                sector,
                "--out",
            ])
            .arg(&disk)
            .arg("--slot-a")
            .arg(&image)
            .arg("--boot-efi")
            .arg(&loader)
            .assert()
            .success()
            .stdout(predicates::str::contains(
                "ESP 32 MiB at 1048576 with the x86-64 boot stage",
            ));

        let mut bytes = Vec::new();
        std::fs::File::open(&disk)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes.len(), (1 + 32 + 8 + 8 + 16 + 1) << 20);
        const SLOT_A: usize = 33 << 20;
        assert_eq!(
            &bytes[SLOT_A..SLOT_A + content.len()],
            &content[..],
            "slot_a content"
        );

        let mut bc = bootctl::Disk::open(&disk, None, false).unwrap();
        let state = bc.read().unwrap();
        let lb = state.gpt.sector_size;
        assert_eq!(lb.to_string(), sector);
        assert!(state.gpt.is_consistent());
        assert_eq!(state.next().slot, bootctl::Slot::A);
        assert_eq!(
            state.table.entry(bootctl::Slot::A).first_lba * lb,
            SLOT_A as u64
        );
        let data = state.table.data.clone().expect("data partition");
        assert_eq!(data.first_lba * lb, 49 << 20);

        // The ESP: first entry, the ESP type, FAT with the loader where
        // the firmware looks for it.
        let entries = state.gpt.current().entries();
        let esp = entries
            .iter()
            .find(|e| e.name == "esp")
            .expect("an ESP entry");
        assert_eq!(esp.index, 0);
        assert_eq!(
            esp.type_guid.to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(esp.first_lba * lb, 1 << 20);
        assert_eq!((esp.last_lba + 1 - esp.first_lba) * lb, 32 << 20);
        let fat = dir.path().join("esp.fat");
        std::fs::write(&fat, &bytes[1 << 20..33 << 20]).unwrap();
        let copied = run(&[
            "mcopy",
            "-i",
            fat.to_str().unwrap(),
            "::/EFI/BOOT/BOOTX64.EFI",
            "-",
        ]);
        assert!(
            copied.stdout == loader_bytes,
            "{}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let fsck = run(&["fsck.vfat", "-n", fat.to_str().unwrap()]);
        assert!(
            fsck.status.success(),
            "the ESP is not a clean FAT: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );

        let fs = dir.path().join("data.ext4");
        std::fs::write(&fs, &bytes[49 << 20..65 << 20]).unwrap();
        let fsck = run(&["e2fsck", "-fn", fs.to_str().unwrap()]);
        assert!(
            fsck.status.success(),
            "data is not clean ext4: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        if sector == "512" {
            let verify = run(&["sgdisk", "-v", disk.to_str().unwrap()]);
            let said = String::from_utf8_lossy(&verify.stdout);
            assert!(said.contains("No problems found"), "{said}");
        }
    }
}

#[test]
fn image_larger_than_slot_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("big.img");
    std::fs::write(&image, vec![1u8; (2 << 20) + 1]).unwrap();
    let disk = dir.path().join("disk.img");
    Command::cargo_bin("image-tools")
        .unwrap()
        .args(["mkdisk", "--slot-size", "2M", "--data-size", "4M", "--out"])
        .arg(&disk)
        .arg("--slot-a")
        .arg(&image)
        .assert()
        .failure()
        .stderr(predicates::str::contains("larger than the slot size"));
    assert!(!disk.exists());
    Command::cargo_bin("image-tools")
        .unwrap()
        .args(["mkdisk", "--slot-size", "2Q", "--data-size", "4M", "--out"])
        .arg(&disk)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown unit"));
}

#[test]
fn a_boot_loader_that_cannot_go_on_the_disk_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mkdisk = |extra: &[&str]| {
        let mut cmd = Command::cargo_bin("image-tools").unwrap();
        cmd.args(["mkdisk", "--slot-size", "2M", "--data-size", "4M", "--out"])
            .arg(&disk)
            .args(extra);
        cmd.assert()
    };
    mkdisk(&["--boot-efi", "/nonexistent/BOOTX64.EFI"])
        .failure()
        .stderr(predicates::str::contains(
            "reading the boot stage's EFI program /nonexistent/BOOTX64.EFI",
        ));
    assert!(!disk.exists());
    let loader = dir.path().join("big.efi");
    std::fs::write(&loader, efi_program(3 << 20, 0x8664)).unwrap();
    // An EFI program for the other machine would only fail at the first
    // boot: refused now, naming both.
    mkdisk(&["--arch", "arm64", "--boot-efi", loader.to_str().unwrap()])
        .failure()
        .stderr(predicates::str::contains(
            "is an EFI program for x86-64, and the disk is for arm64 (--arch)",
        ));
    assert!(!disk.exists());
    let not_efi = dir.path().join("not.efi");
    std::fs::write(&not_efi, vec![7u8; 4096]).unwrap();
    mkdisk(&["--boot-efi", not_efi.to_str().unwrap()])
        .failure()
        .stderr(predicates::str::contains("is not an EFI program"));
    assert!(!disk.exists());
    mkdisk(&["--esp-size", "0", "--boot-efi", loader.to_str().unwrap()])
        .failure()
        .stderr(predicates::str::contains(
            "the boot stage needs an ESP to go on: give --esp-size above 0",
        ));
    assert!(!disk.exists());
    mkdisk(&["--esp-size", "2M", "--boot-efi", loader.to_str().unwrap()])
        .failure()
        .stderr(predicates::str::contains(
            "to /EFI/BOOT/BOOTX64.EFI on the 2 MiB ESP (a larger --esp-size?)",
        ));
    assert!(!disk.exists(), "a half-made disk was left behind");
    // Without an ESP the slots start right after the GPT, as before.
    mkdisk(&["--esp-size", "0"]).success();
    let state = bootctl::Disk::open(&disk, None, false)
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(state.table.entry(bootctl::Slot::A).first_lba * 512, 1 << 20);
}

#[test]
fn a_factory_release_from_a_bundle_carries_its_signed_record() {
    use image_tools::bundle::{trailer, Keyring};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let it = || {
        let mut c = Command::cargo_bin("image-tools").unwrap();
        c.current_dir(d);
        c
    };
    for who in ["vendor", "other"] {
        it().args(["keygen", "--private", &format!("{who}.key")])
            .args(["--public", &format!("{who}.pem")])
            .assert()
            .success();
    }
    let content: Vec<u8> = (0..3u32 << 20)
        .map(|i| {
            if i < 1 << 20 {
                0
            } else {
                (i.wrapping_mul(2654435761) >> 13) as u8
            }
        })
        .collect();
    std::fs::write(d.join("rootfs.img"), &content).unwrap();
    it().args([
        "build",
        "--key",
        "vendor.key",
        "--image",
        "rootfs=rootfs.img",
    ])
    .args([
        "--compatible",
        "acme-gw",
        "--version",
        "1.0.0",
        "--out",
        "1.0.0.swb",
    ])
    .assert()
    .success();
    let mkdisk = |slot: &str, first: &str, extra: &[&str]| {
        let mut c = it();
        c.args(["mkdisk", "--esp-size", "0", "--data-size", "4M"])
            .args(["--slot-size", slot, "--out", "disk.img", "--slot-a", first])
            .args(extra);
        c.assert()
    };

    // Refused before the disk exists: no key named, the wrong key, a slot
    // with no room left for the record after the image.
    mkdisk("4M", "1.0.0.swb", &[])
        .failure()
        .stderr(predicates::str::contains(
            "is a bundle: name the vendor key",
        ));
    mkdisk("4M", "1.0.0.swb", &["--public", "other.pem"]).code(25);
    mkdisk("3M", "1.0.0.swb", &["--public", "vendor.pem"])
        .failure()
        .stderr(predicates::str::contains("more than the slot size"));
    // The wrapper for fleet servers is not the bundle; a raw image has no
    // signature for --public to check.
    it().args([
        "swu",
        "1.0.0.swb",
        "--public",
        "vendor.pem",
        "--hw-revision",
        "1",
    ])
    .args(["--out", "1.0.0.swu"])
    .assert()
    .success();
    mkdisk("4M", "1.0.0.swu", &["--public", "vendor.pem"])
        .failure()
        .stderr(predicates::str::contains("is a .swu wrapper"));
    mkdisk("4M", "rootfs.img", &["--public", "vendor.pem"])
        .failure()
        .stderr(predicates::str::contains("--public is for a bundle"));
    assert!(!d.join("disk.img").exists());

    mkdisk("4M", "1.0.0.swb", &["--public", "vendor.pem"]).success();
    let bytes = std::fs::read(d.join("disk.img")).unwrap();
    let state = bootctl::Disk::open(&d.join("disk.img"), None, false)
        .unwrap()
        .read()
        .unwrap();
    let area = state.table.entry(bootctl::Slot::A);
    let ss = state.gpt.sector_size;
    let slot_a = (area.first_lba * ss) as usize;
    let slot_size = ((area.last_lba + 1 - area.first_lba) * ss) as usize;
    assert_eq!(&bytes[slot_a..slot_a + content.len()], &content[..]);
    // The record at the slot's end names the release, and verifies.
    let end = slot_a + slot_size;
    let footer = &bytes[end - trailer::TRAILER_SECTOR as usize..end];
    let (len, crc) = trailer::parse_footer(footer, slot_size as u64)
        .unwrap()
        .expect("a trailer at the end of slot_a");
    let head_at = end - trailer::reserved(len) as usize;
    let keyring = Keyring::from_key(&d.join("vendor.pem")).unwrap();
    let manifest =
        trailer::verify_head(&bytes[head_at..head_at + len as usize], crc, &keyring).unwrap();
    assert_eq!(
        (manifest.compatible.as_str(), manifest.version.as_str()),
        ("acme-gw", "1.0.0")
    );
}

/// `image-tools mkdisk` in `dir` with 8 MiB slots, 4 MiB of data, no ESP.
fn mkdisk_in(dir: &std::path::Path, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("image-tools")
        .unwrap()
        .current_dir(dir)
        .args(["mkdisk", "--esp-size", "0", "--data-size", "4M"])
        .args(args)
        .timeout(std::time::Duration::from_secs(120))
        .assert()
}

/// Only the files a test made are left in `dir`: no disk, no partial.
fn only(dir: &std::path::Path, names: &[&str]) {
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want, "files left behind");
}

#[test]
fn inputs_are_measured_by_what_they_are_and_nothing_spills_past_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // /dev/zero never ends: stopped at the slot's size, refused.
    mkdisk_in(
        d,
        &[
            "--slot-size",
            "8M",
            "--out",
            "disk.img",
            "--slot-a",
            "/dev/zero",
        ],
    )
    .code(1)
    .stderr(predicates::str::contains(
        "slot image /dev/zero holds more than the slot size 8388608 bytes",
    ));
    only(d, &[]);
    // A pipe: read as a stream, no seek back ("Illegal seek").
    let image: Vec<u8> = (0..3u32 << 20).map(|i| (i % 249) as u8).collect();
    std::fs::write(d.join("rootfs.img"), &image).unwrap();
    let piped = std::process::Command::new("sh")
        .current_dir(d)
        .arg("-c")
        .arg(format!(
            "cat rootfs.img | {} mkdisk --esp-size 0 --data-size 4M --slot-size 8M --out disk.img --slot-a /dev/stdin",
            assert_cmd::cargo::cargo_bin("image-tools").display()
        ))
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    let disk = std::fs::read(d.join("disk.img")).unwrap();
    let slot_a = bootctl::Disk::open(&d.join("disk.img"), None, false)
        .unwrap()
        .read()
        .unwrap()
        .table
        .entry(bootctl::Slot::A)
        .first_lba as usize
        * 512;
    assert!(
        disk[slot_a..slot_a + image.len()] == image[..],
        "slot_a from a pipe"
    );
    std::fs::remove_file(d.join("disk.img")).unwrap();
    only(d, &["rootfs.img"]);
}

#[test]
fn a_block_device_larger_than_the_slot_is_refused_by_its_size() {
    if !switchback_test_support::needs_root("a loop device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("fs.img"), vec![7u8; 20 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(d.join("fs.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup: {out:?}");
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(dev.clone());
    mkdisk_in(
        d,
        &["--slot-size", "8M", "--out", "disk.img", "--slot-a", &dev],
    )
    .code(1)
    .stderr(predicates::str::contains(format!(
        "slot image {dev} is 20971520 bytes, larger than the slot size 8388608"
    )));
    only(d, &["fs.img"]);
    // As --out, a block device is refused before anything happens.
    mkdisk_in(d, &["--slot-size", "8M", "--out", &dev])
        .code(1)
        .stderr(predicates::str::contains(format!(
            "--out {dev} is a block device: mkdisk makes a disk image file"
        )));
    assert!(std::fs::read(d.join("fs.img"))
        .unwrap()
        .iter()
        .all(|&b| b == 7));
}

#[test]
fn an_output_that_is_an_input_or_a_size_beyond_reason_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image: Vec<u8> = (0..1u32 << 20).map(|i| (i % 247) as u8).collect();
    std::fs::write(d.join("rootfs.img"), &image).unwrap();
    mkdisk_in(
        d,
        &[
            "--slot-size",
            "8M",
            "--out",
            "rootfs.img",
            "--slot-a",
            "rootfs.img",
        ],
    )
    .code(1)
    .stderr(predicates::str::contains(
        "--out rootfs.img is the same file as --slot-a rootfs.img",
    ));
    assert!(
        std::fs::read(d.join("rootfs.img")).unwrap() == image,
        "the input was touched"
    );
    for size in ["18446744073709551615", "8388607T", "65T"] {
        mkdisk_in(d, &["--slot-size", size, "--out", "disk.img"])
            .code(1)
            .stderr(predicates::str::contains("make a disk larger than 64 TiB"));
        only(d, &["rootfs.img"]);
    }
    // A disk made before stays as it was when a new one fails.
    mkdisk_in(d, &["--slot-size", "8M", "--out", "disk.img"]).success();
    let before = std::fs::read(d.join("disk.img")).unwrap();
    mkdisk_in(
        d,
        &[
            "--slot-size",
            "8M",
            "--out",
            "disk.img",
            "--slot-a",
            "/dev/zero",
        ],
    )
    .code(1);
    assert!(
        std::fs::read(d.join("disk.img")).unwrap() == before,
        "the old disk was changed"
    );
    only(d, &["rootfs.img", "disk.img"]);
}

/// The slots carry their machine's root partition type, which other tools
/// (sfdisk, systemd-gpt-auto) read; Switchback itself goes by the names.
#[test]
fn the_slots_are_typed_as_root_partitions_of_the_disks_machine() {
    for (arch, root) in [
        ("x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        ("arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        Command::cargo_bin("image-tools")
            .unwrap()
            .args(["mkdisk", "--arch", arch, "--esp-size", "0"])
            .args(["--slot-size", "2M", "--data-size", "4M", "--out"])
            .arg(&disk)
            .assert()
            .success();
        let out = run(&["sfdisk", "--json", disk.to_str().unwrap()]);
        let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let parts = table["partitiontable"]["partitions"].as_array().unwrap();
        let types: Vec<(&str, &str)> = parts
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["type"].as_str().unwrap()))
            .collect();
        assert_eq!(types[0], ("slot_a", root), "{arch}: {types:?}");
        assert_eq!(types[1], ("slot_b", root), "{arch}: {types:?}");
    }
}
