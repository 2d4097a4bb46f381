//! The console log file with a size cap: a guest can print without end
//! (every byte it writes to the UART lands here), and the VMM must not
//! fill the host's disk on its behalf (DEVELOPERS.md rule 9).
//!
//! The file keeps the first `head` bytes (the boot), then one marker line,
//! then the latest output: the tail grows to `2 * tail` bytes, and is then
//! cut back to its last `tail` bytes (starting at a line boundary when
//! there is one near), moved up behind the marker. So the file never
//! exceeds `head + marker + 2 * tail` bytes, always ends with what the
//! guest printed last (what a failure report quotes), and the cost is
//! one extra copy of each byte past the head. Nothing is kept in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What the VMM keeps of a guest console by default: 256 KiB from the
/// start and between 256 and 512 KiB of the latest output.
pub const DEFAULT_HEAD: u64 = 256 * 1024;
pub const DEFAULT_TAIL: u64 = 256 * 1024;
// The default log stays under 1 MiB.
const _: () = assert!(DEFAULT_HEAD + CUT_MARKER.len() as u64 + 2 * DEFAULT_TAIL < 1 << 20);

/// The line between the head and the tail once output was cut.
pub const CUT_MARKER: &str = "\n[amphi: console output cut here: the log keeps its first part and the latest output]\n";

/// How far into a cut tail a line boundary is looked for.
const LINE_SEARCH: usize = 4096;
const COPY_CHUNK: usize = 64 * 1024;

pub struct CappedLog {
    file: File,
    head: u64,
    tail: u64,
    /// Where the next byte goes (the file's length).
    len: u64,
    /// Where the tail starts, once the head is full and the marker written.
    tail_start: Option<u64>,
    /// Bytes the guest printed that the file no longer holds.
    dropped: u64,
}

impl CappedLog {
    /// Creates (truncates) `path`. It is opened for reading too: cutting
    /// the tail back reads it.
    pub fn create(path: &Path, head: u64, tail: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(Self::new(file, head, tail))
    }

    /// `file` must be empty and open for reading and writing.
    pub fn new(file: File, head: u64, tail: u64) -> Self {
        CappedLog { file, head, tail: tail.max(1), len: 0, tail_start: None, dropped: 0 }
    }

    /// Bytes of guest output no longer in the file.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.len)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Moves the last `tail` bytes up to `tail_start` and truncates.
    fn compact(&mut self, tail_start: u64) -> io::Result<()> {
        let mut from = self.len - self.tail;
        // Start the kept tail on a line of its own when one starts close by.
        let mut probe = vec![0u8; LINE_SEARCH.min(self.tail as usize)];
        self.file.read_exact_at(&mut probe, from)?;
        if let Some(nl) = probe.iter().position(|&b| b == b'\n') {
            from += nl as u64 + 1;
        }
        let keep = self.len - from;
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut done = 0;
        // Copying forwards is safe: the destination is always below the source.
        while done < keep {
            let n = (keep - done).min(COPY_CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], from + done)?;
            self.file.write_all_at(&buf[..n], tail_start + done)?;
            done += n as u64;
        }
        self.dropped += from - tail_start;
        self.len = tail_start + keep;
        self.file.set_len(self.len)
    }

    fn write_bytes(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if self.tail_start.is_none() {
            let room = self.head.saturating_sub(self.len);
            let n = (buf.len() as u64).min(room) as usize;
            self.append(&buf[..n])?;
            buf = &buf[n..];
            if buf.is_empty() {
                return Ok(());
            }
            self.append(CUT_MARKER.as_bytes())?;
            self.tail_start = Some(self.len);
        }
        let Some(tail_start) = self.tail_start else { return Ok(()) };
        self.append(buf)?;
        if self.len - tail_start > 2 * self.tail {
            self.compact(tail_start)?;
        }
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(head: u64, tail: u64) -> (CappedLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (CappedLog::create(&dir.path().join("console.log"), head, tail).unwrap(), dir)
    }

    fn contents(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("console.log")).unwrap()
    }

    #[test]
    fn output_under_the_head_is_kept_as_is() {
        let (mut l, dir) = log(1024, 512);
        l.write_all(b"[    0.0] Linux version\nhello\n").unwrap();
        assert_eq!(contents(&dir), b"[    0.0] Linux version\nhello\n");
        assert_eq!(l.dropped(), 0);
    }

    /// A guest flooding its console byte by byte, as the UART delivers
    /// it: the file stays under its cap, starts with the first output and
    /// ends with the last.
    #[test]
    fn a_flood_keeps_the_head_a_marker_and_the_latest_output() {
        let (mut l, dir) = log(1000, 500);
        let mut printed = 0u64;
        for i in 0..20_000u32 {
            for b in format!("line {i}\n").bytes() {
                l.write_all(&[b]).unwrap();
                printed += 1;
            }
            let len = std::fs::metadata(dir.path().join("console.log")).unwrap().len();
            assert!(len <= 1000 + CUT_MARKER.len() as u64 + 2 * 500, "{len} bytes");
        }
        let text = String::from_utf8(contents(&dir)).unwrap();
        assert!(text.starts_with("line 0\nline 1\n"));
        assert!(text.ends_with("line 19999\n"));
        let (head, tail) = text.split_once(CUT_MARKER).unwrap();
        assert_eq!(head.len(), 1000);
        assert!(tail.len() >= 500 - 12 && tail.len() <= 1000, "{}", tail.len());
        assert!(tail.starts_with("line "), "the tail starts on a line of its own: {:?}", &tail[..20]);
        assert_eq!(printed, text.len() as u64 + l.dropped() - CUT_MARKER.len() as u64);
    }

    /// An endless line with no newline at all.
    #[test]
    fn a_flood_without_newlines_stays_capped() {
        let (mut l, dir) = log(4096, 4096);
        let chunk = [b'x'; 1000];
        for _ in 0..10_000 {
            l.write_all(&chunk).unwrap();
        }
        let len = contents(&dir).len() as u64;
        assert!(len <= 4096 + CUT_MARKER.len() as u64 + 2 * 4096, "{len}");
        assert_eq!(l.dropped() + len - CUT_MARKER.len() as u64, 10_000_000);
    }
}
