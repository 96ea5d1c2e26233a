//! What both boot stages check before they start a slot's kernel
//! (`bootctl_core::verify`, docs/boot-flow.md "Integrity at every boot"),
//! on slots as `updater install` leaves them: a real ext4 root with its
//! kernel and initramfs, and the signed head of its bundle as the slot
//! trailer.

use bootctl::device::FileDevice;
use bootctl::Slot;
use bootctl_core::verify::{boot_files, BootFiles, Refused, Trust};
use ed25519_dalek::SigningKey;
use std::os::unix::fs::FileExt;
use std::path::Path;
use switchback_bundle::stage_sections::{keyring_section, Policy};
use switchback_bundle::{BuildOptions, Envelope, ImageSource, Keyring};

const SLOT: u64 = 24 << 20;

fn vendor() -> SigningKey {
    SigningKey::from_bytes(&[0x17; 32])
}

/// A root whose kernel and initramfs are bytes no other file repeats.
fn root_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let mut seed = 7u64;
    let mut noise = |n: usize| {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect::<Vec<u8>>()
    };
    let kernel = noise(3 << 20);
    let initrd = noise(1 << 20);
    std::fs::write(root.join("boot/vmlinuz"), &kernel).unwrap();
    std::fs::write(root.join("boot/initrd.img"), &initrd).unwrap();
    let img = dir.join("root.ext4");
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(status.success());
    (img, kernel, initrd)
}

/// The slot: `img` (changed by `change`), and the signed head of its
/// bundle, signed by `signer`, as its trailer unless `trailer` is false.
fn slot(
    dir: &Path,
    img: &Path,
    signer: &SigningKey,
    verity: bool,
    trailer: bool,
) -> std::path::PathBuf {
    let out = dir.join(format!("r{verity}.swb"));
    let opts = BuildOptions {
        compatible: "switchback-test".into(),
        version: "2.0.0".into(),
        security_version: 1,
        data_schema: None,
        build_time: 1,
        level: 1,
        chunk_size: 1 << 20,
        threads: 1,
        migrations: Vec::new(),
        base: None,
        verity,
    };
    let src = [ImageSource {
        target: "rootfs".into(),
        path: img.to_path_buf(),
    }];
    switchback_bundle::build(&opts, &src, &[signer], &out, &mut |_| {}).unwrap();
    let keyring = Keyring::from_verifying_keys([signer.verifying_key()]);
    let head = Envelope::read(std::fs::File::open(&out).unwrap())
        .unwrap()
        .verify(&keyring)
        .unwrap()
        .head;
    let path = dir.join("slot.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(SLOT).unwrap();
    f.write_all_at(&std::fs::read(img).unwrap(), 0).unwrap();
    if trailer {
        switchback_bundle::trailer::write(&f, 0, SLOT, &head).unwrap();
    }
    path
}

fn trust(require_verity: bool) -> Trust {
    let keys = keyring_section(&[vendor().verifying_key().to_bytes()]);
    let policy = Policy {
        require_verity,
        threshold: 0,
    }
    .section();
    Trust::from_sections(Some(&keys), Some(&policy)).unwrap()
}

fn check(slot: &Path, trust: &Trust) -> (Result<BootFiles, Refused>, Vec<String>) {
    let dev = FileDevice::new(std::fs::File::open(slot).unwrap()).unwrap();
    let mut said = Vec::new();
    let r = boot_files(Slot::B, dev, trust, &mut |m| said.push(m.to_string()));
    (r, said)
}

fn refused(r: Result<BootFiles, Refused>) -> Refused {
    match r {
        Ok(_) => panic!("the slot was accepted"),
        Err(r) => r,
    }
}

#[test]
fn a_signed_slot_gives_its_kernel_and_initramfs_and_its_verity_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel, initrd) = root_image(dir.path());
    for verity in [false, true] {
        let s = slot(dir.path(), &img, &vendor(), verity, true);
        let (r, said) = check(&s, &trust(false));
        let files = r.unwrap_or_else(|r| panic!("{}: {}", r.what, r.detail));
        assert_eq!(files.kernel, kernel);
        assert_eq!(files.initrd.as_deref(), Some(initrd.as_slice()));
        assert!(
            said[0].contains("slot_b holds switchback-test 2.0.0, signed by a trusted key"),
            "{said:?}"
        );
        match verity {
            true => {
                let v = files.verity.expect("the verity parameter");
                assert!(v.starts_with("switchback.verity=sha256:4096:4096:"), "{v}");
                assert!(said[1].contains("opened through dm-verity"), "{said:?}");
            }
            false => {
                assert!(files.verity.is_none());
                assert!(said[1].contains("has no dm-verity hash tree"), "{said:?}");
            }
        }
    }
}

