//! The `.swu` wrapper: a signed bundle packed the way SWUpdate packs its
//! releases, so that fleet servers that only accept SWUpdate files
//! (goosebit, hawkBit setups built around SWUpdate) can store and offer it.
//!
//! A `.swu` is a "newc" cpio archive whose first member is
//! `sw-description` (libconfig text the server reads for the version and
//! the hardware it fits); here the second member is the `.swb` bundle, then
//! the cpio trailer. Nothing in the wrapper is trusted: a reader skips
//! `sw-description` unread and hands the bundle member to the bundle
//! reader, whose signature check is what counts. The cpio checksum is not
//! checked either: the signed chunk digests cover every byte that matters.

use super::error::{BundleError, Result};
use std::io::{Cursor, Read};

/// Magic of a newc cpio header, without (`070701`) and with (`070702`) a
/// checksum.
pub const NEWC: &[u8; 6] = b"070701";
pub const NEWC_CRC: &[u8; 6] = b"070702";
pub const HEADER_LEN: usize = 110;
pub const SW_DESCRIPTION: &str = "sw-description";
/// The bundle member's file name ends so.
pub const BUNDLE_SUFFIX: &str = ".swb";
/// Real descriptions are a few hundred bytes; a wrapper claiming more is
/// not one of ours and is not worth reading through.
pub const MAX_DESCRIPTION: u64 = 64 << 10;
const MAX_NAME: u64 = 1024;
const S_IFMT: u64 = 0o170000;
const S_IFREG: u64 = 0o100000;

fn bad(reason: impl Into<String>) -> BundleError {
    BundleError::Wrapper(reason.into())
}

/// One member's header: its name and the length of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub mode: u64,
    pub size: u64,
}

/// Bytes of padding after `len` bytes to the next 4-byte boundary.
fn pad4(len: u64) -> u64 {
    (4 - len % 4) % 4
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(format!("it ends inside {what}")),
        _ => BundleError::Io {
            what: format!("reading the release wrapper's {what}"),
            source: e,
        },
    })
}

fn skip(r: &mut impl Read, n: u64, what: &str) -> Result<()> {
    let skipped =
        std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(|e| BundleError::Io {
            what: format!("reading the release wrapper's {what}"),
            source: e,
        })?;
    if skipped != n {
        return Err(bad(format!("it ends inside {what}")));
    }
    Ok(())
}

/// Reads one member header (magic included) and its name, leaving `r` at
/// the member's data.
pub fn read_member(r: &mut impl Read) -> Result<Member> {
    let mut h = [0u8; HEADER_LEN];
    read_exact(r, &mut h, "a member header")?;
    if &h[..6] != NEWC && &h[..6] != NEWC_CRC {
        return Err(bad(
            "a member header has no cpio newc magic (070701/070702)",
        ));
    }
    // Thirteen 8-digit hex fields after the magic.
    let field = |i: usize| -> Result<u64> {
        let text = &h[6 + 8 * i..14 + 8 * i];
        // Eight hex digits exactly: from_str_radix alone would take a sign.
        text.iter()
            .all(u8::is_ascii_hexdigit)
            .then(|| std::str::from_utf8(text).ok())
            .flatten()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
            .ok_or_else(|| bad(format!("member header field {i} is not hexadecimal")))
    };
    let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
    if namesize == 0 || namesize > MAX_NAME {
        return Err(bad(format!("a member name of {namesize} bytes")));
    }
    let mut name = vec![0u8; namesize as usize];
    read_exact(r, &mut name, "a member name")?;
    if name.pop() != Some(0) || name.contains(&0) {
        return Err(bad("a member name is not NUL-terminated"));
    }
    let name = String::from_utf8(name).map_err(|_| bad("a member name is not UTF-8"))?;
    skip(
        r,
        pad4(HEADER_LEN as u64 + namesize),
        "a member name's padding",
    )?;
    Ok(Member { name, mode, size })
}

/// What `open` found at the start of a stream.
pub enum Opened<R> {
    /// A plain bundle (or something the bundle reader will refuse).
    Bundle(std::io::Chain<Cursor<Vec<u8>>, R>),
    /// The bundle member of a `.swu`, limited to its length.
    Wrapped {
        member: Member,
        body: std::io::Take<R>,
    },
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Opened::Bundle(r) => r.read(buf),
            Opened::Wrapped { body, .. } => body.read(buf),
        }
    }
}

