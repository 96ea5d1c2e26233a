//! `image-tools build --verity`: the hash tree and root hash are the ones
//! `veritysetup` (Debian's cryptsetup-bin, what the kernel's format is
//! known by) makes for the same data, salt and block sizes, and the signed
//! manifest carries them.

use assert_cmd::Command;
use std::path::Path;

fn it() -> Command {
    Command::cargo_bin("image-tools").unwrap()
}

fn veritysetup() -> std::path::PathBuf {
    image_tools::programs::find_program("veritysetup")
        .expect("veritysetup (apt-get install cryptsetup-bin): the reference for the hash tree")
}

/// Builds a verity bundle of `blocks` 4 KiB blocks, extracts its rootfs
/// image, and holds it to veritysetup's tree for the same parameters.
fn same_tree_as_veritysetup(dir: &Path, blocks: u64) {
    let data: Vec<u8> = (0..blocks * 4096)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    std::fs::write(dir.join("rootfs.img"), &data).unwrap();
    it().current_dir(dir)
        .args(["build", "--key", "k.pem", "--image", "rootfs=rootfs.img"])
        .args(["--compatible", "acme-gw", "--version", "1.2.3", "--verity"])
        .args(["--out", "r.swb"])
        .assert()
        .success();
    it().current_dir(dir)
        .args(["extract", "r.swb", "--public", "k.pub", "--image", "rootfs"])
        .args(["--out", "slot.img"])
        .assert()
        .success();
    let report = image_tools::ops::inspect(&dir.join("r.swb")).unwrap();
    let image = &report.images[0];
    let v = image.verity.clone().expect("the manifest records the tree");
    assert_eq!(v.data_blocks, blocks);
    assert_eq!(v.hash_offset, blocks * 4096);
    let slot = std::fs::read(dir.join("slot.img")).unwrap();
    assert_eq!(slot.len() as u64, image.size);
    assert_eq!(
        &slot[..data.len()],
        &data[..],
        "the data comes first, unchanged"
    );

    // veritysetup writes its tree into a copy of the data at the same
    // offset, with the salt the manifest names and no superblock.
    std::fs::write(dir.join("reference.img"), &data).unwrap();
    let out = std::process::Command::new(veritysetup())
        .current_dir(dir)
        .args(["format", "--no-superblock", "--format=1", "--hash=sha256"])
        .args(["--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(format!("--salt={}", v.salt))
        .args(["reference.img", "reference.img"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no root hash in {stdout}"));
    assert_eq!(root, v.root_hash.to_string(), "{blocks} blocks");
    let reference = std::fs::read(dir.join("reference.img")).unwrap();
    assert_eq!(
        reference.len(),
        slot.len(),
        "{blocks} blocks: the tree's size"
    );
    assert!(reference == slot, "{blocks} blocks: the tree's bytes");

    // And veritysetup accepts ours as it stands in the slot.
    let verify = std::process::Command::new(veritysetup())
        .current_dir(dir)
        .args(["verify", "--no-superblock", "--data-block-size=4096"])
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(format!("--salt={}", v.salt))
        .args(["slot.img", "slot.img", root])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn the_tree_and_root_hash_are_veritysetups_for_one_two_and_three_levels() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    // One data block under one hash block; 300 blocks need two levels;
    // 128 * 128 + 1 three.
    for blocks in [2, 300, 128 * 128 + 1] {
        same_tree_as_veritysetup(d, blocks);
    }
}

#[test]
fn an_image_that_is_not_whole_blocks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    std::fs::write(d.join("rootfs.img"), vec![1u8; 4096 * 3 + 1]).unwrap();
    it().current_dir(d)
        .args(["build", "--key", "k.pem", "--image", "rootfs=rootfs.img"])
        .args(["--compatible", "acme-gw", "--version", "1.2.3", "--verity"])
        .args(["--out", "r.swb"])
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "not a whole number of 4096-byte blocks",
        ));
    assert!(!d.join("r.swb").exists());
}

/// Every byte of the manifest is signed: a verity field changed after
/// signing (the root hash, the salt, the offset) is refused like any other.
#[test]
fn a_changed_verity_field_breaks_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    std::fs::write(d.join("rootfs.img"), vec![7u8; 4096 * 40]).unwrap();
    it().current_dir(d)
        .args(["build", "--key", "k.pem", "--image", "rootfs=rootfs.img"])
        .args(["--compatible", "acme-gw", "--version", "1.2.3", "--verity"])
        .args(["--out", "r.swb"])
        .assert()
        .success();
    let bytes = std::fs::read(d.join("r.swb")).unwrap();
    let manifest_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[32..32 + manifest_len]).unwrap();
    for field in ["\"root_hash\":\"", "\"salt\":\"", "\"hash_offset\":"] {
        let at = 32 + text.find(field).unwrap() + field.len();
        let mut changed = bytes.clone();
        // A digit or hex digit for another of its kind.
        changed[at] = if changed[at] == b'1' { b'2' } else { b'1' };
        std::fs::write(d.join("changed.swb"), &changed).unwrap();
        it().current_dir(d)
            .args(["verify", "changed.swb", "--public", "k.pub"])
            .assert()
            .failure();
    }
    // The untouched bundle verifies, so the refusals above are the change's.
    it().current_dir(d)
        .args(["verify", "r.swb", "--public", "k.pub"])
        .assert()
        .success();
}
