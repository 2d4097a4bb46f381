//! The guest image's parsers and writer: a kernel module's `.modinfo`
//! (any bytes as an ELF file), and newc cpio: any bytes through the strict
//! newc reader, and archives the writer builds from the input, which must
//! read back entry for entry.

use std::path::Path;

use super::Input;
use crate::vm::image::cpio::{self, CpioWriter};
use crate::vm::image::modules;

pub fn modinfo(data: &[u8]) {
    if let Ok(deps) = modules::depends(Path::new("fuzz.ko"), data) {
        for d in deps {
            assert!(!d.is_empty() && !d.contains('-'), "dependency {d:?}");
        }
    }
}

pub fn cpio(data: &[u8]) {
    // The reader on raw bytes: an error or entries, never a panic; what it
    // accepts is made of entries the writer would write the same way.
    if let Ok(entries) = cpio::parse(data) {
        for e in &entries {
            assert!(!e.name.is_empty() && !e.name.contains('\0'), "entry name {:?}", e.name);
        }
    }
    let mut input = Input::new(data);
    let mut w = CpioWriter::new();
    let mut want = Vec::new();
    while !input.is_empty() && want.len() < 64 {
        let kind = input.u8() % 3;
        let name_len = usize::from(input.u8() % 64) + 1;
        // Names come from file names and constants: no NUL, never empty.
        let name: String =
            String::from_utf8_lossy(input.bytes(name_len)).chars().map(|c| if c == '\0' { '_' } else { c }).collect();
        if name.is_empty() || name == "TRAILER!!!" {
            continue;
        }
        let perm = u32::from(input.u16()) & 0o7777;
        match kind {
            0 => {
                w.dir(&name);
                want.push(cpio::Entry { name, mode: cpio::S_IFDIR | 0o755, rdev: (0, 0), data: Vec::new() });
            }
            1 => {
                let len = usize::from(input.u16() % 2048);
                let data = input.bytes(len).to_vec();
                w.file(&name, perm, &data);
                want.push(cpio::Entry { name, mode: cpio::S_IFREG | perm, rdev: (0, 0), data });
            }
            _ => {
                let (major, minor) = (input.u32(), input.u32());
                w.char_dev(&name, perm, major, minor);
                want.push(cpio::Entry { name, mode: cpio::S_IFCHR | perm, rdev: (major, minor), data: Vec::new() });
            }
        }
    }
    let archive = w.finish();
    assert_eq!(archive.len() % 512, 0);
    let got = cpio::parse(&archive).expect("the writer's archive reads back");
    assert_eq!(got, want);
}
