//! The factory disk: partitions where the tools expect them, slot_a holding
//! the image, data a clean ext4.

use assert_cmd::Command;
use std::io::Read;

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
        let disk = dir.path().join("disk.img");
        Command::cargo_bin("image-tools")
            .unwrap()
            .args([
                "mkdisk",
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
            .assert()
            .success();

        let mut bytes = Vec::new();
        std::fs::File::open(&disk)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes.len(), (1 + 8 + 8 + 16 + 1) << 20);
        assert_eq!(
            &bytes[1 << 20..(1 << 20) + content.len()],
            &content[..],
            "slot_a content"
        );

        let mut bc = bootctl::Disk::open(&disk, None, false).unwrap();
        let state = bc.read().unwrap();
        assert_eq!(state.gpt.sector_size.to_string(), sector);
        assert!(state.gpt.is_consistent());
        assert_eq!(state.next().slot, bootctl::Slot::A);
        let data = state.table.data.clone().expect("data partition");
        assert_eq!(data.first_lba * state.gpt.sector_size, 17 << 20);

        let fs = dir.path().join("data.ext4");
        std::fs::write(&fs, &bytes[17 << 20..33 << 20]).unwrap();
        let fsck = run(&["e2fsck", "-fn", fs.to_str().unwrap()]);
        assert!(
            fsck.status.success(),
            "data is not clean ext4: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        if sector == "512" {
            assert!(String::from_utf8_lossy(
                &run(&["sgdisk", "-v", disk.to_str().unwrap()]).stdout
            )
            .contains("No problems found"));
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
