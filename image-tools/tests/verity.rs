//! `image-tools build --verity`: the hash tree and root hash are the ones
//! `veritysetup` (Debian's cryptsetup-bin, what the kernel's format is
//! known by) makes for the same data, salt and block sizes, and the signed
//! manifest carries them.

use assert_cmd::Command;
use std::path::Path;

fn it() -> Command {
    Command::cargo_bin("image-tools").unwrap()
}

/// A directory with a vendor key pair: k.pem and k.pub.
fn keyed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    it().current_dir(dir.path())
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    dir
}

/// `image-tools build --verity` of the root image `image` into r.swb.
fn build_verity(d: &Path, image: &str) -> assert_cmd::assert::Assert {
    it().current_dir(d)
        .args(["build", "--key", "k.pem", "--image"])
        .arg(format!("rootfs={image}"))
        .args(["--compatible", "acme-gw", "--version", "1.2.3", "--verity"])
        .args(["--out", "r.swb"])
        .assert()
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
    build_verity(dir, "rootfs.img").success();
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
    let dir = keyed_dir();
    let d = dir.path();
    // One data block under one hash block; 300 blocks need two levels;
    // 128 * 128 + 1 three.
    for blocks in [2, 300, 128 * 128 + 1] {
        same_tree_as_veritysetup(d, blocks);
    }
}

#[test]
fn an_image_that_is_not_whole_blocks_is_refused() {
    let dir = keyed_dir();
    let d = dir.path();
    std::fs::write(d.join("rootfs.img"), vec![1u8; 4096 * 3 + 1]).unwrap();
    build_verity(d, "rootfs.img")
        .failure()
        .stderr(predicates::str::contains(
            "not a whole number of 4096-byte blocks",
        ));
    assert!(!d.join("r.swb").exists());
}

/// An ext4 root of 1 KiB blocks would not mount on the verity device of
/// 4 KiB blocks: refused at build time, with the way out.
#[test]
fn an_ext4_root_of_small_blocks_is_refused() {
    let dir = keyed_dir();
    let d = dir.path();
    for (block, ok) in [("1024", false), ("4096", true)] {
        let img = d.join(format!("root-{block}.img"));
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", block])
            .arg(&img)
            .arg("8M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let build = build_verity(d, &img.display().to_string());
        if ok {
            build.success();
        } else {
            build
                .failure()
                .stderr(predicates::str::contains("ext4 with 1024-byte blocks"))
                .stderr(predicates::str::contains("mkfs.ext4 -b 4096"));
        }
    }
}

/// Every byte of the manifest is signed: a verity field changed after
/// signing (the root hash, the salt, the offset) is refused like any other.
#[test]
fn a_changed_verity_field_breaks_the_signature() {
    let dir = keyed_dir();
    let d = dir.path();
    std::fs::write(d.join("rootfs.img"), vec![7u8; 4096 * 40]).unwrap();
    build_verity(d, "rootfs.img").success();
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
