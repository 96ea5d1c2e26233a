//! The test vectors of docs/bundle-format.md: the stored bundle must read
//! with the stored key, and building from the documented inputs must give
//! the same bytes (same key seed, image, options and build time). The fuzz
//! seeds are bundles of the current format too.
//!
//! `SWITCHBACK_WRITE_VECTORS=1 cargo test -p image-tools --test vectors`
//! writes them anew after a format change.

use ed25519_dalek::SigningKey;
use image_tools::bundle::{self, BuildOptions, Envelope, ImageSource, Keyring, ReadOptions};
use std::io::Cursor;
use std::path::Path;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

/// The documented vector image, 200 000 bytes: byte i is
/// (i * 7 + i / 1000) mod 256, except bytes 65 536 to 131 071 (the second
/// chunk), which are zero.
fn vector_image() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| {
            if (65_536..131_072).contains(&i) {
                0
            } else {
                ((i * 7 + i / 1000) % 256) as u8
            }
        })
        .collect()
}

fn write_vectors() -> bool {
    std::env::var_os("SWITCHBACK_WRITE_VECTORS").is_some()
}

fn vector_options() -> BuildOptions {
    BuildOptions {
        compatible: "switchback-test-vector".into(),
        version: "1.0.0".into(),
        security_version: 1,
        data_schema: None,
        build_time: 1_700_000_000,
        level: 3,
        chunk_size: 65_536,
        threads: 2,
        migrations: Vec::new(),
        base: None,
        verity: false,
    }
}

