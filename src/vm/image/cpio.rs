//! A minimal writer for the "newc" cpio format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;

pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl Default for CpioWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter { out: Vec::new(), ino: 1 }
    }

    fn pad4(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields =
            [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    /// Names are file names: not empty, no NUL (newc ends them with one).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // Round the archive up to 512 bytes like cpio(1) does.
        while self.out.len() % 512 != 0 {
            self.out.push(0);
        }
        self.out
    }
}

/// One entry read back by [`parse`].
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// A strict newc reader, to check what the writer produces (tests and the
/// fuzz target): every entry up to the trailer, then only zero padding.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse(archive: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let align = |o: usize| o.next_multiple_of(4);
    loop {
        let header = archive.get(off..off + 110).ok_or(format!("truncated header at {off}"))?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at {off}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).map_err(|_| "field not ASCII")?;
            if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("field {i} is not hex: {text:?}"));
            }
            u32::from_str_radix(text, 16).map_err(|e| e.to_string())
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let rdev = (field(9)?, field(10)?);
        // The name's NUL is counted: 1 would be an empty name.
        if namesize < 2 {
            return Err(format!("empty name at {off}"));
        }
        let name = archive.get(off + 110..off + 110 + namesize).ok_or("truncated name")?;
        let (name, nul) = name.split_at(namesize - 1);
        if nul != [0] || name.contains(&0) {
            return Err(format!("name at {off} is not NUL-terminated"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| "name not UTF-8")?;
        let data_at = align(off + 110 + namesize);
        let data = archive.get(data_at..data_at + size).ok_or(format!("data of {name:?} past the end"))?;
        off = align(data_at + size);
        if name == "TRAILER!!!" {
            let rest = archive.get(off.min(archive.len())..).unwrap_or(&[]);
            if rest.iter().any(|&b| b != 0) {
                return Err("bytes after the trailer".into());
            }
            return Ok(out);
        }
        out.push(Entry { name, mode, rdev, data: data.to_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_alignment() {
        let mut w = CpioWriter::new();
        w.dir("dev");
        w.char_dev("dev/console", 0o600, 5, 1);
        w.file("init", 0o755, b"\x7fELF123");
        w.file("a/b", 0o644, b"");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 512, 0);
        let e = parse(&bytes).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].name.as_str(), e[0].mode), ("dev", S_IFDIR | 0o755));
        assert_eq!((e[1].name.as_str(), e[1].mode, e[1].rdev), ("dev/console", S_IFCHR | 0o600, (5, 1)));
        assert_eq!(
            (e[2].name.as_str(), e[2].mode, e[2].data.as_slice()),
            ("init", S_IFREG | 0o755, &b"\x7fELF123"[..])
        );
        assert_eq!(e[3].data.len(), 0);
    }

    #[test]
    fn device_numbers_are_in_the_rdev_fields() {
        let mut w = CpioWriter::new();
        w.char_dev("dev/console", 0o600, 5, 1);
        let b = w.finish();
        assert_eq!(&b[6 + 9 * 8..6 + 11 * 8], b"0000000500000001");
    }

    #[test]
    fn the_reader_refuses_broken_archives() {
        let mut w = CpioWriter::new();
        w.file("init", 0o755, b"data");
        let good = w.finish();
        assert!(parse(&good).is_ok());
        assert!(parse(&good[..50]).is_err(), "truncated");
        let mut bad = good.clone();
        bad[0] = b'1';
        assert!(parse(&bad).is_err(), "magic");
        let mut bad = good.clone();
        bad[6 + 6 * 8] = b'z';
        assert!(parse(&bad).is_err(), "a field that is not hex");
        let mut bad = good.clone();
        bad[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"ffffffff");
        assert!(parse(&bad).is_err(), "a size past the end");
    }
}
