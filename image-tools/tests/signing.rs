//! Signing where the keys live (docs/signing.md): a bundle built unsigned
//! and signed afterwards by a PKCS#11 token (SoftHSM2), by an external
//! command (a script around `openssl pkeyutl`), by a PEM file; signatures
//! removed and replaced without touching the payload; a keyring that
//! requires two of its three keys; the same bytes from every build.

use assert_cmd::Command;
use predicates::str::contains;
use std::path::{Path, PathBuf};

fn it() -> Command {
    Command::cargo_bin("image-tools").unwrap()
}

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn keygen(dir: &Path, name: &str) {
    it().current_dir(dir)
        .args(["keygen", "--private"])
        .arg(format!("{name}.pem"))
        .arg("--public")
        .arg(format!("{name}.pub"))
        .assert()
        .success();
}

fn image(dir: &Path) {
    let image: Vec<u8> = (0..700_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
        .collect();
    std::fs::write(dir.join("rootfs.img"), image).unwrap();
}

fn build(dir: &Path, out: &str, extra: &[&str]) {
    it().current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args([
            "build",
            "--image",
            "rootfs=rootfs.img",
            "--compatible",
            "acme-gw",
        ])
        .args(["--version", "3.1.0", "--chunk-size", "64K", "--out", out])
        .args(extra)
        .assert()
        .success();
}

/// The payload: everything after the signature block, which signing never
/// touches.
fn payload(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let manifest = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let sigs = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    b[32 + manifest + sigs..].to_vec()
}

fn verify(dir: &Path, bundle: &str, trust: &[&str]) -> assert_cmd::assert::Assert {
    it().current_dir(dir)
        .args(["verify", bundle])
        .args(trust)
        .assert()
}

/// A SoftHSM2 token "release" (user PIN 1234) holding an ed25519 key pair
/// "vendor", made as a vendor's HSM administrator would with OpenSC's
/// `pkcs11-tool`; the tokens live in `dir`.
fn softhsm_token(dir: &Path) -> PathBuf {
    assert!(
        Path::new(SOFTHSM).exists() && which("pkcs11-tool") && which("softhsm2-util"),
        "SoftHSM2 and OpenSC are needed (.ci/install-deps installs softhsm2 and opensc)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )
    .unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.env("SOFTHSM2_CONF", &conf).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    run(std::process::Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        "release",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    ]));
    run(std::process::Command::new("pkcs11-tool").args([
        "--module",
        SOFTHSM,
        "--token-label",
        "release",
        "--login",
        "--pin",
        "1234",
        "--keypairgen",
        "--key-type",
        "EC:edwards25519",
        "--label",
        "vendor",
        "--id",
        "01",
    ]));
    conf
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_bundle_built_unsigned_is_signed_by_an_hsm_then_a_second_signer_without_touching_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d);
    keygen(d, "manager");
    let conf = softhsm_token(d);
    let uri =
        format!("pkcs11:token=release;object=vendor?module-path={SOFTHSM}&pin-source=file:pin");
    std::fs::write(d.join("pin"), "1234\n").unwrap();

    build(d, "r.swb", &["--unsigned"]);
    let unsigned_payload = payload(&d.join("r.swb"));
    // Nothing installs it, and nothing says it is signed.
    verify(d, "r.swb", &["--public", "manager.pub"])
        .code(25)
        .stderr(contains("bundle is not signed"));
    it().current_dir(d)
        .args(["inspect", "r.swb"])
        .assert()
        .success()
        .stdout(contains("signers: (none)"));

    // The token's public half for the device's keyring.
    it().current_dir(d)
        .env("SOFTHSM2_CONF", &conf)
        .args(["pubkey", "--pkcs11", &uri, "-o", "hsm.pub"])
        .assert()
        .success()
        .stdout(contains(
            "the public key of pkcs11:token=release;object=vendor",
        ));
    it().current_dir(d)
        .env("SOFTHSM2_CONF", &conf)
        .args(["sign", "r.swb", "--pkcs11", &uri])
        .assert()
        .success()
        .stdout(contains("1 signature(s) now"));
    verify(d, "r.swb", &["--public", "hsm.pub"]).success();

    // The release manager's signature, from an external command: OpenSSL 3
    // signs ed25519 only from a file, so the script keeps stdin in one.
    std::fs::write(
        d.join("sign.sh"),
        "set -e\nf=$(mktemp)\ncat > \"$f\"\nopenssl pkeyutl -sign -rawin -inkey manager.pem -in \"$f\"\nrm -f \"$f\"\n",
    )
    .unwrap();
    it().current_dir(d)
        .args(["sign", "r.swb", "--sign-command", "manager.pub=sh sign.sh"])
        .assert()
        .success()
        .stdout(contains("2 signature(s) now"));
    verify(d, "r.swb", &["--public", "manager.pub"]).success();
    assert_eq!(payload(&d.join("r.swb")), unsigned_payload);

    // A command that fails, or prints a signature of something else,
    // leaves the bundle as it was.
    let before = std::fs::read(d.join("r.swb")).unwrap();
    it().current_dir(d)
        .args([
            "sign",
            "r.swb",
            "--sign-command",
            "manager.pub=echo no key here >&2; exit 3",
        ])
        .assert()
        .code(32)
        .stderr(contains("no key here"));
    it().current_dir(d)
        .args([
            "sign",
            "r.swb",
            "--sign-command",
            "manager.pub=cat >/dev/null; head -c 64 /dev/zero",
        ])
        .assert()
        .code(26)
        .stderr(contains("not a signature of this manifest by that key"));
    assert_eq!(std::fs::read(d.join("r.swb")).unwrap(), before);

    // Removing the HSM's signature leaves the manager's alone.
    let hsm_id = key_id_of(d, "hsm.pub");
    it().current_dir(d)
        .args(["sign", "r.swb", "--remove", &hsm_id[..12]])
        .assert()
        .success()
        .stdout(contains("1 signature(s) now").and(contains("(1 removed)")));
    verify(d, "r.swb", &["--public", "hsm.pub"]).code(25);
    verify(d, "r.swb", &["--public", "manager.pub"]).success();
    assert_eq!(payload(&d.join("r.swb")), unsigned_payload);
}

