//! `image-tools` as a vendor's pipeline runs it: exit codes and messages.

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use std::path::Path;

fn it() -> Command {
    Command::cargo_bin("image-tools").unwrap()
}

fn setup(dir: &Path) {
    it().current_dir(dir)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    it().current_dir(dir)
        .args(["keygen", "--private", "o.pem", "--public", "o.pub"])
        .assert()
        .success();
    let image: Vec<u8> = (0..300_000u32)
        .map(|i| (i % 253) as u8 ^ (i >> 11) as u8)
        .collect();
    std::fs::write(dir.join("rootfs.img"), image).unwrap();
    it().current_dir(dir)
        .args([
            "build",
            "--key",
            "k.pem",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "acme-gw",
        ])
        .args([
            "--version",
            "2.0.0",
            "--security-version",
            "3",
            "--chunk-size",
            "64K",
            "--out",
            "r.swb",
        ])
        .assert()
        .success()
        .stdout(contains("acme-gw 2.0.0"));
}

#[test]
fn build_verify_extract_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    it().current_dir(d)
        .args(["verify", "r.swb", "--public", "k.pub"])
        .assert()
        .success()
        .stdout(contains("OK"));
    std::fs::create_dir(d.join("ring")).unwrap();
    std::fs::copy(d.join("o.pub"), d.join("ring/old.pem")).unwrap();
    std::fs::copy(d.join("k.pub"), d.join("ring/new.pem")).unwrap();
    it().current_dir(d)
        .args(["verify", "r.swb", "--keyring", "ring"])
        .assert()
        .success();
    it().current_dir(d)
        .args(["extract", "r.swb", "--public", "k.pub", "--out", "x.img"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(d.join("x.img")).unwrap(),
        std::fs::read(d.join("rootfs.img")).unwrap()
    );
    it().current_dir(d)
        .args(["inspect", "r.swb"])
        .assert()
        .success()
        .stdout(contains("NOT CHECKED"));
    let out = it()
        .current_dir(d)
        .args(["inspect", "r.swb", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["signature_checked"], false);
    assert_eq!(v["security_version"], 3);
    assert_eq!(v["images"][0]["chunks"], 5);
}

#[test]
fn refusals_have_distinct_codes_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    it().current_dir(d)
        .args(["verify", "r.swb", "--public", "o.pub"])
        .assert()
        .code(25)
        .stderr(contains("no trusted key"));
    let bytes = std::fs::read(d.join("r.swb")).unwrap();
    std::fs::write(d.join("cut.swb"), &bytes[..bytes.len() - 10]).unwrap();
    it().current_dir(d)
        .args(["verify", "cut.swb", "--public", "k.pub"])
        .assert()
        .code(21)
        .stderr(contains("truncated"));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    std::fs::write(d.join("bad.swb"), &flipped).unwrap();
    it().current_dir(d)
        .args([
            "extract",
            "bad.swb",
            "--public",
            "k.pub",
            "--out",
            "never.img",
        ])
        .assert()
        .code(predicates::ord::eq(28).or(predicates::ord::eq(29)))
        .stderr(contains("image rootfs chunk 4"));
    assert!(
        !d.join("never.img").exists(),
        "extract must not leave a partial image"
    );
    it().current_dir(d)
        .args(["verify", "rootfs.img", "--public", "k.pub"])
        .assert()
        .code(22);
    it().current_dir(d)
        .args(["verify", "r.swb", "--public", "rootfs.img"])
        .assert()
        .code(32)
        .stderr(contains("rootfs.img: not an ed25519 public key"));
    it().current_dir(d)
        .args([
            "build",
            "--key",
            "k.pub",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "x",
            "--version",
            "1.0.0",
            "--out",
            "n.swb",
        ])
        .assert()
        .code(32);
    it().current_dir(d)
        .args([
            "build",
            "--key",
            "k.pem",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "x",
            "--version",
            "one",
            "--out",
            "n.swb",
        ])
        .assert()
        .code(27)
        .stderr(contains("semantic"));
    assert!(!d.join("n.swb").exists());
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "z.pub"])
        .assert()
        .code(32)
        .stderr(contains("k.pem"));
    it().current_dir(d)
        .args(["verify", "r.swb"])
        .assert()
        .code(2);
}

