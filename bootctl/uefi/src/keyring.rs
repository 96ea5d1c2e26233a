//! What this stage trusts and demands: the `.keyring` and `.policy`
//! sections `image-tools stage` adds to the program
//! (`switchback_bundle::stage_sections`), read from the stage's own image
//! as the firmware loaded it. Under Secure Boot the firmware checked that
//! image, sections included.

use bootctl_core::verify::Trust;
use switchback_bundle::stage_sections::{KEYRING_SECTION, POLICY_SECTION};
use uefi::boot;
use uefi::proto::loaded_image::LoadedImage;

/// What the stage trusts: its keyring (none in a stage as built, before
/// `image-tools stage`) and its policy (every flag off without one).
pub fn trust() -> Result<Trust, alloc::string::String> {
    let keyring = own_section(KEYRING_SECTION).map_err(|e| alloc::format!("its keyring: {e}"))?;
    let policy = own_section(POLICY_SECTION).map_err(|e| alloc::format!("its policy: {e}"))?;
    Trust::from_sections(keyring, policy)
}

/// The named section of the stage's own image.
fn own_section(name: &str) -> Result<Option<&'static [u8]>, &'static str> {
    let image = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
        .map_err(|_| "the stage cannot see its own image")?;
    let (base, size) = image.info();
    let size = usize::try_from(size).map_err(|_| "the stage's image is too large")?;
    if base.is_null() {
        return Err("the stage's image has no address");
    }
    // SAFETY: the firmware loaded this image at `base`, `size` bytes, and
    // keeps it mapped, unchanged, while the stage runs (until the kernel
    // starts, when nothing of the stage is used any more); it is only read.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(base.cast::<u8>(), size) };
    let mut padded = [0u8; 8];
    let name = name.as_bytes();
    padded[..name.len()].copy_from_slice(name);
    section(bytes, &padded)
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
