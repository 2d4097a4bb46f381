//! A minimal writer for the "newc" cpio format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses newc entries back: (name, mode, data).
    pub fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let base = b.as_ptr() as usize;
        loop {
            assert_eq!(&b[..6], b"070701");
            let field =
                |i: usize| u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let mut off = 110 + namesize;
            off += (4 - ((b.as_ptr() as usize - base + off) % 4)) % 4;
            let data = b[off..off + size].to_vec();
            off += size;
            off += (4 - ((b.as_ptr() as usize - base + off) % 4)) % 4;
            b = &b[off..];
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn entries_round_trip_with_alignment() {
        let mut w = CpioWriter::new();
        w.dir("dev");
        w.char_dev("dev/console", 0o600, 5, 1);
        w.file("init", 0o755, b"\x7fELF123");
        w.file("a/b", 0o644, b"");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 512, 0);
        let e = parse(&bytes);
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].0.as_str(), e[0].1), ("dev", S_IFDIR | 0o755));
        assert_eq!((e[1].0.as_str(), e[1].1), ("dev/console", S_IFCHR | 0o600));
        assert_eq!((e[2].0.as_str(), e[2].1, e[2].2.as_slice()), ("init", S_IFREG | 0o755, &b"\x7fELF123"[..]));
        assert_eq!(e[3].2.len(), 0);
    }

    #[test]
    fn device_numbers_are_in_the_rdev_fields() {
        let mut w = CpioWriter::new();
        w.char_dev("dev/console", 0o600, 5, 1);
        let b = w.finish();
        assert_eq!(&b[6 + 9 * 8..6 + 11 * 8], b"0000000500000001");
    }
}
