//! Container ids: the names clients give containers. An id becomes a
//! directory name under `--root` and part of cgroup paths, so anything that
//! could escape a directory or confuse a path is refused.

use std::fmt;

/// The longest id accepted (runc and containerd use 64-character hex ids;
/// this leaves room for human names without risking NAME_MAX).
pub const MAX_ID_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("container id is empty: give a name such as \"web1\"")]
    Empty,
    #[error("container id is {0} characters long: use at most {MAX_ID_LEN}")]
    TooLong(usize),
    #[error(
        "invalid container id {0:?}: use only letters, digits, '_', '+', '-' and '.', \
         and do not use \".\" or \"..\""
    )]
    Invalid(String),
}

/// A validated container id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(id.len()));
        }
        // The same character set runc accepts: safe as a file name and in a
        // cgroup path, no separators, no traversal.
        let ok = id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
        if !ok || id == "." || id == ".." {
            return Err(IdError::Invalid(id.to_string()));
        }
        Ok(ContainerId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_style_ids() {
        for id in ["a", "web-1", "c_2.test+x", &"f".repeat(64)] {
            assert_eq!(ContainerId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_paths_and_oddities() {
        assert_eq!(ContainerId::new(""), Err(IdError::Empty));
        for bad in ["a/b", "..", ".", "../x", "a b", "a\0b", "é", "/abs"] {
            assert!(matches!(ContainerId::new(bad), Err(IdError::Invalid(_))), "{bad:?}");
        }
        assert_eq!(ContainerId::new(&"x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong(MAX_ID_LEN + 1)));
    }
}
