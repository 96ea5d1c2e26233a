//! The fixed 32-byte header and the signature block.

use super::error::{BundleError, Result};
use super::{FORMAT_VERSION, MAGIC, MAX_MANIFEST_LEN, MAX_SIGNATURES};
use alloc::string::String;
use alloc::vec::Vec;

pub const HEADER_LEN: usize = 32;
/// key id (32) + ed25519 signature (64).
pub const SIGNATURE_ENTRY_LEN: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub manifest_len: u32,
    pub signatures_len: u32,
    pub payload_len: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.signatures_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Checks magic, version and every length against the format's limits.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if &b[0..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let manifest_len = u32_at(12);
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(BundleError::BadLength {
                field: "manifest_len",
                value: manifest_len.into(),
                limit: MAX_MANIFEST_LEN.into(),
            });
        }
        let signatures_len = u32_at(16);
        let max_sig = (MAX_SIGNATURES * SIGNATURE_ENTRY_LEN) as u32;
        if signatures_len as usize % SIGNATURE_ENTRY_LEN != 0 {
            return Err(BundleError::SignaturesLen(signatures_len));
        }
        // Zero is an unsigned bundle (`image-tools build --unsigned`, for
        // `image-tools sign`): readable, inspectable, never installed.
        if signatures_len > max_sig {
            return Err(BundleError::BadLength {
                field: "signatures_len",
                value: signatures_len.into(),
                limit: max_sig.into(),
            });
        }
        if u32_at(20) != 0 {
            return Err(BundleError::BadLength {
                field: "reserved",
                value: u32_at(20).into(),
                limit: 0,
            });
        }
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[24..32]);
        Ok(Header {
            manifest_len,
            signatures_len,
            payload_len: u64::from_le_bytes(p),
        })
    }
}

/// One signature: the signer's key id and its ed25519 signature over the
/// manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    pub key_id: [u8; 32],
    pub signature: [u8; 64],
}

pub fn encode_signatures(entries: &[SignatureEntry]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| e.key_id.iter().chain(e.signature.iter()).copied())
        .collect()
}

pub fn decode_signatures(block: &[u8]) -> Vec<SignatureEntry> {
    block
        .chunks_exact(SIGNATURE_ENTRY_LEN)
        .map(|e| {
            let mut key_id = [0u8; 32];
            let mut signature = [0u8; 64];
            key_id.copy_from_slice(&e[..32]);
            signature.copy_from_slice(&e[32..]);
            SignatureEntry { key_id, signature }
        })
        .collect()
}

/// A bundle's signed head held in memory (a slot trailer's, or
/// `VerifiedBundle::head`): its
/// header, then its manifest bytes and signature block, borrowed. Bytes
/// after the signature block are not looked at. The checks and errors are
/// those of `Envelope::read` on a stream;
/// nothing past the header is trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub header: Header,
    pub manifest_bytes: &'a [u8],
    pub signature_block: &'a [u8],
}

impl<'a> Head<'a> {
    /// Splits `bytes` into header, manifest and signature block; the header
    /// is checked ([`Header::decode`]), and a head that ends inside a region
    /// is [`BundleError::Truncated`].
    pub fn parse(bytes: &'a [u8]) -> Result<Head<'a>> {
        fn take<'b>(bytes: &mut &'b [u8], len: usize, region: &str) -> Result<&'b [u8]> {
            if bytes.len() < len {
                return Err(BundleError::Truncated {
                    region: String::from(region),
                });
            }
            let (taken, rest) = bytes.split_at(len);
            *bytes = rest;
            Ok(taken)
        }
        let mut rest = bytes;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(take(&mut rest, HEADER_LEN, "header")?);
        let header = Header::decode(&h)?;
        // Lengths are bounded by Header::decode (16 MiB and 1.5 KiB).
        let manifest_bytes = take(&mut rest, header.manifest_len as usize, "manifest")?;
        let signature_block = take(&mut rest, header.signatures_len as usize, "signature block")?;
        Ok(Head {
            header,
            manifest_bytes,
            signature_block,
        })
    }

    pub fn signatures(&self) -> Vec<SignatureEntry> {
        decode_signatures(self.signature_block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::{format, vec};

    #[test]
    fn header_round_trips_and_rejects_bad_fields() {
        let h = Header {
            manifest_len: 700,
            signatures_len: 192,
            payload_len: 1 << 40,
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        let mut b = bytes;
        b[0] ^= 1;
        assert!(matches!(Header::decode(&b), Err(BundleError::BadMagic)));
        // Version 1 (no frame digests, no zero chunks) is not read either.
        for other in [1u8, 3] {
            let mut b = bytes;
            b[8] = other;
            assert!(matches!(
                Header::decode(&b),
                Err(BundleError::UnsupportedVersion(v)) if v == u32::from(other)
            ));
        }
        let mut b = bytes;
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(BundleError::BadLength {
                field: "manifest_len",
                ..
            })
        ));
        let mut b = bytes;
        b[16] = 95;
        let e = Header::decode(&b).unwrap_err();
        assert!(matches!(e, BundleError::SignaturesLen(95)), "{e}");
        assert!(e
            .to_string()
            .contains("not a whole number of 96-byte signatures"));
        assert_eq!(e.exit_code(), 24);
        let mut b = bytes;
        b[16..20].copy_from_slice(&(96u32 * 17).to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(BundleError::BadLength {
                field: "signatures_len",
                ..
            })
        ));
        let mut b = bytes;
        b[21] = 1;
        assert!(matches!(
            Header::decode(&b),
            Err(BundleError::BadLength {
                field: "reserved",
                ..
            })
        ));
    }

    #[test]
    fn heads_split_like_a_stream_and_name_the_region_they_end_in() {
        let h = Header {
            manifest_len: 5,
            signatures_len: 96,
            payload_len: 9,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(b"12345");
        bytes.extend((0..96).map(|i| i as u8));
        bytes.extend_from_slice(b"payload, not looked at");
        let head = Head::parse(&bytes).unwrap();
        assert_eq!(head.header, h);
        assert_eq!(head.manifest_bytes, &bytes[32..37]);
        assert_eq!(head.signature_block, &bytes[37..133]);
        let sigs = head.signatures();
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].key_id[31], 31);
        assert_eq!(sigs[0].signature[0], 32);
        for (len, region) in [
            (0, "header"),
            (31, "header"),
            (32, "manifest"),
            (36, "manifest"),
            (37, "signature block"),
            (132, "signature block"),
        ] {
            let e = Head::parse(&bytes[..len]).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("bundle is truncated: it ends inside the {region}")
            );
            assert_eq!(e.exit_code(), 21);
        }
        assert!(Head::parse(&bytes[..133]).is_ok());
        let mut bad = vec![0u8; 200];
        bad[..8].copy_from_slice(b"SWBUNDLX");
        assert!(matches!(Head::parse(&bad), Err(BundleError::BadMagic)));
    }
}
