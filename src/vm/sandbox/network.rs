//! A VM container's network: the interfaces an engine or CNI put in the
//! container's network namespace reach the guest, the way Kata does it.
//!
//! - The VMM lives in that namespace (it joins the spec's path, or makes
//!   a new one when the spec asks for one), so hooks that set the network
//!   up through the container's pid (docker's libnetwork) find it there.
//! - Before it drops CAP_NET_ADMIN it opens one TAP per interface there
//!   (`amphi-tap0`, ...), each the backend of a virtio-net device. The
//!   TAPs are not persistent: they go with the VMM.
//! - Once the hooks have run, `create` splices each interface to its TAP
//!   with a tc redirect both ways ([`crate::linux::net::config::redirect`])
//!   and asks the agent to give the guest's interface the host one's MAC
//!   address, MTU, addresses and routes, in a network namespace the agent
//!   makes for the container. The host interface keeps them too, so the
//!   engine sees what it made, but its frames all go to the VM.
//! - Interfaces the engine made before `create` (a named namespace) reach
//!   the guest before the container is made there, so its sysctls and
//!   runtime find them; those a hook adds (docker), after the hooks.
//! - `delete` (or a failed `create`) removes the redirect from an
//!   interface that outlives the VM (a namespace the engine made).
//!
//! How many interfaces: those in the namespace at `create` when the spec
//! names one (podman, containerd, CNI); one when the spec asks for a new
//! namespace and has hooks that may fill it (docker); none for a new
//! namespace without hooks or no network namespace at all, where the
//! guest has its loopback only.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::agent::{GuestInterface, NetworkRequest};
use crate::linux::net::config::{index_of, redirect, remove_ingress, set_up};
use crate::linux::net::netlink::Netlink;
use crate::linux::net::scan::{scan, Scan};
use crate::linux::net::{in_namespace, Mac, NetError};
use crate::vm::devices::virtio::net::device::MAX_MTU;
use crate::vm::vmm::NetConfig;

/// The TAPs' names: `amphi-tap0`, `amphi-tap1`, ...
pub const TAP_PREFIX: &str = "amphi-tap";
/// At most this many interfaces reach a VM (virtio-mmio slots are few).
pub const MAX_INTERFACES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(
        "the network namespace {} already holds {tap}, the TAP of another VM container: in VM isolation each \
         container needs a network namespace of its own (do not share one between VM containers)",
        path.display()
    )]
    Taken { path: PathBuf, tap: String },
    #[error(
        "the network namespace {} has {count} interfaces; at most {MAX_INTERFACES} can reach a VM: remove some or \
         use --isolation container",
        path.display()
    )]
    TooMany { path: PathBuf, count: usize },
}

/// Where the VMM's network namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// The spec has no network namespace: the VMM stays in the caller's,
    /// the guest has loopback only.
    Host,
    /// The spec asks for a new one: the VMM makes it.
    New,
    /// The spec names one: the VMM joins it.
    Path(PathBuf),
}

/// What the VMM process does about the network before it is jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub namespace: Namespace,
    /// How many TAPs (and virtio-net devices) it makes.
    pub taps: usize,
    /// The devices' MTU: the largest of the interfaces', or the most a
    /// device allows when they are not known yet.
    pub mtu: u16,
}

impl NetPlan {
    /// The VMM's virtio-net devices (their TAPs are opened by the VMM
    /// process in its namespace, `fd` filled there).
    pub fn devices(&self) -> Vec<NetConfig> {
        (0..self.taps)
            .map(|i| {
                let tap = tap_name(i);
                NetConfig { mac: NetConfig::default_mac(&tap), tap, mtu: self.mtu, fd: None }
            })
            .collect()
    }
}

pub fn tap_name(i: usize) -> String {
    format!("{TAP_PREFIX}{i}")
}

fn namespace_of(spec: &Spec) -> Namespace {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network).cloned());
    match ns {
        None => Namespace::Host,
        Some(n) => match n.path() {
            Some(p) => Namespace::Path(p.clone()),
            None => Namespace::New,
        },
    }
}

/// The interfaces of a namespace that can reach a VM (their positions in
/// `s.interfaces`): Ethernet ones that are not a VM's TAP already.
fn candidates(s: &Scan) -> Vec<usize> {
    (0..s.interfaces.len())
        .filter(|&k| {
            let i = &s.interfaces[k];
            !i.name.starts_with(TAP_PREFIX) && i.kind.as_deref() != Some("tun")
        })
        .collect()
}