#[test]
fn migrations_are_packed_with_their_snapshots_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::write(d.join("m1.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(d.join("m2.sh"), "#!/bin/sh\ntrue\n").unwrap();
    it().current_dir(d)
        .args([
            "build",
            "--key",
            "k.pem",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "acme-gw",
            "--version",
            "2.1.0",
        ])
        .args(["--data-schema", "3", "--out", "m.swb"])
        .args(["--migration", "m1.sh:1:2:expand:db,cfg"])
        .args(["--migration", "m2.sh:2:3:finalize"])
        .assert()
        .success();
    let out = it()
        .current_dir(d)
        .args(["inspect", "m.swb", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data_schema"], 3);
    assert_eq!(
        v["migrations"][0],
        serde_json::json!({"image": "migration-1", "from": 1, "to": 2, "phase": "expand", "snapshot": ["db", "cfg"]})
    );
    assert_eq!(
        v["migrations"][1],
        serde_json::json!({"image": "migration-2", "from": 2, "to": 3, "phase": "finalize"})
    );
    it().current_dir(d)
        .args(["inspect", "m.swb"])
        .assert()
        .success()
        .stdout(contains(
            "migration   Expand 1 -> 2 (migration-1), snapshots db, cfg",
        ));
    it().current_dir(d)
        .args([
            "extract",
            "m.swb",
            "--public",
            "k.pub",
            "--image",
            "migration-2",
            "--out",
            "x.sh",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(d.join("x.sh")).unwrap(), b"#!/bin/sh\ntrue\n");
    it().current_dir(d)
        .args([
            "build",
            "--key",
            "k.pem",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "x",
            "--version",
            "1.0.0",
            "--out",
            "n.swb",
        ])
        .args(["--migration", "m1.sh:1:expand"])
        .assert()
        .code(2)
        .stderr(contains(
            "\"m1.sh:1:expand\": write PATH:FROM:TO:PHASE[:DIR,DIR...]",
        ));
}

#[test]
fn delta_bundles_need_and_check_their_base() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let mut v2 = std::fs::read(d.join("rootfs.img")).unwrap();
    v2[1000..5000].fill(9);
    v2.extend_from_slice(&[3u8; 70_000]);
    std::fs::write(d.join("v2.img"), &v2).unwrap();
    it().current_dir(d)
        .args([
            "delta",
            "--base",
            "rootfs.img",
            "--key",
            "k.pem",
            "--image",
            "rootfs=v2.img",
            "--compatible",
            "acme-gw",
        ])
        .args([
            "--version",
            "2.1.0",
            "--chunk-size",
            "64K",
            "--out",
            "d.swb",
        ])
        .assert()
        .success();
    it().current_dir(d)
        .args(["inspect", "d.swb"])
        .assert()
        .success()
        .stdout(contains(
            "delta       rootfs applies to a 300000-byte base image",
        ));
    it().current_dir(d)
        .args(["verify", "d.swb", "--public", "k.pub"])
        .assert()
        .code(34)
        .stderr(contains("pass --base"));
    it().current_dir(d)
        .args(["verify", "d.swb", "--public", "k.pub", "--base", "v2.img"])
        .assert()
        .code(35);
    it().current_dir(d)
        .args([
            "verify",
            "d.swb",
            "--public",
            "k.pub",
            "--base",
            "rootfs.img",
        ])
        .assert()
        .success();
    it().current_dir(d)
        .args([
            "extract",
            "d.swb",
            "--public",
            "k.pub",
            "--base",
            "rootfs.img",
            "--out",
            "x.img",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(d.join("x.img")).unwrap(), v2);
    assert!(
        std::fs::metadata(d.join("d.swb")).unwrap().len()
            < std::fs::metadata(d.join("r.swb")).unwrap().len() / 5
    );
}

#[test]
fn keygen_keys_are_read_by_openssl_and_openssl_keys_by_us() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-in", "k.pem", "-pubout"])
        .current_dir(d)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(d.join("k.pub")).unwrap());
    // And a key made by OpenSSL signs a bundle we verify with its public key.
    let gen = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", "o.pem"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(gen.success());
    let pubout = std::process::Command::new("openssl")
        .args(["pkey", "-in", "o.pem", "-pubout", "-out", "ring/o.pem"])
        .current_dir({
            std::fs::create_dir(d.join("ring")).unwrap();
            d
        })
        .status()
        .unwrap();
    assert!(pubout.success());
    std::fs::write(d.join("rootfs.img"), vec![3u8; 100_000]).unwrap();
    it().current_dir(d)
        .args(["build", "--key", "o.pem", "--image", "rootfs=rootfs.img"])
        .args(["--compatible", "x", "--version", "1.0.0", "--out", "o.swb"])
        .assert()
        .success();
    it().current_dir(d)
        .args(["verify", "o.swb", "--keyring", "ring"])
        .assert()
        .success();
}

#[test]
fn swu_wraps_a_verified_bundle_that_cpio_and_the_updater_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    it().current_dir(d)
        .args(["swu", "r.swb", "--public", "k.pub", "--hw-revision", "1.0"])
        .args(["--hw-revision", "rev-b", "--out", "r.swu"])
        .assert()
        .success()
        .stdout(contains("r.swu: acme-gw 2.0.0").and(contains("1.0, rev-b")));
    // GNU cpio lists what SWUpdate-minded servers read: sw-description first.
    let listing = std::process::Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(std::fs::File::open(d.join("r.swu")).unwrap())
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "sw-description\nacme-gw-2.0.0.swb\n"
    );
    let out = tempfile::tempdir().unwrap();
    let extracted = std::process::Command::new("cpio")
        .args(["-id", "--quiet"])
        .current_dir(out.path())
        .stdin(std::fs::File::open(d.join("r.swu")).unwrap())
        .status()
        .unwrap();
    assert!(extracted.success());
    assert_eq!(
        std::fs::read(out.path().join("acme-gw-2.0.0.swb")).unwrap(),
        std::fs::read(d.join("r.swb")).unwrap()
    );
    let desc = std::fs::read_to_string(out.path().join("sw-description")).unwrap();
    assert!(
        desc.contains("version = \"2.0.0\";") && desc.contains("acme-gw = {"),
        "{desc}"
    );
    // inspect and verify read the bundle inside, as the updater does.
    it().current_dir(d)
        .args(["inspect", "r.swu"])
        .assert()
        .success()
        .stdout(contains("2.0.0"));
    it().current_dir(d)
        .args(["verify", "r.swu", "--public", "k.pub"])
        .assert()
        .success();

    // Only what verifies is wrapped: another key, exit 25, no file.
    it().current_dir(d)
        .args([
            "swu",
            "r.swb",
            "--public",
            "o.pub",
            "--hw-revision",
            "1.0",
            "--out",
            "bad.swu",
        ])
        .assert()
        .code(25);
    assert!(!d.join("bad.swu").exists());
    // A revision that cannot be written into sw-description: exit 37.
    it().current_dir(d)
        .args([
            "swu",
            "r.swb",
            "--public",
            "k.pub",
            "--hw-revision",
            "1\"0",
            "--out",
            "q.swu",
        ])
        .assert()
        .code(37)
        .stderr(contains("cannot go into sw-description"));
    assert!(!d.join("q.swu").exists());
}