use predicates::prelude::PredicateBooleanExt;

/// A signing command that never answers, or floods its output, is cut
/// off with a message saying so; the bundle is left as it was.
#[test]
fn a_signing_command_that_hangs_or_floods_is_killed_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d);
    keygen(d, "k");
    build(d, "r.swb", &["--unsigned"]);
    let before = std::fs::read(d.join("r.swb")).unwrap();
    let started = std::time::Instant::now();
    // The sleep is a child of the shell: the whole group goes.
    it().current_dir(d)
        .args(["sign", "r.swb", "--sign-timeout", "1"])
        .args([
            "--sign-command",
            "k.pub=cat >/dev/null; sleep 60; echo late",
        ])
        .assert()
        .code(32)
        .stderr(contains(
            "printed no signature in 1 s (--sign-timeout); killed",
        ));
    assert!(
        started.elapsed().as_secs() < 30,
        "not killed: {:?}",
        started.elapsed()
    );
    it().current_dir(d)
        .args([
            "sign",
            "r.swb",
            "--sign-command",
            "k.pub=cat >/dev/null; yes",
        ])
        .assert()
        .code(32)
        .stderr(contains("printed over 4096 bytes"));
    assert_eq!(std::fs::read(d.join("r.swb")).unwrap(), before);
}

/// The key id `image-tools` shows for the public key `public`.
fn key_id_of(dir: &Path, public: &str) -> String {
    let out = it()
        .current_dir(dir)
        .args([
            "pubkey",
            "--sign-command",
            &format!("{public}=false"),
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()[7..23].to_string()
}

#[test]
fn a_keyring_that_requires_two_of_three_signers_counts_only_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d);
    for k in ["build", "manager", "backup", "stranger"] {
        keygen(d, k);
    }
    let ring = d.join("ring");
    std::fs::create_dir(&ring).unwrap();
    for k in ["build", "manager", "backup"] {
        std::fs::copy(d.join(format!("{k}.pub")), ring.join(format!("{k}.pem"))).unwrap();
    }
    std::fs::write(ring.join("threshold"), "2\n").unwrap();

    build(d, "one.swb", &["--key", "build.pem"]);
    verify(d, "one.swb", &["--keyring", "ring"])
        .code(30)
        .stderr(
            contains("signed by 1 of the 2 trusted keys the keyring requires").and(
                contains(key_id_of(d, "manager.pub")).and(contains(key_id_of(d, "backup.pub"))),
            ),
        );
    // A signature by a key the keyring does not hold is never counted.
    build(
        d,
        "stranger.swb",
        &["--key", "build.pem", "--key", "stranger.pem"],
    );
    verify(d, "stranger.swb", &["--keyring", "ring"]).code(30);
    // The same key twice is one signer.
    it().current_dir(d)
        .args(["sign", "one.swb", "--key", "build.pem"])
        .assert()
        .success()
        .stdout(contains("1 signature(s) now"));
    verify(d, "one.swb", &["--keyring", "ring"]).code(30);

    it().current_dir(d)
        .args(["sign", "one.swb", "--key", "manager.pem"])
        .assert()
        .success();
    verify(d, "one.swb", &["--keyring", "ring"]).success();

    // A threshold the keyring cannot meet is a broken keyring, said as such.
    std::fs::write(ring.join("threshold"), "4\n").unwrap();
    verify(d, "one.swb", &["--keyring", "ring"])
        .code(32)
        .stderr(contains("threshold"));
    // So is a key in two files: it would count twice toward the reach of
    // the threshold, once toward meeting it.
    std::fs::write(ring.join("threshold"), "2\n").unwrap();
    std::fs::copy(d.join("build.pub"), ring.join("build-again.pem")).unwrap();
    verify(d, "one.swb", &["--keyring", "ring"])
        .code(32)
        .stderr(contains("a keyring holds each key once"));
}

#[test]
fn the_same_inputs_build_the_same_bytes_whatever_the_threads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d);
    keygen(d, "k");
    for verity in [false, true] {
        let extra = |threads: &'static str| {
            let mut a = vec!["--key", "k.pem", "--threads", threads];
            if verity {
                a.push("--verity");
            }
            a
        };
        if verity {
            // Whole 4 KiB blocks for the hash tree.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("rootfs.img"))
                .unwrap();
            f.set_len(704 * 1024).unwrap();
        }
        build(d, "a.swb", &extra("1"));
        build(d, "b.swb", &extra("2"));
        build(d, "c.swb", &extra("2"));
        let a = std::fs::read(d.join("a.swb")).unwrap();
        assert!(
            a == std::fs::read(d.join("b.swb")).unwrap(),
            "threads 1 and 2 differ"
        );
        assert!(
            a == std::fs::read(d.join("c.swb")).unwrap(),
            "two builds differ"
        );
    }
}
