//! The guest's network: the agent makes the container's network namespace
//! (`/run/amphi/netns/<id>`, which the guest config names), moves each
//! virtio-net interface into it, and gives it what the host interface
//! wired to its TAP had (its MAC address, MTU and addresses); then the
//! routes through them go in, and the namespace's loopback comes up.
//!
//! The host asks before the container is made when the engine made the
//! interfaces before `create`, after the hooks when a hook makes them
//! (docker): either way before the workload starts.

use std::time::Duration;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use amphi::agent::container::GUEST_NETNS_DIR;
use amphi::agent::{AgentError, ErrorCode, NetworkRequest, NetworkResponse};
use amphi::linux::net::config::{add_address, add_route, find_by_mac, index_of, move_to, set_up};
use amphi::linux::net::netlink::Netlink;
use amphi::linux::net::{create_namespace, in_namespace, NetError};

/// How long an interface may take to appear: virtio_net is loaded at
/// boot, so it is normally there before the first request.
const DEVICE_WAIT: Duration = Duration::from_secs(2);
/// The MTUs an Ethernet interface can have (IPv4's minimum, and the
/// largest the virtio-net device offers).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

fn failed(e: NetError) -> AgentError {
    AgentError::new(ErrorCode::NetworkFailed, amphi::logging::chain(&e))
}

/// Checks a request before anything changes.
pub fn check(req: &NetworkRequest) -> Result<(), AgentError> {
    let bad = |m: String| Err(AgentError::new(ErrorCode::InvalidConfig, m));
    if req.id.is_empty() || req.id.contains('/') || req.id == "." || req.id == ".." {
        return bad(format!("{:?} cannot name a container", req.id));
    }
    for (n, i) in req.interfaces.iter().enumerate() {
        if !i.mac.is_unicast() {
            return bad(format!("interface {n}: {} is a multicast address, not a station's", i.mac));
        }
        if !MTU_RANGE.contains(&i.mtu) {
            return bad(format!("interface {n}: MTU {} is outside {}..={}", i.mtu, MTU_RANGE.start(), MTU_RANGE.end()));
        }
        for a in &i.addresses {
            let max = if a.address.is_ipv4() { 32 } else { 128 };
            if a.prefix > max {
                return bad(format!("interface {n}: {a} has a prefix longer than {max}"));
            }
        }
    }
    for r in &req.routes {
        if r.interface >= req.interfaces.len() {
            return bad(format!("route {r}: interface {} is not in the request", r.interface));
        }
    }
    Ok(())
}

/// The container's network namespace in the guest.
pub fn namespace_path(id: &str) -> PathBuf {
    Path::new(GUEST_NETNS_DIR).join(id)
}

fn name_of(index: u32) -> String {
    nix::net::if_::if_indextoname(index)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("interface {index}"))
}

pub fn configure(req: &NetworkRequest) -> Result<NetworkResponse, AgentError> {
    check(req)?;
    let path = namespace_path(&req.id);
    if !path.exists() {
        create_namespace(&path).map_err(failed)?;
    }
    let ns = std::fs::File::open(&path).map_err(|source| failed(NetError::Enter { path: path.clone(), source }))?;
    // Found in the guest's namespace, where the driver made them.
    let mut nl = Netlink::open().map_err(failed)?;
    for i in &req.interfaces {
        let index = find_by_mac(&mut nl, i.device_mac, DEVICE_WAIT).map_err(failed)?;
        move_to(&mut nl, index, &name_of(index), ns.as_fd()).map_err(failed)?;
    }
    let names = in_namespace(&path, || {
        let mut nl = Netlink::open()?;
        if let Some(lo) = index_of(&mut nl, "lo")? {
            set_up(&mut nl, lo, "lo", None, None)?;
        }
        let mut found = Vec::with_capacity(req.interfaces.len());
        for i in &req.interfaces {
            let index = find_by_mac(&mut nl, i.device_mac, DEVICE_WAIT)?;
            let name = name_of(index);
            set_up(&mut nl, index, &name, Some(i.mac), Some(i.mtu))?;
            for a in &i.addresses {
                add_address(&mut nl, index, &name, *a)?;
            }
            found.push((index, name));
        }
        // Routes to a subnet before routes through a gateway in it.
        let mut routes: Vec<_> = req.routes.iter().collect();
        routes.sort_by_key(|r| r.gateway.is_some());
        for r in routes {
            let (index, name) = &found[r.interface];
            add_route(&mut nl, *index, name, r)?;
        }
        Ok(found.into_iter().map(|(_, n)| n).collect())
    })
    .map_err(failed)?;
    Ok(NetworkResponse { names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi::agent::GuestInterface;
    use amphi::linux::net::{IpNet, Mac, Route};

    fn iface() -> GuestInterface {
        GuestInterface {
            device_mac: Mac([2, 0, 0, 0, 0, 1]),
            mac: Mac([2, 0x42, 0xac, 0x11, 0, 2]),
            mtu: 1500,
            addresses: vec![IpNet { address: "172.17.0.2".parse().unwrap(), prefix: 16 }],
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let route = |interface| Route {
            destination: None,
            gateway: Some("172.17.0.1".parse().unwrap()),
            interface,
            metric: None,
            source: None,
        };
        let req = |interfaces, routes| NetworkRequest { id: "c1".into(), interfaces, routes };
        let ok = req(vec![iface()], vec![route(0)]);
        check(&ok).unwrap();
        let v4 = |prefix| vec![IpNet { address: "10.0.0.1".parse().unwrap(), prefix }];
        let cases: Vec<(NetworkRequest, &str)> = vec![
            (req(vec![iface()], vec![route(1)]), "interface 1 is not in the request"),
            (req(vec![GuestInterface { mtu: 40, ..iface() }], vec![]), "MTU 40"),
            (req(vec![GuestInterface { mac: Mac([1, 0, 0x5e, 0, 0, 1]), ..iface() }], vec![]), "multicast"),
            (req(vec![GuestInterface { addresses: v4(33), ..iface() }], vec![]), "prefix longer than 32"),
            (NetworkRequest { id: "../x".into(), ..ok.clone() }, "cannot name a container"),
            (NetworkRequest { id: String::new(), ..ok.clone() }, "cannot name a container"),
        ];
        for (r, want) in cases {
            let e = check(&r).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig);
            assert!(e.message.contains(want), "{} should say {want}", e.message);
        }
    }
}