#[test]
fn stored_vector_reads_and_rebuilds_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.img");
    std::fs::write(&image, vector_image()).unwrap();
    let key = SigningKey::from_bytes(&[0x42; 32]);
    // The stored PKCS#8 file (written by another implementation) is that key.
    let stored_key =
        image_tools::bundle::keys::load_private(&Path::new(VECTORS).join("v2-key.pem")).unwrap();
    assert_eq!(stored_key.to_bytes(), key.to_bytes());
    let out = dir.path().join("v2.swb");
    let src = [ImageSource {
        target: "rootfs".into(),
        path: image,
    }];
    bundle::build(&vector_options(), &src, &[&key], &out, &mut |_| {}).unwrap();
    let built = std::fs::read(&out).unwrap();

    let stored_path = Path::new(VECTORS).join("v2-small.swb");
    if write_vectors() {
        std::fs::write(&stored_path, &built).unwrap();
        let manifest_len = u32::from_le_bytes(built[12..16].try_into().unwrap()) as usize;
        std::fs::write(
            Path::new(VECTORS).join("v2-header.hex"),
            hex::encode(&built[..32]) + "\n",
        )
        .unwrap();
        std::fs::write(
            Path::new(VECTORS).join("v2-manifest.json"),
            [&built[32..32 + manifest_len], b"\n"].concat(),
        )
        .unwrap();
    }
    let stored = std::fs::read(&stored_path).unwrap();
    assert!(
        built == stored,
        "the writer no longer produces the documented vector"
    );

    let ring = Keyring::from_key(&Path::new(VECTORS).join("v2-key.pub")).unwrap();
    let verified = Envelope::read(Cursor::new(&stored))
        .unwrap()
        .verify(&ring)
        .unwrap();
    let mut got = Vec::new();
    verified
        .read_chunks(
            ReadOptions::checked(1),
            |_, c| -> Result<(), bundle::BundleError> {
                c.append_to(&mut got);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(got, vector_image());

    // The documented header and manifest.
    assert_eq!(
        hex::encode(&stored[..32]),
        include_str!("vectors/v2-header.hex").trim()
    );
    let manifest_len = u32::from_le_bytes(stored[12..16].try_into().unwrap()) as usize;
    assert_eq!(
        std::str::from_utf8(&stored[32..32 + manifest_len]).unwrap(),
        include_str!("vectors/v2-manifest.json").trim()
    );
}

/// The fuzz seeds (image-tools/fuzz/seeds): the test vector, a bundle of two
/// images, and a delta, each as a whole bundle (`bundle_reader`) and as the
/// `signed_bundle` target's input (manifest length u16 LE, manifest,
/// payload). They must be bundles of the format this build reads.
#[test]
fn fuzz_seeds_are_bundles_of_the_current_format() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let key = SigningKey::from_bytes(&[0x42; 32]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let vector = write("rootfs.img", &vector_image());
    let small: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
    let second = write("second.img", &small);
    // The fuzz targets' delta base (common.rs): 1 MiB, byte i = (i * 2654435761) >> 24.
    let base: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut changed = base.clone();
    changed[300_000..300_100].fill(7);
    let base_path = write("base.img", &base);
    let changed_path = write("changed.img", &changed);
    let image = |target: &str, path: &Path| ImageSource {
        target: target.into(),
        path: path.to_path_buf(),
    };
    // A root of 40 blocks of 4 KiB with its dm-verity tree.
    let blocks: Vec<u8> = (0..40 * 4096u32).map(|i| (i / 4096) as u8).collect();
    let verity_root = write("verity.img", &blocks);
    let cases: [(&str, Vec<ImageSource>, Option<&Path>, bool); 4] = [
        ("v2-small", vec![image("rootfs", &vector)], None, false),
        (
            "two-images",
            vec![image("rootfs", &vector), image("extra", &second)],
            None,
            false,
        ),
        (
            "delta",
            vec![image("rootfs", &changed_path)],
            Some(&base_path),
            false,
        ),
        ("verity", vec![image("rootfs", &verity_root)], None, true),
    ];
    let ring = Keyring::from_verifying_keys([key.verifying_key()]);
    for (name, images, delta_base, verity) in cases {
        let reader_seed = seeds.join("bundle_reader").join(format!("{name}.swb"));
        let signed_seed = seeds.join("signed_bundle").join(format!("{name}.bin"));
        if write_vectors() {
            let out = dir.path().join(format!("{name}.swb"));
            let opts = BuildOptions {
                base: delta_base.map(Path::to_path_buf),
                verity,
                ..vector_options()
            };
            bundle::build(&opts, &images, &[&key], &out, &mut |_| {}).unwrap();
            let b = std::fs::read(&out).unwrap();
            let manifest_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
            let sigs_len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
            let payload = &b[32 + manifest_len + sigs_len..];
            let input = [
                &(manifest_len as u16).to_le_bytes()[..],
                &b[32..32 + manifest_len],
                payload,
            ]
            .concat();
            std::fs::create_dir_all(reader_seed.parent().unwrap()).unwrap();
            std::fs::create_dir_all(signed_seed.parent().unwrap()).unwrap();
            std::fs::write(&reader_seed, &b).unwrap();
            std::fs::write(&signed_seed, input).unwrap();
        }
        let stored = std::fs::read(&reader_seed).unwrap();
        let verified = Envelope::read(Cursor::new(&stored))
            .unwrap()
            .verify(&ring)
            .unwrap_or_else(|e| panic!("seed {name}: {e}"));
        let read = ReadOptions {
            base: Some(&base),
            ..ReadOptions::checked(1)
        };
        verified
            .read_chunks(read, |_, _| Ok::<(), bundle::BundleError>(()))
            .unwrap_or_else(|e| panic!("seed {name}: {e}"));
        let signed = std::fs::read(&signed_seed).unwrap();
        let len = u16::from_le_bytes([signed[0], signed[1]]) as usize;
        assert_eq!(
            &signed[2..2 + len],
            &stored[32..32 + len],
            "seed {name}: the signed_bundle seed holds another manifest"
        );
    }
    // The swu_wrapper target's seed: the v2-small seed wrapped as a .swu.
    let small = seeds.join("bundle_reader/v2-small.swb");
    let swu_seed = seeds.join("swu_wrapper/v2-small.swu");
    if write_vectors() {
        let manifest = Envelope::read(std::fs::File::open(&small).unwrap())
            .unwrap()
            .unverified_manifest()
            .unwrap();
        std::fs::create_dir_all(swu_seed.parent().unwrap()).unwrap();
        bundle::swu::wrap_file(&small, &manifest, &["1.0".into()], &swu_seed).unwrap();
    }
    let mut unwrapped = Vec::new();
    std::io::Read::read_to_end(
        &mut bundle::swu::open(std::fs::File::open(&swu_seed).unwrap()).unwrap(),
        &mut unwrapped,
    )
    .unwrap();
    assert!(
        unwrapped == std::fs::read(&small).unwrap(),
        "the swu_wrapper seed does not hold the v2-small seed"
    );
}