/// Looks at the first bytes of `r`: a `.swu` is unwrapped to its bundle
/// member; anything else is passed on whole to the bundle reader.
pub fn open<R: Read>(mut r: R) -> Result<Opened<R>> {
    let mut magic = Vec::with_capacity(6);
    (&mut r)
        .take(6)
        .read_to_end(&mut magic)
        .map_err(BundleError::io("reading the first bytes of the bundle"))?;
    if magic != NEWC && magic != NEWC_CRC {
        return Ok(Opened::Bundle(Cursor::new(magic).chain(r)));
    }
    let mut r = Cursor::new(magic).chain(r);
    let first = read_member(&mut r)?;
    if first.name != SW_DESCRIPTION {
        return Err(bad(format!(
            "its first member is {:?}, not {SW_DESCRIPTION}",
            first.name
        )));
    }
    if first.size > MAX_DESCRIPTION {
        return Err(bad(format!(
            "its {SW_DESCRIPTION} is {} bytes (at most {MAX_DESCRIPTION})",
            first.size
        )));
    }
    skip(&mut r, first.size + pad4(first.size), SW_DESCRIPTION)?;
    let member = read_member(&mut r)?;
    if !member.name.ends_with(BUNDLE_SUFFIX) || member.mode & S_IFMT != S_IFREG {
        return Err(bad(format!(
            "its second member is {:?}, not a Switchback bundle (a regular file named *{BUNDLE_SUFFIX})",
            member.name
        )));
    }
    let (_, rest) = r.into_inner();
    let body = rest.take(member.size);
    Ok(Opened::Wrapped { member, body })
}

#[cfg(feature = "writer")]
pub use writer::{describe, wrap, wrap_file};

#[cfg(feature = "writer")]
mod writer {
    use super::*;
    use crate::Manifest;
    use std::io::Write;
    use std::path::Path;

    /// A libconfig name (the board's section in `sw-description`).
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    /// A value that needs no escaping in a libconfig string.
    fn is_plain(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    }

