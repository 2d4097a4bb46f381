//! Stat stamps: a small JSON file recording how the input files of a cached
//! result looked (device, inode, size, mtime) when the result was made, so
//! a later request whose inputs are unchanged skips reading, decompressing
//! or hashing them again. A stamp only ever saves work: a missing, stale or
//! unreadable one means the inputs are read again, never a wrong answer
//! (short of a file rewritten in place with the same size and mtime).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file's identity as stat(2) sees it: (dev, ino, size, mtime in ns).
pub(crate) type FileStamp = (u64, u64, i64, i64);

/// The stamp of `p`, or `None` if it cannot be stat'ed.
pub(crate) fn file_stamp(p: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.size() as i64, m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// A short key for one input path (names the stamp of a single file).
pub(crate) fn path_key(p: &Path) -> String {
    Sha256::digest(p.as_os_str().as_encoded_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What a stamp file holds: the caller's value beside the input files'
/// stamps (flattened, so a stamp reads as one JSON object).
#[derive(Serialize, Deserialize)]
struct Stamped<T> {
    #[serde(flatten)]
    value: T,
    files: Vec<(PathBuf, FileStamp)>,
}

/// The value recorded in `stamp`, if every input file it names is
/// unchanged since.
pub(crate) fn read<T: DeserializeOwned>(stamp: &Path) -> Option<T> {
    let s: Stamped<T> = serde_json::from_slice(&std::fs::read(stamp).ok()?).ok()?;
    s.files.iter().all(|(p, st)| file_stamp(p).as_ref() == Some(st)).then_some(s.value)
}

/// Records `value` as made from `inputs` as they are now (best effort:
/// without a stamp, the next request just reads the inputs again).
pub(crate) fn write<T: Serialize>(stamp: &Path, value: &T, inputs: &[&Path]) {
    let files: Option<Vec<_>> = inputs.iter().map(|p| file_stamp(p).map(|st| (p.to_path_buf(), st))).collect();
    let Some(files) = files else { return };
    write_stamped(stamp, &Stamped { value, files });
}

fn write_stamped<T: Serialize>(stamp: &Path, s: &Stamped<T>) {
    if let Ok(bytes) = serde_json::to_vec(s) {
        let tmp = stamp.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, stamp)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ContentHash {
    sha256: String,
}

/// The sha256 (hex) of `file`'s content, read and hashed only when the
/// file changed since the last call (the stamp lives in `stamp_dir`).
pub(crate) fn content_hash(file: &Path, stamp_dir: &Path) -> std::io::Result<String> {
    let stamp = stamp_dir.join(format!("stamp-sha256-{}.json", path_key(file)));
    if let Some(h) = read::<ContentHash>(&stamp) {
        return Ok(h.sha256);
    }
    let before = file_stamp(file);
    let mut f = std::fs::File::open(file)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sha256: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // A file that changed while it was read gets no stamp: the hash may mix
    // two versions, and the next call must not trust it.
    if let Some(st) = before.filter(|st| file_stamp(file).as_ref() == Some(st)) {
        write_stamped(
            &stamp,
            &Stamped { value: ContentHash { sha256: sha256.clone() }, files: vec![(file.into(), st)] },
        );
    }
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct V {
        n: u32,
    }

    #[test]
    fn a_stamp_hits_until_an_input_changes() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in");
        let stamp = d.path().join("stamp.json");
        std::fs::write(&input, b"one").unwrap();
        assert_eq!(read::<V>(&stamp), None, "no stamp yet");
        write(&stamp, &V { n: 7 }, &[&input]);
        assert_eq!(read::<V>(&stamp), Some(V { n: 7 }));
        std::fs::write(&input, b"three").unwrap();
        assert_eq!(read::<V>(&stamp), None, "a changed input misses");
        write(&stamp, &V { n: 8 }, &[&input, &d.path().join("missing")]);
        assert_eq!(read::<V>(&stamp), None, "no stamp is written for a missing input");
    }

    #[test]
    fn content_hashes_are_reused_while_the_file_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("kernel");
        std::fs::write(&f, b"abc").unwrap();
        let h = content_hash(&f, d.path()).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // A stamp hit answers without reading the file: prove it by making
        // the stamp say something else for the same, unchanged file.
        let stamp = d.path().join(format!("stamp-sha256-{}.json", path_key(&f)));
        let text = std::fs::read_to_string(&stamp).unwrap().replace(&h, "cafe");
        std::fs::write(&stamp, text).unwrap();
        assert_eq!(content_hash(&f, d.path()).unwrap(), "cafe");
        std::fs::write(&f, b"abcd").unwrap();
        assert_ne!(content_hash(&f, d.path()).unwrap(), "cafe", "a changed file is hashed again");
        assert!(content_hash(&d.path().join("missing"), d.path()).is_err());
    }
}