/// Decides the plan at `create`, before the VMM exists: a named namespace
/// is looked at (from a thread that joins it) for its interfaces.
pub fn plan(spec: &Spec) -> Result<NetPlan, NetworkError> {
    let has_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|l| !l.is_empty())
            || h.create_runtime().as_ref().is_some_and(|l| !l.is_empty())
    });
    plan_for(namespace_of(spec), has_hooks, |p| in_namespace(p, || scan(&mut Netlink::open()?)))
}

fn plan_for(
    namespace: Namespace,
    has_hooks: bool,
    scan_ns: impl FnOnce(&Path) -> Result<Scan, NetError>,
) -> Result<NetPlan, NetworkError> {
    let max = MAX_MTU;
    match &namespace {
        Namespace::Host => Ok(NetPlan { namespace, taps: 0, mtu: max }),
        Namespace::New => Ok(NetPlan { namespace, taps: usize::from(has_hooks), mtu: max }),
        Namespace::Path(p) => {
            let s = scan_ns(p)?;
            if let Some(t) = s.interfaces.iter().find(|i| i.name.starts_with(TAP_PREFIX)) {
                return Err(NetworkError::Taken { path: p.clone(), tap: t.name.clone() });
            }
            let found = candidates(&s);
            if found.len() > MAX_INTERFACES {
                return Err(NetworkError::TooMany { path: p.clone(), count: found.len() });
            }
            let mtu = found.iter().map(|&k| s.interfaces[k].mtu).max().unwrap_or(1500);
            let mtu = u16::try_from(mtu).unwrap_or(max).min(max);
            Ok(NetPlan { taps: found.len(), mtu, namespace })
        }
    }
}

/// What `create` changed outside the VM, for `delete` to undo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wired {
    /// The namespace, when it outlives the VMM (the spec named it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<PathBuf>,
    /// The host interfaces redirected to the VM's TAPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

/// Splices the interfaces of the VMM's namespace (`/proc/<vmm>/ns/net`)
/// to its TAPs and returns what the guest must be told for container
/// `id`. Interfaces beyond
/// the TAPs (a hook added more than one) are left out with a warning.
pub fn wire(id: &str, vmm_pid: i32, plan: &NetPlan) -> Result<(NetworkRequest, Wired), NetworkError> {
    let mut wired = Wired {
        namespace: match &plan.namespace {
            Namespace::Path(p) => Some(p.clone()),
            _ => None,
        },
        interfaces: Vec::new(),
    };
    if plan.taps == 0 {
        return Ok((NetworkRequest { id: id.to_string(), interfaces: Vec::new(), routes: Vec::new() }, wired));
    }
    let ns = PathBuf::from(format!("/proc/{vmm_pid}/ns/net"));
    let devices = plan.devices();
    let (interfaces, routes, names) = in_namespace(&ns, || {
        let mut nl = Netlink::open()?;
        let s = scan(&mut nl)?;
        let found = candidates(&s);
        for &k in found.iter().skip(devices.len()) {
            crate::logging::warn(&format!(
                "interface {} appeared in the VM container's network namespace after the VM started: it does not \
                 reach the guest",
                s.interfaces[k].name
            ));
        }
        let mut spliced = Vec::new();
        let made = splice(&mut nl, &s, &found, &devices, &mut spliced);
        if made.is_err() {
            // Only what this call redirected: an ingress qdisc that was
            // there before (EEXIST) is someone else's.
            for &k in &spliced {
                let i = &s.interfaces[k];
                let _ = remove_ingress(&mut nl, i.index, &i.name);
            }
        }
        made?;
        let interfaces = spliced
            .iter()
            .zip(&devices)
            .map(|(&k, dev)| {
                let i = &s.interfaces[k];
                GuestInterface { device_mac: Mac(dev.mac), mac: i.mac, mtu: i.mtu, addresses: i.addresses.clone() }
            })
            .collect();
        let routes = s
            .routes
            .iter()
            .filter_map(|r| {
                let at = spliced.iter().position(|k| *k == r.interface)?;
                Some(crate::linux::net::Route { interface: at, ..r.clone() })
            })
            .collect();
        let names = spliced.iter().map(|&k| s.interfaces[k].name.clone()).collect();
        Ok((interfaces, routes, names))
    })?;
    wired.interfaces = names;
    Ok((NetworkRequest { id: id.to_string(), interfaces, routes }, wired))
}