#[test]
fn a_changed_unsigned_foreign_or_treeless_slot_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel, _) = root_image(dir.path());
    // One bit of the kernel, after the install.
    let s = slot(dir.path(), &img, &vendor(), false, true);
    let bytes = std::fs::read(&img).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &kernel[1 << 20..(1 << 20) + 64])
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&s).unwrap();
    f.write_all_at(&[bytes[at] ^ 1], at as u64).unwrap();
    let r = refused(check(&s, &trust(false)).0);
    assert_eq!(r.what, "tampered", "{}", r.detail);
    assert!(
        r.detail.contains("does not match its signed release"),
        "{}",
        r.detail
    );

    let s = slot(dir.path(), &img, &vendor(), false, false);
    assert_eq!(refused(check(&s, &trust(false)).0).what, "unsigned");

    let other = SigningKey::from_bytes(&[0x42; 32]);
    let s = slot(dir.path(), &img, &other, false, true);
    assert_eq!(refused(check(&s, &trust(false)).0).what, "bad-signature");

    let s = slot(dir.path(), &img, &vendor(), false, true);
    let r = refused(check(&s, &trust(true)).0);
    assert_eq!(r.what, "no-verity");
    assert!(
        r.detail
            .contains("switchback-test 2.0.0 has no dm-verity hash tree"),
        "{}",
        r.detail
    );
}

/// A stage without a keyring reads the slot as it is, changed or not, and
/// says so when it starts; a keyring it cannot read is an error.
#[test]
fn without_a_keyring_a_slot_is_read_unchecked_and_a_broken_keyring_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel, _) = root_image(dir.path());
    let s = slot(dir.path(), &img, &vendor(), false, false);
    let none = Trust::from_sections(None, None).unwrap();
    assert!(none.describe().contains("slots start unverified"));
    let (r, said) = check(&s, &none);
    assert_eq!(r.unwrap_or_else(|r| panic!("{}", r.detail)).kernel, kernel);
    assert!(said.is_empty(), "{said:?}");
    assert!(Trust::from_sections(Some(b"SWKEYS1\0short"), None).is_err());
    assert!(Trust::from_sections(None, Some(b"SWPOL1\0\0\x02\0\0\0\0\0\0\0")).is_err());
    // A policy without its keyring: the stage was keyed and lost it.
    let policy = Policy {
        require_verity: true,
        threshold: 0,
    }
    .section();
    assert!(Trust::from_sections(None, Some(&policy)).is_err());
}

/// The verity parameter is read by the release's initramfs: a release
/// with a tree and no initramfs would mount its root unchecked, so it is
/// refused where the stage requires verity and started without the
/// parameter, said so, elsewhere.
#[test]
fn a_tree_without_an_initramfs_to_open_it_is_not_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _, _) = root_image(dir.path());
    let status = std::process::Command::new("debugfs")
        .args(["-w", "-R", "rm /boot/initrd.img"])
        .arg(&img)
        .status()
        .expect("debugfs (apt-get install e2fsprogs)");
    assert!(status.success());
    let s = slot(dir.path(), &img, &vendor(), true, true);
    let r = refused(check(&s, &trust(true)).0);
    assert_eq!(r.what, "no-verity", "{}", r.detail);
    assert!(r.detail.contains("no /boot/initrd.img"), "{}", r.detail);
    let (r, said) = check(&s, &trust(false));
    let files = r.unwrap_or_else(|r| panic!("{}", r.detail));
    assert!(files.verity.is_none() && files.initrd.is_none());
    assert!(
        said.iter()
            .any(|m| m.contains("no /boot/initrd.img to open it")),
        "{said:?}"
    );
}