/// Chunks a device's default memory budget cannot take are built, with a
/// warning that gives the figure and both ways out; 4 MiB chunks of
/// incompressible data are not warned about.
#[test]
fn build_warns_when_chunks_need_more_memory_than_a_device_gives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let mut x = 7u32;
    let noise: Vec<u8> = (0..(12 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(d.join("noise.img"), noise).unwrap();
    let build = |chunk: &str| {
        let mut c = it();
        c.current_dir(d).args([
            "build",
            "--key",
            "k.pem",
            "--image",
            "rootfs=noise.img",
            "--compatible",
            "acme-gw",
            "--version",
            "2.0.0",
            "--chunk-size",
            chunk,
            "--out",
            "n.swb",
        ]);
        c
    };
    build("8M")
        .assert()
        .success()
        .stderr(contains("warning: installing this bundle needs about 20 MiB of memory on the device, over the 16 MiB"))
        .stderr(contains("--memory 20M").and(contains("--chunk-size 4M")));
    build("4M")
        .assert()
        .success()
        .stderr(contains("warning").not());
}

/// `image-tools stage` adds a keyring only to Switchback's UEFI boot stage
/// (systemd's stub, or any other EFI program, is refused) and only keys
/// that are public ed25519 keys; nothing is written when it refuses.
#[test]
fn stage_refuses_what_is_not_the_stage_or_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    it().current_dir(d)
        .args(["keygen", "--private", "k.pem", "--public", "k.pub"])
        .assert()
        .success();
    let stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    it().current_dir(d)
        .args([
            "stage",
            "--efi",
            stub,
            "--public",
            "k.pub",
            "-o",
            "BOOTX64.EFI",
        ])
        .assert()
        .code(1)
        .stderr(contains("is not Switchback's UEFI boot stage"));
    it().current_dir(d)
        .args([
            "stage",
            "--efi",
            stub,
            "--public",
            "k.pem",
            "-o",
            "BOOTX64.EFI",
        ])
        .assert()
        .failure()
        .stderr(contains("k.pem"));
    assert!(!d.join("BOOTX64.EFI").exists());
}