    /// The `sw-description` for `manifest`: the version, and the board
    /// (`compatible`) with its hardware revisions, which is what fleet
    /// servers match against what a device reports.
    pub fn describe(
        manifest: &Manifest,
        hw_revisions: &[String],
        file_name: &str,
        sha256: &str,
    ) -> Result<String> {
        if !is_name(&manifest.compatible) {
            return Err(bad(format!(
                "compatible {:?} cannot name a board in {SW_DESCRIPTION} (letters, digits, - and _, starting with a letter)",
                manifest.compatible
            )));
        }
        if hw_revisions.is_empty() {
            return Err(bad("give at least one hardware revision"));
        }
        for value in hw_revisions
            .iter()
            .chain([&manifest.version, &file_name.to_string()])
        {
            if !is_plain(value) {
                return Err(bad(format!(
                    "{value:?} cannot go into {SW_DESCRIPTION}: printable ASCII without spaces, quotes or backslashes only"
                )));
            }
        }
        let revisions = hw_revisions
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            "software =\n{{\n\tversion = \"{version}\";\n\tdescription = \"Switchback release {compatible} {version}\";\n\t{compatible} = {{\n\t\thardware-compatibility = [ {revisions} ];\n\t\timages: (\n\t\t\t{{\n\t\t\t\tfilename = \"{file_name}\";\n\t\t\t\ttype = \"switchback\";\n\t\t\t\tsha256 = \"{sha256}\";\n\t\t\t}}\n\t\t);\n\t}};\n}};\n",
            version = manifest.version,
            compatible = manifest.compatible,
        ))
    }

    fn header(
        out: &mut impl Write,
        name: &str,
        mode: u64,
        size: u64,
        check: u32,
        ino: u64,
    ) -> std::io::Result<u64> {
        let namesize = name.len() as u64 + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            namesize,
            u64::from(check),
        ];
        let mut h = String::from("070702");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        out.write_all(h.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        let pad = pad4(HEADER_LEN as u64 + namesize);
        out.write_all(&[0u8; 4][..pad as usize])?;
        Ok(HEADER_LEN as u64 + namesize + pad)
    }

    /// Writes `bundle` (whose manifest is `manifest`) wrapped as a `.swu`
    /// to `out`: `sw-description`, the bundle as `<compatible>-<version>.swb`, the
    /// trailer. The cpio checksums are SWUpdate's: the sum of the bytes.
    pub fn wrap(
        bundle: &Path,
        manifest: &Manifest,
        hw_revisions: &[String],
        out: &mut impl Write,
    ) -> Result<()> {
        use sha2::Digest as _;
        let io = |what: &str| BundleError::io(format!("{what} {}", bundle.display()));
        let mut f = std::fs::File::open(bundle).map_err(io("opening"))?;
        let (mut sum, mut sha, mut len) = (0u32, sha2::Sha256::new(), 0u64);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io("reading"))?;
            if n == 0 {
                break;
            }
            sum = buf[..n]
                .iter()
                .fold(sum, |s, &b| s.wrapping_add(u32::from(b)));
            sha.update(&buf[..n]);
            len += n as u64;
        }
        if len > u64::from(u32::MAX) {
            return Err(bad(format!(
                "{} is {len} bytes: a cpio newc member holds at most 4 GiB - 1",
                bundle.display()
            )));
        }
        let name = format!(
            "{}-{}{BUNDLE_SUFFIX}",
            manifest.compatible, manifest.version
        );
        let desc = describe(manifest, hw_revisions, &name, &hex::encode(sha.finalize()))?;
        let desc_sum = desc.bytes().fold(0u32, |s, b| s.wrapping_add(u32::from(b)));
        let w = BundleError::io("writing the .swu");
        let mut total = header(
            out,
            SW_DESCRIPTION,
            S_IFREG | 0o644,
            desc.len() as u64,
            desc_sum,
            1,
        )
        .map_err(w)?;
        out.write_all(desc.as_bytes())
            .map_err(BundleError::io("writing the .swu"))?;
        let pad = pad4(desc.len() as u64);
        out.write_all(&[0u8; 4][..pad as usize])
            .map_err(BundleError::io("writing the .swu"))?;
        total += desc.len() as u64 + pad;
        total += header(out, &name, S_IFREG | 0o644, len, sum, 2)
            .map_err(BundleError::io("writing the .swu"))?;
        let mut f = std::fs::File::open(bundle).map_err(io("opening"))?;
        let copied = std::io::copy(&mut f, out).map_err(BundleError::io("writing the .swu"))?;
        if copied != len {
            return Err(bad(format!(
                "{} changed while it was wrapped",
                bundle.display()
            )));
        }
        let pad = pad4(len);
        out.write_all(&[0u8; 4][..pad as usize])
            .map_err(BundleError::io("writing the .swu"))?;
        total += len + pad;
        total +=
            header(out, "TRAILER!!!", 0, 0, 0, 0).map_err(BundleError::io("writing the .swu"))?;
        // cpio pads the archive to 512-byte blocks.
        let pad = (512 - total % 512) % 512;
        out.write_all(&vec![0u8; pad as usize])
            .map_err(BundleError::io("writing the .swu"))?;
        Ok(())
    }

    /// [`wrap`] into the file `out`: written beside it, synced, readable
    /// by all like the bundle it holds (it is meant to be uploaded), and
    /// renamed into place, so that no half-written wrapper bears the name.
    pub fn wrap_file(
        bundle: &Path,
        manifest: &Manifest,
        hw_revisions: &[String],
        out: &Path,
    ) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let out_err = |what: &'static str| BundleError::io(format!("{what} {}", out.display()));
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(out_err("creating a temporary file for"))?;
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        wrap(bundle, manifest, hw_revisions, &mut w)?;
        w.flush().map_err(out_err("writing"))?;
        drop(w);
        let f = tmp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(out_err("setting permissions of"))?;
        f.sync_all().map_err(out_err("syncing"))?;
        tmp.persist(out)
            .map_err(|e| BundleError::io(format!("renaming into {}", out.display()))(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, mode: u64, data: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        )
        .into_bytes();
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len() + pad4(out.len() as u64) as usize, 0);
        out.extend_from_slice(data);
        out.resize(out.len() + pad4(out.len() as u64) as usize, 0);
        out
    }

    fn unwrap_all(bytes: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        open(bytes)?.read_to_end(&mut out).unwrap();
        Ok(out)
    }

    #[test]
    fn a_plain_bundle_passes_whole_and_a_wrapped_one_is_cut_to_its_member() {
        assert_eq!(unwrap_all(b"SWBUNDLE rest").unwrap(), b"SWBUNDLE rest");
        assert_eq!(unwrap_all(b"SWB").unwrap(), b"SWB");
        let mut swu = member(
            SW_DESCRIPTION,
            0o100644,
            b"software = { version = \"1\"; };",
        );
        swu.extend(member("r.swb", 0o100644, b"SWBUNDLE body"));
        swu.extend(member("TRAILER!!!", 0, b""));
        assert_eq!(unwrap_all(&swu).unwrap(), b"SWBUNDLE body");
    }

    #[test]
    fn hostile_wrappers_are_refused_with_what_is_wrong() {
        let desc = member(SW_DESCRIPTION, 0o100644, b"x");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                member("r.swb", 0o100644, b"SWBUNDLE"),
                "first member is \"r.swb\"",
            ),
            (
                [desc.clone(), member("evil.sh", 0o100755, b"#!")].concat(),
                "not a Switchback bundle",
            ),
            (
                [desc.clone(), member("dir.swb", 0o040755, b"")].concat(),
                "not a Switchback bundle",
            ),
            (
                member(
                    SW_DESCRIPTION,
                    0o100644,
                    &vec![b' '; MAX_DESCRIPTION as usize + 1],
                ),
                "at most",
            ),
            (desc[..50].to_vec(), "ends inside a member header"),
            (desc.clone(), "ends inside a member header"),
            (
                [b"070701".as_slice(), &[b'z'; 104]].concat(),
                "not hexadecimal",
            ),
            (
                [&desc[..94], b"00000000", &desc[102..]].concat(),
                "member name of 0 bytes",
            ),
            // A size with a sign, which from_str_radix would take.
            (
                [&desc[..54], b"+0000001", &desc[62..]].concat(),
                "field 6 is not hexadecimal",
            ),
            (
                [&desc[..94], b"ffffffff", &desc[102..]].concat(),
                "member name of 4294967295 bytes",
            ),
        ];
        for (bytes, want) in cases {
            let e = match open(bytes.as_slice()) {
                Ok(_) => panic!("accepted a wrapper that should say {want:?}"),
                Err(e) => e,
            };
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
            assert_eq!(e.exit_code(), 37, "{e}");
        }
    }

    #[cfg(feature = "writer")]
    #[test]
    fn what_wrap_writes_is_what_open_reads() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b.swb");
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&bundle, &data).unwrap();
        let manifest: crate::Manifest = serde_json::from_value(serde_json::json!({
            "format": 2, "compatible": "acme-gw", "version": "2.0.0", "security_version": 1,
            "build_time": 1, "payload_size": 0, "images": []
        }))
        .unwrap();
        let mut swu = Vec::new();
        wrap(
            &bundle,
            &manifest,
            &["1.0".into(), "rev-b".into()],
            &mut swu,
        )
        .unwrap();
        assert_eq!(swu.len() % 512, 0);
        assert_eq!(unwrap_all(&swu).unwrap(), data);
        let mut r = swu.as_slice();
        let first = read_member(&mut r).unwrap();
        let mut text = vec![0u8; first.size as usize];
        r.read_exact(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("version = \"2.0.0\";"), "{text}");
        assert!(text.contains("acme-gw = {"), "{text}");
        assert!(
            text.contains("hardware-compatibility = [ \"1.0\", \"rev-b\" ];"),
            "{text}"
        );

        let bad_name: crate::Manifest = serde_json::from_value(serde_json::json!({
            "format": 2, "compatible": "9 lives", "version": "2.0.0", "security_version": 1,
            "build_time": 1, "payload_size": 0, "images": []
        }))
        .unwrap();
        let e = wrap(&bundle, &bad_name, &["1".into()], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("cannot name a board"), "{e}");
        let e = wrap(&bundle, &manifest, &["a\"b".into()], &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("cannot go into sw-description"),
            "{e}"
        );
    }
}
