//! Network interfaces through rtnetlink: what a network namespace holds
//! (links, addresses, routes: [`scan`]) and the changes VM isolation makes
//! ([`config`]): on the host, a tc redirect that joins the interface an
//! engine or CNI made to the VM's TAP; in the guest, the same addresses,
//! routes and MTU on the guest's interface.
//!
//! Every call works on the calling thread's network namespace;
//! [`in_namespace`] runs a closure on a thread of its own inside another
//! one, so the caller's namespace never changes.

pub mod config;
pub mod netlink;
pub mod scan;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the network namespace {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no interface with the MAC address {mac} appeared in {waited_ms} ms")]
    NoInterface { mac: Mac, waited_ms: u64 },
}

/// An Ethernet address, written `02:00:00:00:00:01` (also in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Six two-digit hex bytes separated by ':'.
    pub fn parse(s: &str) -> Option<Mac> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(mac))
    }

    /// A station's address: not multicast (the first byte even).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Mac::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a MAC address")))
    }
}

/// An address with its prefix length, written `10.88.0.2/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// An interface as [`scan`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The kernel's index, in the namespace it was found in.
    pub index: u32,
    pub name: String,
    /// The rtnetlink kind ("veth", "tun", "bridge", ...), if it has one.
    pub kind: Option<String>,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
    /// Global and site addresses (link-local IPv6 addresses come from the
    /// MAC address, so they are not carried over).
    pub addresses: Vec<IpNet>,
}

/// A route of the main table through one of the interfaces of the same
/// list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// Position of the interface in the list the route came with.
    pub interface: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = &self.gateway {
            write!(f, " via {g}")?;
        }
        Ok(())
    }
}

/// Makes a network namespace that outlives every process in it, as
/// `ip netns add` does: a bind mount of a new namespace on `path` (an
/// empty file made here).
pub fn create_namespace(path: &Path) -> Result<(), NetError> {
    let err = |source| NetError::Create { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::File::create(path).map_err(err)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> nix::Result<()> {
            // Only this thread moves; it ends right after.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            nix::mount::mount(Some(own.as_str()), path, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        })
        .join()
        .unwrap_or(Err(nix::errno::Errno::EINVAL))
    });
    made.map_err(|e| {
        let _ = std::fs::remove_file(path);
        err(e.into())
    })
}

/// Runs `f` on a thread of its own that has joined the network namespace
/// at `path` (CAP_SYS_ADMIN), and returns what it returns.
pub fn in_namespace<T: Send>(path: &Path, f: impl FnOnce() -> Result<T, NetError> + Send) -> Result<T, NetError> {
    let enter = |source| NetError::Enter { path: path.to_path_buf(), source };
    let ns = std::fs::File::open(path).map_err(enter)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // Only this thread moves; it ends with the closure.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Enter { path: path.to_path_buf(), source: e.into() })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Enter { path: path.to_path_buf(), source: std::io::Error::other("the thread panicked") })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_travel_as_strings() {
        let m = Mac::parse("02:0a:FF:00:10:9c").unwrap();
        assert_eq!(m.0, [2, 0x0a, 0xff, 0, 0x10, 0x9c]);
        assert_eq!(m.to_string(), "02:0a:ff:00:10:9c");
        assert!(m.is_unicast());
        assert!(!Mac::parse("01:00:5e:00:00:01").unwrap().is_unicast());
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "2:00:00:00:00:00", "zz:00:00:00:00:00"] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"02:0a:ff:00:10:9c\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Mac>("\"nope\"").is_err());
    }

    #[test]
    fn routes_and_nets_print_as_ip_does() {
        let net = IpNet { address: "10.88.0.0".parse().unwrap(), prefix: 16 };
        assert_eq!(net.to_string(), "10.88.0.0/16");
        let r = Route {
            destination: None,
            gateway: Some("10.88.0.1".parse().unwrap()),
            interface: 0,
            metric: None,
            source: None,
        };
        assert_eq!(r.to_string(), "default via 10.88.0.1");
        let r = Route { destination: Some(net), gateway: None, interface: 0, metric: None, source: None };
        assert_eq!(r.to_string(), "10.88.0.0/16");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = in_namespace(Path::new("/no/such/netns"), || Ok(())).unwrap_err();
        assert!(e.to_string().contains("/no/such/netns"), "{e}");
    }
}
