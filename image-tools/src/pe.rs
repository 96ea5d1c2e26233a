//! Sections added to an EFI program (a PE image): the boot stage's keyring,
//! a UKI's kernel, initramfs and command line. Each new section goes after
//! the program's last one, page-aligned in memory, with its bytes at the
//! end of the file, as `ukify` lays them out; nothing the program had moves.
//!
//! Written here rather than with binutils' `objcopy`, which drops a section
//! that has no bytes in the file: the arm64 UEFI stage's `.data` holds only
//! zero-initialised statics, and without its section header no firmware
//! zeroes them. U-Boot then started the stage with the last boot's bytes in
//! its allocator's state and it crashed on every warm reset.

use anyhow::{bail, ensure, Context, Result};
use object::pe::{
    ImageDosHeader, ImageNtHeaders64, ImageSectionHeader, IMAGE_DIRECTORY_ENTRY_SECURITY,
    IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ, IMAGE_SIZEOF_SECTION_HEADER,
};
use object::read::pe::ImageNtHeaders;
use object::{pod, LittleEndian as LE, U16, U32};
use std::path::Path;

fn align_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// `program` (the bytes of the EFI program `what`) with `sections` (name,
/// bytes) added in order. Refused: a program signed for Secure Boot (its
/// signature would no longer cover it: add, then sign), names longer than
/// a PE section's 8 bytes, and a program whose headers have no room for
/// the new section headers.
fn too_large(what: &Path) -> String {
    format!("{} with its new sections passes 4 GiB", what.display())
}

pub fn add_sections(program: &[u8], what: &Path, sections: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let not_pe = || format!("{} is not a 64-bit EFI program", what.display());
    let dos = ImageDosHeader::parse(program).with_context(not_pe)?;
    let mut table_at = u64::from(dos.nt_headers_offset());
    let nt_at = usize::try_from(table_at)?;
    let (nt, dirs) = ImageNtHeaders64::parse(program, &mut table_at).with_context(not_pe)?;
    if dirs
        .get(IMAGE_DIRECTORY_ENTRY_SECURITY)
        .is_some_and(|d| d.size.get(LE) != 0)
    {
        bail!(
            "{} is signed already: add its sections first, then sign it",
            what.display()
        );
    }
    let opt = nt.optional_header();
    let section_align = u64::from(opt.section_alignment.get(LE));
    let file_align = u64::from(opt.file_alignment.get(LE));
    // The PE format's bounds: anything else is a damaged or hostile header
    // that would have this pad the program without end.
    ensure!(
        file_align.is_power_of_two()
            && (512..=65536).contains(&file_align)
            && section_align.is_power_of_two()
            && section_align >= file_align
            && section_align <= 1 << 20,
        "{}'s alignments (file {file_align}, sections {section_align}) are not a PE program's",
        what.display()
    );
    let old = nt.sections(program, table_at).with_context(not_pe)?;
    let count = old.len() + sections.len();
    let table_end = table_at + u64::try_from(count * IMAGE_SIZEOF_SECTION_HEADER)?;
    // The headers end where the first section's bytes start.
    let first_bytes = old
        .iter()
        .filter(|s| s.size_of_raw_data.get(LE) != 0)
        .map(|s| u64::from(s.pointer_to_raw_data.get(LE)))
        .min()
        .unwrap_or(u64::MAX)
        .min(u64::from(opt.size_of_headers.get(LE)));
    ensure!(
        table_end <= first_bytes && table_end <= program.len() as u64,
        "{} has no room in its headers for {} more section(s)",
        what.display(),
        sections.len()
    );
    let mut next_va = old
        .iter()
        .map(|s| {
            let va = u64::from(s.virtual_address.get(LE));
            let len = u64::from(s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE)));
            align_up(va + len, section_align)
        })
        .max()
        .unwrap_or(section_align);

    let mut out = program.to_vec();
    let mut headers = Vec::new();
    let mut added_raw = 0u64;
    for (name, bytes) in sections {
        ensure!(
            name.len() <= 8,
            "the section name {name} is longer than 8 bytes"
        );
        out.resize(usize::try_from(align_up(out.len() as u64, file_align))?, 0);
        let raw_len = align_up(bytes.len() as u64, file_align);
        let mut header = ImageSectionHeader {
            name: [0; 8],
            virtual_size: U32::new(
                LE,
                u32::try_from(bytes.len()).context("a section of 4 GiB or more")?,
            ),
            virtual_address: U32::new(LE, u32::try_from(next_va).with_context(|| too_large(what))?),
            size_of_raw_data: U32::new(
                LE,
                u32::try_from(raw_len).with_context(|| too_large(what))?,
            ),
            pointer_to_raw_data: U32::new(
                LE,
                u32::try_from(out.len()).with_context(|| too_large(what))?,
            ),
            pointer_to_relocations: U32::new(LE, 0),
            pointer_to_linenumbers: U32::new(LE, 0),
            number_of_relocations: U16::new(LE, 0),
            number_of_linenumbers: U16::new(LE, 0),
            characteristics: U32::new(LE, IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ),
        };
        header.name[..name.len()].copy_from_slice(name.as_bytes());
        headers.push(header);
        out.extend_from_slice(bytes);
        out.resize(usize::try_from(align_up(out.len() as u64, file_align))?, 0);
        added_raw += raw_len;
        // An empty section still takes an address of its own.
        next_va = align_up(next_va + (bytes.len() as u64).max(1), section_align);
    }

    let table_at = usize::try_from(table_at)?;
    let new_table = table_at + old.len() * IMAGE_SIZEOF_SECTION_HEADER;
    out[new_table..new_table + headers.len() * IMAGE_SIZEOF_SECTION_HEADER]
        .copy_from_slice(pod::bytes_of_slice(&headers));
    let (nt, _) = pod::from_bytes_mut::<ImageNtHeaders64>(&mut out[nt_at..])
        .map_err(|()| anyhow::anyhow!("{}", not_pe()))?;
    nt.file_header
        .number_of_sections
        .set(LE, u16::try_from(count).context("too many sections")?);
    let opt = &mut nt.optional_header;
    opt.size_of_image
        .set(LE, u32::try_from(next_va).with_context(|| too_large(what))?);
    let initialized = u64::from(opt.size_of_initialized_data.get(LE)) + added_raw;
    opt.size_of_initialized_data.set(
        LE,
        u32::try_from(initialized).with_context(|| too_large(what))?,
    );
    // No firmware checks an EFI program's checksum; a stale one would be
    // wrong, a zero one says "none".
    opt.check_sum.set(LE, 0);
    Ok(out)
}

