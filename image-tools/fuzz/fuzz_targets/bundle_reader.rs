//! Raw bytes through the whole reader, as an attacker on the wire sends them.
#![no_main]
mod common;
use image_tools::bundle::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::from_verifying_keys([common::vector_key().verifying_key()]);
    common::read_all(data, &ring);
});