/// Redirects each interface of `found` (positions in `s.interfaces`) and
/// the TAP of the device beside it both ways; `spliced` gets each one
/// whose own ingress was redirected, as it goes.
fn splice(
    nl: &mut Netlink,
    s: &Scan,
    found: &[usize],
    devices: &[NetConfig],
    spliced: &mut Vec<usize>,
) -> Result<(), NetError> {
    for (&k, dev) in found.iter().zip(devices) {
        let iface = &s.interfaces[k];
        // The TAP is in the scan too (an Ethernet link of kind "tun").
        let Some(tap) = s.interfaces.iter().find(|i| i.name == dev.tap).map(|i| i.index) else { continue };
        set_up(nl, tap, &dev.tap, None, Some(iface.mtu))?;
        redirect(nl, (iface.index, &iface.name), (tap, &dev.tap))?;
        spliced.push(k);
        redirect(nl, (tap, &dev.tap), (iface.index, &iface.name))?;
    }
    Ok(())
}

fn unredirect_all(names: &[String]) -> Result<(), NetError> {
    let mut nl = Netlink::open()?;
    for n in names {
        if let Some(i) = index_of(&mut nl, n)? {
            remove_ingress(&mut nl, i, n)?;
        }
    }
    Ok(())
}

/// Takes the redirects off interfaces that outlive the VM. A namespace
/// or interface that is gone already is fine.
pub fn unwire(wired: &Wired) -> Result<(), NetError> {
    let Some(p) = &wired.namespace else { return Ok(()) };
    if wired.interfaces.is_empty() || !p.exists() {
        return Ok(());
    }
    in_namespace(p, || unredirect_all(&wired.interfaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::net::{Interface, IpNet};

    fn iface(index: u32, name: &str, kind: &str, mtu: u32) -> Interface {
        Interface {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            mac: Mac([2, 0, 0, 0, 0, index as u8]),
            mtu,
            up: true,
            addresses: vec![IpNet { address: "10.88.0.5".parse().unwrap(), prefix: 16 }],
        }
    }

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn the_spec_says_where_the_vmm_lives() {
        assert_eq!(namespace_of(&spec(serde_json::json!({}))), Namespace::Host);
        assert_eq!(
            namespace_of(&spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}))),
            Namespace::Host
        );
        assert_eq!(
            namespace_of(&spec(serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}}))),
            Namespace::New
        );
        assert_eq!(
            namespace_of(&spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}})
            )),
            Namespace::Path("/run/netns/x".into())
        );
    }

    #[test]
    fn one_tap_per_interface_of_a_named_namespace() {
        let no_scan = |_: &Path| -> Result<Scan, NetError> { panic!("no namespace to look at") };
        let p = plan_for(Namespace::Host, true, no_scan).unwrap();
        assert_eq!(p.taps, 0);
        assert_eq!(plan_for(Namespace::New, false, no_scan).unwrap().taps, 0);
        // docker: a new namespace its prestart hook fills.
        let p = plan_for(Namespace::New, true, no_scan).unwrap();
        assert_eq!((p.taps, p.mtu), (1, MAX_MTU));
        assert_eq!(p.devices()[0].tap, "amphi-tap0");

        let path = Namespace::Path("/run/netns/x".into());
        let s =
            Scan { interfaces: vec![iface(2, "eth0", "veth", 1450), iface(3, "eth1", "veth", 9000)], routes: vec![] };
        let p = plan_for(path.clone(), false, |_| Ok(s.clone())).unwrap();
        assert_eq!((p.taps, p.mtu), (2, 9000));
        let names: Vec<_> = p.devices().into_iter().map(|d| d.tap).collect();
        assert_eq!(names, ["amphi-tap0", "amphi-tap1"]);
        // Loopback only (podman --network none): nothing.
        let p = plan_for(path.clone(), false, |_| Ok(Scan::default())).unwrap();
        assert_eq!(p.taps, 0);
        // Another VM's TAP there: refused by name.
        let taken = Scan {
            interfaces: vec![iface(2, "eth0", "veth", 1500), iface(5, "amphi-tap0", "tun", 1500)],
            routes: vec![],
        };
        let e = plan_for(path.clone(), false, |_| Ok(taken.clone())).unwrap_err();
        assert!(e.to_string().contains("amphi-tap0") && e.to_string().contains("/run/netns/x"), "{e}");
        let many =
            Scan { interfaces: (2..8).map(|i| iface(i, &format!("eth{i}"), "veth", 1500)).collect(), routes: vec![] };
        let e = plan_for(path, false, |_| Ok(many.clone())).unwrap_err();
        assert!(matches!(e, NetworkError::TooMany { count: 6, .. }), "{e}");
    }

    #[test]
    fn nothing_to_undo_without_a_named_namespace() {
        unwire(&Wired::default()).unwrap();
        unwire(&Wired { namespace: Some("/no/such/netns".into()), interfaces: vec!["eth0".into()] }).unwrap();
    }
}