/// A factory disk whose UEFI boot stage would refuse its slot_a boots
/// nothing: mkdisk refuses a raw slot_a under a stage with a keyring, and
/// a bundle signed by a key the stage does not trust, and makes the disk
/// when the stage trusts the bundle's signer.
#[test]
fn mkdisk_refuses_a_slot_a_its_keyed_stage_would_not_boot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/boot-efi");
    let built = std::process::Command::new("bash")
        .arg(&script)
        .arg("x86_64")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let efi = String::from_utf8(built.stdout).unwrap();
    it().current_dir(d)
        .args(["stage", "--efi", efi.trim(), "--public", "o.pub"])
        .args(["-o", "BOOTX64.EFI"])
        .assert()
        .success();
    let mkdisk = |slot_a: &str, public: Option<&str>| {
        let mut cmd = it();
        cmd.current_dir(d)
            .args(["mkdisk", "--slot-size", "2M", "--data-size", "4M"])
            .args(["--boot-efi", "BOOTX64.EFI", "--out", "disk.img"])
            .args(["--slot-a", slot_a]);
        if let Some(key) = public {
            cmd.args(["--public", key]);
        }
        cmd.assert()
    };
    mkdisk("rootfs.img", None).code(1).stderr(contains(
        "rootfs.img is a raw image, and the boot stage BOOTX64.EFI starts only signed releases: slot_a would never boot",
    ));
    assert!(!d.join("disk.img").exists());
    // r.swb is signed by k, the stage trusts o only: the exit code of a
    // bundle signed by no trusted key.
    mkdisk("r.swb", Some("k.pub")).code(25).stderr(contains(
        "the boot stage BOOTX64.EFI does not trust r.swb's signers (1 key(s) in its keyring): slot_a would never boot",
    ));
    assert!(!d.join("disk.img").exists());
    it().current_dir(d)
        .args(["stage", "--efi", efi.trim(), "--public", "k.pub"])
        .args(["-o", "BOOTX64.EFI"])
        .assert()
        .success();
    mkdisk("r.swb", Some("k.pub")).success();
    assert!(d.join("disk.img").exists());

    // A keyring that requires both keys: its threshold goes into the
    // stage, which then refuses r.swb, signed by k alone (exit 30).
    std::fs::remove_file(d.join("disk.img")).unwrap();
    let ring = d.join("both");
    std::fs::create_dir(&ring).unwrap();
    std::fs::copy(d.join("k.pub"), ring.join("k.pem")).unwrap();
    std::fs::copy(d.join("o.pub"), ring.join("o.pem")).unwrap();
    std::fs::write(ring.join("threshold"), "2").unwrap();
    it().current_dir(d)
        .args(["stage", "--efi", efi.trim(), "--keyring", "both"])
        .args(["-o", "BOOTX64.EFI"])
        .assert()
        .success()
        .stdout(contains("trusting 2 key(s), 2 of them required"));
    mkdisk("r.swb", Some("k.pub"))
        .code(30)
        .stderr(contains("signed by 1 of the 2 trusted keys"));
    assert!(!d.join("disk.img").exists());
    it().current_dir(d)
        .args(["sign", "r.swb", "--key", "o.pem"])
        .assert()
        .success();
    mkdisk("r.swb", Some("k.pub")).success();
}

/// `image-tools stage --db-key --db-cert` signs the stage, keyring in, for
/// the firmware's db (sbverify accepts it against the certificate); a key
/// sbsign cannot use leaves nothing at -o, and one flag without the other
/// is a usage error.
#[test]
fn stage_signs_for_secure_boot_or_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let cert = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
    let key = std::process::Command::new("openssl")
        .args(["pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key"])
        .args(["-passin", "pass:snakeoil", "-out"])
        .arg(d.join("db.key"))
        .status()
        .unwrap();
    assert!(key.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/boot-efi");
    let built = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(built.status.success());
    let efi = String::from_utf8(built.stdout).unwrap();
    let stage = |extra: &[&str]| {
        let mut cmd = it();
        cmd.current_dir(d)
            .args(["stage", "--efi", efi.trim(), "--public", "k.pub"])
            .args(extra)
            .args(["-o", "BOOTX64.EFI"]);
        cmd.assert()
    };
    stage(&["--db-key", "db.key"])
        .code(2)
        .stderr(contains("--db-cert"));
    stage(&["--db-key", "k.pem", "--db-cert", cert])
        .code(1)
        .stderr(contains("signing"));
    assert!(!d.join("BOOTX64.EFI").exists());
    stage(&["--db-key", "db.key", "--db-cert", cert])
        .success()
        .stdout(contains("signed for Secure Boot by"));
    let verified = std::process::Command::new("sbverify")
        .args(["--cert", cert])
        .arg(d.join("BOOTX64.EFI"))
        .status()
        .unwrap();
    assert!(verified.success());
}

