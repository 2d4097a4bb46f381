//! The five capability sets of the container process.
//!
//! Order matters and follows runc: drop the bounding set while we still
//! hold CAP_SETPCAP, switch user with PR_SET_KEEPCAPS so permitted survives,
//! then set effective, permitted and inheritable in one capset(2) (setting
//! them one by one can fail when effective would exceed permitted), then
//! raise the ambient set.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability};
use oci_spec::runtime::{Capability as SpecCap, LinuxCapabilities};

use super::LinuxError;

/// The resolved sets, restricted to what the running kernel knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: HashSet<Capability>,
    pub effective: HashSet<Capability>,
    pub inheritable: HashSet<Capability>,
    pub permitted: HashSet<Capability>,
    pub ambient: HashSet<Capability>,
    /// Names this kernel does not support (dropped, reported in debug logs).
    pub unsupported: Vec<String>,
}

fn convert(
    list: &Option<HashSet<SpecCap>>,
    supported: &HashSet<Capability>,
    unsupported: &mut Vec<String>,
) -> Result<HashSet<Capability>, LinuxError> {
    let mut out = HashSet::new();
    for c in list.iter().flatten() {
        // oci-spec and caps spell capabilities the same way ("CAP_X").
        let name = serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match Capability::from_str(&name) {
            Ok(cap) if supported.contains(&cap) => {
                out.insert(cap);
            }
            _ => {
                if !unsupported.contains(&name) {
                    unsupported.push(name);
                }
            }
        }
    }
    Ok(out)
}

impl CapSets {
    pub fn from_spec(c: &LinuxCapabilities, supported: &HashSet<Capability>) -> Result<CapSets, LinuxError> {
        let mut unsupported = Vec::new();
        Ok(CapSets {
            bounding: convert(c.bounding(), supported, &mut unsupported)?,
            effective: convert(c.effective(), supported, &mut unsupported)?,
            inheritable: convert(c.inheritable(), supported, &mut unsupported)?,
            permitted: convert(c.permitted(), supported, &mut unsupported)?,
            ambient: convert(c.ambient(), supported, &mut unsupported)?,
            unsupported,
        })
    }
}

/// Removes from the bounding set everything not listed.
pub fn drop_bounding(sets: &CapSets) -> Result<(), LinuxError> {
    for cap in caps::runtime::thread_all_supported() {
        if !sets.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| LinuxError::Config(format!("cannot drop {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

fn mask(set: &HashSet<Capability>) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Sets effective, permitted and inheritable in one call, then ambient.
pub fn apply(sets: &CapSets) -> Result<(), LinuxError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let (e, p, i) = (mask(&sets.effective), mask(&sets.permitted), mask(&sets.inheritable));
    let header = Header { version: 0x2008_0522, pid: 0 };
    let data = [
        Data { effective: e as u32, permitted: p as u32, inheritable: i as u32 },
        Data { effective: (e >> 32) as u32, permitted: (p >> 32) as u32, inheritable: (i >> 32) as u32 },
    ];
    // SAFETY: a version-3 header and the two data words it requires, both
    // alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r < 0 {
        return Err(LinuxError::sys(
            "cannot set the effective/permitted/inheritable capabilities: effective must be a subset \
             of permitted",
            nix::errno::Errno::last(),
        ));
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| LinuxError::Config(format!("cannot clear the ambient capabilities: {e}")))?;
    for cap in &sets.ambient {
        // Ambient needs the capability in permitted and inheritable; runc
        // skips those that are not, with a warning, and so do we.
        if sets.permitted.contains(cap) && sets.inheritable.contains(cap) {
            caps::raise(None, CapSet::Ambient, *cap)
                .map_err(|e| LinuxError::Config(format!("cannot raise ambient {cap}: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_names_and_drops_unsupported_ones() {
        let spec: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],"ambient":["CAP_CHOWN"]}"#,
        )
        .unwrap();
        let supported: HashSet<Capability> = [Capability::CAP_KILL].into_iter().collect();
        let s = CapSets::from_spec(&spec, &supported).unwrap();
        assert_eq!(s.bounding, [Capability::CAP_KILL].into_iter().collect());
        assert_eq!(s.effective.len(), 1);
        assert!(s.ambient.is_empty());
        assert_eq!(s.unsupported, vec!["CAP_CHOWN".to_string()]);
    }

    #[test]
    fn masks_use_kernel_bit_numbers() {
        let set: HashSet<Capability> = [Capability::CAP_CHOWN, Capability::CAP_KILL].into_iter().collect();
        assert_eq!(mask(&set), (1 << 0) | (1 << 5));
    }
}
