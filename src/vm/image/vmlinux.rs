//! The uncompressed kernel inside a bzImage, for booting through its PVH
//! entry.
//!
//! A bzImage decompresses itself inside the guest, before the kernel
//! proper starts. amphi instead unpacks the ELF vmlinux from the bzImage on
//! the host, once, caches it (like the initramfs: by the bzImage's content,
//! with a stat stamp so that an unchanged file is not read again), and boots
//! it directly through the PVH entry the kernel advertises in an ELF note.
//! The guest then skips its decompression stage entirely. Compressions the
//! host cannot undo here (gzip, bzip2, lzma, lzo) leave the bzImage as it is.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;

/// bzImage setup header fields (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: std::ops::Range<usize> = 0x202..0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

/// The kernel's legacy LZ4 framing: a magic word, then blocks of at most
/// 8 MiB, each preceded by its compressed length.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point note.
const PVH_NOTE: u32 = 18;

/// The compressed payload of a bzImage, or `None` for anything else.
pub fn payload(image: &[u8]) -> Option<&[u8]> {
    if image.len() < 0x250 || image[HEADER_MAGIC] != *b"HdrS" {
        return None;
    }
    let setup = match image[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
    let start = (setup + 1) * 512 + word(PAYLOAD_OFFSET);
    image.get(start..start.checked_add(word(PAYLOAD_LENGTH))?)
}

/// Decompresses a payload whose format this build understands.
pub fn decompress(payload: &[u8]) -> Option<Vec<u8>> {
    let magic = payload.get(..6)?;
    let out = if u32::from_le_bytes(magic[..4].try_into().ok()?) == LZ4_LEGACY_MAGIC {
        lz4_legacy(payload)?
    } else if magic[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        let mut out = Vec::new();
        let mut dec = ruzstd::decoding::StreamingDecoder::new(payload).ok()?;
        std::io::Read::read_to_end(&mut dec, &mut out).ok()?;
        out
    } else if magic == [0xfd, b'7', b'z', b'X', b'Z', 0] {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(payload), &mut out).ok()?;
        out
    } else {
        return None;
    };
    out.starts_with(b"\x7fELF").then_some(out)
}

fn lz4_legacy(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 4;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    // The bzImage appends the uncompressed size (4 bytes) after the stream.
    while at + 4 < data.len() {
        let n = u32::from_le_bytes(data[at..at + 4].try_into().ok()?) as usize;
        at += 4;
        if n as u32 == LZ4_LEGACY_MAGIC {
            continue;
        }
        let chunk = data.get(at..at.checked_add(n)?)?;
        let len = lz4_flex::block::decompress_into(chunk, &mut block).ok()?;
        out.extend_from_slice(&block[..len]);
        at += n;
    }
    Some(out)
}

/// Whether an ELF kernel has a PVH entry note.
pub fn has_pvh_entry(elf: &[u8]) -> bool {
    if elf.len() < 64 || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    let (Some(phoff), phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    (0..phnum).any(|i| {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != Some(4) {
            return false; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else { return false };
        let mut n = off;
        while n + 12 <= off + size {
            let (Some(namesz), Some(descsz), Some(typ)) = (u32_at(n), u32_at(n + 4), u32_at(n + 8)) else {
                return false;
            };
            if typ == PVH_NOTE && elf.get(n + 12..n + 15) == Some(b"Xen") {
                return true;
            }
            n += 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        }
        false
    })
}

/// The kernel to boot for `kernel`: an uncompressed, PVH-capable vmlinux
/// from the cache when `kernel` is a bzImage whose payload amphi can
/// unpack, else `None` (boot `kernel` as it is).
pub fn uncompressed(
    kernel: &Path,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>, ImageError> {
    let stamp_path = cache_dir.join(format!("stamp-vmlinux-{}.json", super::stamp::path_key(kernel)));
    if let Some((path, _)) = super::initramfs::stamp_hit(&stamp_path, cache_dir) {
        return Ok(Some(path));
    }
    let image = std::fs::read(kernel).map_err(|source| ImageError::Kernel { path: kernel.into(), source })?;
    let Some(payload) = payload(&image) else { return Ok(None) };
    let digest = Sha256::digest(&image);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("vmlinux-{hex}.elf"));
    if !path.is_file() {
        progress(&format!("unpacking the kernel from {} for a direct (PVH) boot", kernel.display()));
        let Some(elf) = decompress(payload).filter(|e| has_pvh_entry(e)) else { return Ok(None) };
        super::initramfs::write_cached(cache_dir, &path, &elf)?;
    }
    super::initramfs::write_stamp(&stamp_path, &path, &[kernel], &[]);
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE holding the PVH entry note.
    fn pvh_elf(with_note: bool) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let note_off = 64 + 56;
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&(note_off as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&20u64.to_le_bytes());
        e.extend_from_slice(&ph);
        let typ: u32 = if with_note { PVH_NOTE } else { 1 };
        for w in [4u32, 4, typ] {
            e.extend_from_slice(&w.to_le_bytes());
        }
        e.extend_from_slice(b"Xen\0");
        e.extend_from_slice(&0x100_0000u32.to_le_bytes());
        e
    }

    /// A fake bzImage around `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[SETUP_SECTS] = 4;
        img[HEADER_MAGIC].copy_from_slice(b"HdrS");
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img
    }

    fn lz4_legacy_stream(data: &[u8]) -> Vec<u8> {
        let mut s = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(c.len() as u32).to_le_bytes());
            s.extend_from_slice(&c);
        }
        s.extend_from_slice(&(data.len() as u32).to_le_bytes());
        s
    }

    #[test]
    fn finds_the_pvh_note() {
        assert!(has_pvh_entry(&pvh_elf(true)));
        assert!(!has_pvh_entry(&pvh_elf(false)));
        assert!(!has_pvh_entry(b"\x7fELF"));
    }

    #[test]
    fn unpacks_lz4_legacy_and_xz_payloads() {
        let elf = pvh_elf(true);
        let img = bzimage(&lz4_legacy_stream(&elf));
        assert_eq!(decompress(payload(&img).unwrap()).unwrap(), elf);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut xz).unwrap();
        assert_eq!(decompress(payload(&bzimage(&xz)).unwrap()).unwrap(), elf);
        assert!(decompress(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).is_none(), "gzip is left to the guest");
        assert!(payload(b"not a kernel").is_none());
    }

    #[test]
    fn caches_the_vmlinux_and_skips_reading_an_unchanged_bzimage() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinuz");
        std::fs::write(&k, bzimage(&lz4_legacy_stream(&pvh_elf(true)))).unwrap();
        let cache = d.path().join("cache");
        let mut said = Vec::new();
        let first = uncompressed(&k, &cache, &mut |m| said.push(m.to_string())).unwrap().unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), pvh_elf(true));
        assert_eq!(said.len(), 1);
        let again = uncompressed(&k, &cache, &mut |_| panic!("no work for a cache hit")).unwrap().unwrap();
        assert_eq!(first, again);
        // Without a PVH note the bzImage boots as it is.
        let k2 = d.path().join("vmlinuz2");
        std::fs::write(&k2, bzimage(&lz4_legacy_stream(&pvh_elf(false)))).unwrap();
        assert!(uncompressed(&k2, &cache, &mut |_| {}).unwrap().is_none());
    }
}