/// A section as the firmware loads it: name, address relative to the
/// image base, and size in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub address: u32,
    pub size: u32,
}

/// The sections of the EFI program `program` (read from `what`), in the
/// order of its section table.
pub fn sections(program: &[u8], what: &Path) -> Result<Vec<Section>> {
    let not_pe = || format!("{} is not a 64-bit EFI program", what.display());
    let dos = ImageDosHeader::parse(program).with_context(not_pe)?;
    let mut table_at = u64::from(dos.nt_headers_offset());
    let (nt, _) = ImageNtHeaders64::parse(program, &mut table_at).with_context(not_pe)?;
    let table = nt.sections(program, table_at).with_context(not_pe)?;
    Ok(table
        .iter()
        .map(|s| Section {
            name: String::from_utf8_lossy(s.raw_name()).into_owned(),
            address: s.virtual_address.get(LE),
            size: s.virtual_size.get(LE),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::pe::PeFile64;
    use object::{Object, ObjectSection};

    /// The smallest PE32+ image with the sections given (name, virtual
    /// size, raw size): what a linker lays out, with room for more headers.
    fn program(sections: &[(&str, u32, u32)]) -> Vec<u8> {
        let mut data = vec![0u8; 0x400];
        data[0..2].copy_from_slice(b"MZ");
        data[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        data[0x80..0x84].copy_from_slice(b"PE\0\0");
        let fh = 0x84;
        data[fh..fh + 2].copy_from_slice(&0xaa64u16.to_le_bytes());
        data[fh + 2..fh + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        data[fh + 16..fh + 18].copy_from_slice(&240u16.to_le_bytes());
        data[fh + 18..fh + 20].copy_from_slice(&0x22u16.to_le_bytes());
        let oh = fh + 20;
        data[oh..oh + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        data[oh + 32..oh + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        data[oh + 36..oh + 40].copy_from_slice(&0x200u32.to_le_bytes());
        data[oh + 60..oh + 64].copy_from_slice(&0x400u32.to_le_bytes());
        data[oh + 68..oh + 70].copy_from_slice(&10u16.to_le_bytes());
        data[oh + 108..oh + 112].copy_from_slice(&16u32.to_le_bytes());
        let mut va = 0x1000u32;
        let mut at = 0x400u32;
        let mut table = oh + 240;
        let mut bodies = Vec::new();
        for (name, vsize, raw) in sections {
            data[table..table + name.len()].copy_from_slice(name.as_bytes());
            data[table + 8..table + 12].copy_from_slice(&vsize.to_le_bytes());
            data[table + 12..table + 16].copy_from_slice(&va.to_le_bytes());
            data[table + 16..table + 20].copy_from_slice(&raw.to_le_bytes());
            let ptr = if *raw == 0 { 0 } else { at };
            data[table + 20..table + 24].copy_from_slice(&ptr.to_le_bytes());
            bodies.extend(std::iter::repeat_n(0x5au8, *raw as usize));
            at += raw;
            va += vsize.max(raw).div_ceil(0x1000) * 0x1000;
            table += 40;
        }
        data[oh + 56..oh + 60].copy_from_slice(&va.to_le_bytes());
        data.extend(bodies);
        data
    }

    #[test]
    fn added_sections_follow_and_a_section_without_file_bytes_stays() {
        let before = program(&[
            (".text", 0x1800, 0x1800),
            (".data", 0x24, 0),
            (".reloc", 0x10, 0x200),
        ]);
        let after = add_sections(
            &before,
            Path::new("stage.efi"),
            &[(".keyring", b"keys"), (".linux", &[7u8; 0x1234])],
        )
        .unwrap();
        let pe = PeFile64::parse(&*after).unwrap();
        let names: Vec<_> = pe
            .sections()
            .map(|s| s.name().unwrap().to_string())
            .collect();
        assert_eq!(names, [".text", ".data", ".reloc", ".keyring", ".linux"]);
        let data = pe.section_by_name(".data").unwrap();
        assert_eq!(data.address() - pe.relative_address_base(), 0x3000);
        let keyring = pe.section_by_name(".keyring").unwrap();
        assert_eq!(keyring.address() - pe.relative_address_base(), 0x5000);
        assert_eq!(&keyring.data().unwrap()[..4], b"keys");
        let linux = pe.section_by_name(".linux").unwrap();
        assert_eq!(linux.address() - pe.relative_address_base(), 0x6000);
        assert_eq!(linux.size(), 0x1234);
        assert_eq!(
            pe.nt_headers().optional_header.size_of_image.get(LE),
            0x8000
        );
        assert_eq!(
            &after[..before.len()][0x400..],
            &before[0x400..],
            "nothing the program had moves"
        );
    }

    #[test]
    fn signed_programs_long_names_and_full_headers_are_refused() {
        let mut signed = program(&[(".text", 0x200, 0x200)]);
        // The security directory, the fifth (0x84 + 20 + 112 + 4 * 8): the
        // file offset of the signature and its size.
        let dir = 0x84 + 20 + 112 + 32;
        signed[dir..dir + 4].copy_from_slice(&0x600u32.to_le_bytes());
        signed[dir + 4..dir + 8].copy_from_slice(&8u32.to_le_bytes());
        let e = add_sections(&signed, Path::new("s.efi"), &[(".keyring", b"k")]).unwrap_err();
        assert!(e.to_string().contains("signed already"), "{e}");
        let plain = program(&[(".text", 0x200, 0x200)]);
        let e = add_sections(&plain, Path::new("s.efi"), &[(".toolongname", b"k")]).unwrap_err();
        assert!(e.to_string().contains("longer than 8 bytes"), "{e}");
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| (".x", &b"k"[..])).collect();
        let e = add_sections(&plain, Path::new("s.efi"), &many).unwrap_err();
        assert!(e.to_string().contains("no room in its headers"), "{e}");
        assert!(add_sections(b"MZ nonsense", Path::new("s.efi"), &[]).is_err());
    }
}