/// `image-tools stage --initrd` keys the Linux boot stage: its initramfs
/// as it was, then one more newc archive holding the keyring and policy
/// where the stage reads them, byte for byte the UEFI stage's sections.
/// An initramfs without Switchback's stage, or one to be signed for
/// Secure Boot, is refused and nothing is written.
#[test]
fn stage_keys_the_linux_stage_initramfs_in_an_archive_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // An x86-64 ELF `/init` that says what the stage says.
    let pack = |init: &[u8], out: &str| {
        let root = d.join(format!("{out}.d"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("init"), init).unwrap();
        let cpio = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo init | cpio -o --quiet -H newc > ../{out}"))
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(cpio.success());
    };
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(18, 0);
    elf.extend_from_slice(&62u16.to_le_bytes());
    elf.resize(64, 0);
    let mut stage = elf.clone();
    stage.extend_from_slice(b"switchback boot stage: selected");
    pack(&stage, "stage.cpio");
    pack(&elf, "other.cpio");

    let key = |args: &[&str]| {
        let mut c = it();
        c.current_dir(d).arg("stage").args(args);
        c
    };
    key(&["--initrd", "stage.cpio", "--public", "k.pub", "--require-verity", "-o", "keyed.cpio"])
        .assert()
        .success()
        .stdout(contains("the Linux boot stage, trusting 1 key(s), starting only releases whose root is under dm-verity"));
    let before = std::fs::read(d.join("stage.cpio")).unwrap();
    let keyed = std::fs::read(d.join("keyed.cpio")).unwrap();
    assert_eq!(&keyed[..before.len()], &before[..]);
    let appended = &keyed[before.len().div_ceil(4) * 4..];
    std::fs::write(d.join("appended.cpio"), appended).unwrap();
    let read = |member: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cpio -i --quiet --to-stdout {member} < appended.cpio"
            ))
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let pem = std::fs::read_to_string(d.join("k.pub")).unwrap();
    let public = <ed25519_dalek::VerifyingKey as ed25519_dalek::pkcs8::DecodePublicKey>::from_public_key_pem(&pem)
        .unwrap()
        .to_bytes();
    let mut keyring = b"SWKEYS1\0".to_vec();
    keyring.extend_from_slice(&public);
    assert_eq!(read("switchback/keyring"), keyring);
    assert_eq!(read("switchback/policy"), b"SWPOL1\0\0\x01\0\0\0\0\0\0\0");

    key(&[
        "--initrd",
        "other.cpio",
        "--public",
        "k.pub",
        "-o",
        "no.cpio",
    ])
    .assert()
    .code(1)
    .stderr(contains("holds no Switchback boot stage"));
    key(&[
        "--initrd",
        "stage.cpio",
        "--public",
        "k.pub",
        "--db-key",
        "k.pem",
        "--db-cert",
        "k.pub",
        "-o",
        "no.cpio",
    ])
    .assert()
    .code(1)
    .stderr(contains("an initramfs is not signed for Secure Boot"));
    key(&["--public", "k.pub", "-o", "no.cpio"])
        .assert()
        .code(2);
    assert!(!d.join("no.cpio").exists());

    // A factory disk whose keyed Linux stage would refuse its slot_a is
    // refused, as under the UEFI stage: r.swb is signed by k.
    let mut kernel = vec![0u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(d.join("bzImage"), kernel).unwrap();
    let mkdisk = |initrd: &str| {
        let mut cmd = it();
        cmd.current_dir(d)
            .args(["mkdisk", "--slot-size", "2M", "--data-size", "4M"])
            .args(["--boot-kernel", "bzImage", "--boot-initrd", initrd])
            .args([
                "--slot-a", "r.swb", "--public", "k.pub", "--out", "disk.img",
            ]);
        cmd.assert()
    };
    key(&[
        "--initrd",
        "stage.cpio",
        "--public",
        "o.pub",
        "-o",
        "other-key.cpio",
    ])
    .assert()
    .success();
    mkdisk("other-key.cpio").code(25).stderr(contains(
        "the boot stage other-key.cpio does not trust r.swb's signers (1 key(s) in its keyring): slot_a would never boot",
    ));
    assert!(!d.join("disk.img").exists());
    mkdisk("keyed.cpio").success();
}
