//! The keys this stage trusts: the `.keyring` section `image-tools stage`
//! adds to the program (the magic `SWKEYS1\0`, then raw 32-byte ed25519
//! public keys), read from the stage's own image as the firmware loaded it.
//! Under Secure Boot the firmware checked that image, keyring included.

use alloc::vec::Vec;
use uefi::boot;
use uefi::proto::loaded_image::LoadedImage;

const SECTION: &[u8; 8] = b".keyring";
const MAGIC: &[u8; 8] = b"SWKEYS1\0";

/// The raw keys of the stage's keyring; `None` when it has none (a stage
/// as built, before `image-tools stage`).
pub fn load() -> Result<Option<Vec<[u8; 32]>>, &'static str> {
    let image = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
        .map_err(|_| "the stage cannot see its own image")?;
    let (base, size) = image.info();
    let size = usize::try_from(size).map_err(|_| "the stage's image is too large")?;
    if base.is_null() {
        return Err("the stage's image has no address");
    }
    // SAFETY: the firmware loaded this image at `base`, `size` bytes, and
    // keeps it mapped, unchanged, while it runs; it is only read.
    let bytes = unsafe { core::slice::from_raw_parts(base.cast::<u8>(), size) };
    let Some(section) = section(bytes, SECTION)? else {
        return Ok(None);
    };
    let keys = section
        .strip_prefix(MAGIC)
        .ok_or("the .keyring section has no SWKEYS1 magic")?;
    if keys.is_empty() || keys.len() % 32 != 0 {
        return Err("the .keyring section is not a whole number of keys");
    }
    Ok(Some(
        keys.chunks_exact(32)
            .filter_map(|k| k.try_into().ok())
            .collect(),
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
}

/// The named section of a PE image as loaded (sections at their virtual
/// addresses), every offset checked against the image's bounds.
fn section<'a>(image: &'a [u8], name: &[u8; 8]) -> Result<Option<&'a [u8]>, &'static str> {
    let bad = "the stage's own PE headers are malformed";
    let pe = u32_at(image, 0x3c).ok_or(bad)?;
    if image.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        return Err(bad);
    }
    let coff = pe + 4;
    let count = u16_at(image, coff + 2).ok_or(bad)?;
    let optional = u16_at(image, coff + 16).ok_or(bad)?;
    let table = coff + 20 + optional;
    for i in 0..count {
        let at = table + 40 * i;
        let header = image.get(at..at + 40).ok_or(bad)?;
        if &header[..8] != name {
            continue;
        }
        let len = u32_at(header, 8).ok_or(bad)?;
        let start = u32_at(header, 12).ok_or(bad)?;
        let end = start.checked_add(len).ok_or(bad)?;
        return image.get(start..end).map(Some).ok_or(bad);
    }
    Ok(None)
}
