//! Raw bytes through the `.swu` unwrapping that `updater install` and
//! `updater fleet` do before the bundle reader, as a hostile fleet server
//! sends them: whatever comes out goes on to the whole reader.
#![no_main]
mod common;
use image_tools::bundle::{swu, Keyring};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let Ok(mut opened) = swu::open(std::io::Cursor::new(data)) else { return };
    let mut inner = Vec::new();
    if opened.read_to_end(&mut inner).is_err() {
        return;
    }
    let ring = Keyring::from_verifying_keys([common::vector_key().verifying_key()]);
    common::read_all(&inner, &ring);
});
