//! What a reader does after a signature verified: the manifest is whatever
//! the fuzzer writes, signed here by the trusted key, followed by a payload
//! of the fuzzer's bytes. Input: manifest length (u16 LE), manifest, payload.
#![no_main]
mod common;
use ed25519_dalek::Signer;
use image_tools::bundle::header::{encode_signatures, Header, SignatureEntry};
use image_tools::bundle::keys::key_id;
use image_tools::bundle::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (manifest, payload) = rest.split_at(len.min(rest.len()));
    if manifest.is_empty() {
        return;
    }
    let key = common::vector_key();
    let sig = SignatureEntry { key_id: key_id(&key.verifying_key()), signature: key.sign(manifest).to_bytes() };
    let block = encode_signatures(&[sig]);
    let header = Header { manifest_len: manifest.len() as u32, signatures_len: block.len() as u32, payload_len: payload.len() as u64 };
    let bundle = [&header.encode()[..], manifest, &block, payload].concat();
    let ring = Keyring::from_verifying_keys([key.verifying_key()]);
    common::read_all(&bundle, &ring);
});
