//! Changes to a network namespace: an interface's address, MTU and state,
//! addresses and routes (the guest side of VM networking), and the tc
//! redirect that splices two interfaces together (the host side).
//!
//! The redirect is Kata's "tcfilter" model: an ingress qdisc on each of
//! the two interfaces with a filter that matches every frame and whose mirred
//! action sends
//! every frame out of the other one. The engine's veth keeps its
//! addresses, so the engine sees what it made, but nothing reaches the
//! namespace's own stack: every frame goes to the VM's TAP and back.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{Kind, Netlink};
use super::{IpNet, Mac, NetError};

const RT_TABLE_MAIN: u8 = 254;
/// The ingress qdisc's handle (ffff:).
const INGRESS_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };
/// ETH_P_ALL in network byte order, as tcm_info's protocol half wants it.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Whether a failed creation failed only because the object is there.
fn exists(e: &NetError) -> bool {
    matches!(e, NetError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST))
}

/// The index of the first interface whose attributes satisfy `pred`.
fn find_link(nl: &mut Netlink, pred: impl Fn(&LinkAttribute) -> bool) -> Result<Option<u32>, NetError> {
    let links = nl.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), Kind::Dump, "list the interfaces")?;
    Ok(links.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => l.attributes.iter().any(&pred).then_some(l.header.index),
        _ => None,
    }))
}

/// The index of the interface with `mac`, waiting up to `wait` for it to
/// appear (a driver still probing).
pub fn find_by_mac(nl: &mut Netlink, mac: Mac, wait: Duration) -> Result<u32, NetError> {
    let start = Instant::now();
    loop {
        if let Some(i) = find_link(nl, |a| matches!(a, LinkAttribute::Address(b) if b.as_slice() == mac.0))? {
            return Ok(i);
        }
        if start.elapsed() >= wait {
            return Err(NetError::NoInterface { mac, waited_ms: wait.as_millis() as u64 });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The index of the interface `name`, if there is one.
pub fn index_of(nl: &mut Netlink, name: &str) -> Result<Option<u32>, NetError> {
    find_link(nl, |a| matches!(a, LinkAttribute::IfName(n) if n == name))
}

/// Sets interface `index` up, with `mac` and `mtu` when given. `name`
/// names it in errors.
pub fn set_up(nl: &mut Netlink, index: u32, name: &str, mac: Option<Mac>, mtu: Option<u32>) -> Result<(), NetError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    let what = match (mac, mtu) {
        (Some(mac), Some(mtu)) => format!("set {name} up with the address {mac} and MTU {mtu}"),
        (None, Some(mtu)) => format!("set {name} up with MTU {mtu}"),
        _ => format!("set {name} up"),
    };
    nl.request(RouteNetlinkMessage::SetLink(m), Kind::Change, &what)?;
    Ok(())
}

/// Moves interface `index` into the network namespace `ns` (a descriptor
/// of it).
pub fn move_to(nl: &mut Netlink, index: u32, name: &str, ns: std::os::fd::BorrowedFd<'_>) -> Result<(), NetError> {
    use std::os::fd::AsRawFd;
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    nl.request(
        RouteNetlinkMessage::SetLink(m),
        Kind::Change,
        &format!("move {name} into the container's network namespace"),
    )?;
    Ok(())
}

/// Adds `net` to interface `index` (no duplicate address detection for
/// IPv6: the address is the one the host side had, and must work at once).
/// An address already there is fine.
pub fn add_address(nl: &mut Netlink, index: u32, name: &str, net: IpNet) -> Result<(), NetError> {
    let mut m = AddressMessage::default();
    m.header.family = family(&net.address);
    m.header.prefix_len = net.prefix;
    m.header.index = index;
    match net.address {
        IpAddr::V4(_) => m.attributes.push(AddressAttribute::Local(net.address)),
        IpAddr::V6(_) => m.header.flags = AddressHeaderFlags::Nodad,
    }
    m.attributes.push(AddressAttribute::Address(net.address));
    match nl.request(RouteNetlinkMessage::NewAddress(m), Kind::Create, &format!("add the address {net} to {name}")) {
        Err(e) if !exists(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Adds a main-table route through interface `index`. A route already
/// there is fine.
pub fn add_route(nl: &mut Netlink, index: u32, name: &str, route: &super::Route) -> Result<(), NetError> {
    let ip = route.destination.map(|d| d.address).or(route.gateway);
    let Some(ip) = ip else { return Ok(()) };
    let mut m = RouteMessage::default();
    m.header.address_family = family(&ip);
    m.header.destination_prefix_length = route.destination.map(|d| d.prefix).unwrap_or(0);
    m.header.table = RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = if route.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    m.header.kind = RouteType::Unicast;
    if let Some(d) = route.destination {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(d.address)));
    }
    if let Some(g) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(s) = route.source {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(s)));
    }
    if let Some(p) = route.metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    match nl.request(RouteNetlinkMessage::NewRoute(m), Kind::Create, &format!("add the route {route} dev {name}")) {
        Err(e) if !exists(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Sends every frame that arrives on `from` out of `to`: an ingress qdisc
/// on `from` and a match-everything u32 filter with a mirred egress
/// redirect. EEXIST
/// if `from` has an ingress qdisc already (someone else's redirect).
pub fn redirect(nl: &mut Netlink, from: (u32, &str), to: (u32, &str)) -> Result<(), NetError> {
    let mut q = TcMessage::with_index(from.0 as i32);
    q.header.handle = INGRESS_HANDLE;
    q.header.parent = TcHandle::INGRESS;
    q.attributes.push(TcAttribute::Kind("ingress".into()));
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(q),
        Kind::Create,
        &format!("add an ingress qdisc to {}", from.1),
    )?;

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to.0;
    let mut action = TcAction::default();
    action.attributes.push(TcActionAttribute::Kind("mirred".into()));
    action
        .attributes
        .push(TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]));
    let mut f = TcMessage::with_index(from.0 as i32);
    f.header.parent = INGRESS_HANDLE;
    // Priority 1, every protocol.
    f.header.info = (1 << 16) | ETH_P_ALL_BE;
    // u32 with one key that matches anything (`match u32 0 0`), not
    // matchall, which some kernels do not build (this CI host's).
    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];
    f.attributes.push(TcAttribute::Kind("u32".into()));
    f.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(f),
        Kind::Create,
        &format!("redirect {}'s frames to {} (tc u32 + mirred)", from.1, to.1),
    )?;
    Ok(())
}

/// Removes interface `index`'s ingress qdisc and with it its filters.
/// Nothing to remove is fine.
pub fn remove_ingress(nl: &mut Netlink, index: u32, name: &str) -> Result<(), NetError> {
    let mut q = TcMessage::with_index(index as i32);
    q.header.handle = INGRESS_HANDLE;
    q.header.parent = TcHandle::INGRESS;
    match nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(q),
        Kind::Change,
        &format!("remove the ingress qdisc of {name}"),
    ) {
        Err(NetError::Netlink { source, .. })
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) =>
        {
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::net::scan::scan;

    #[test]
    fn eth_p_all_is_in_network_order() {
        assert_eq!(ETH_P_ALL_BE, 0x0300);
    }

    /// Root tier: in a fresh namespace, a veth pair whose one end is
    /// redirected to a second pair, then unredirected; an address and
    /// routes on the other end, read back by `scan`.
    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN, ip(8), sch_ingress, cls_u32, act_mirred); run with --ignored as root"]
    fn redirects_addresses_and_routes_in_a_fresh_namespace() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // ip(8) and tc(8) run in the thread's namespace.
            let tid = nix::unistd::gettid();
            let ns = format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id());
            let mut nl = Netlink::open().unwrap();
            let sh = |cmd: &str| {
                let st = std::process::Command::new("nsenter")
                    .args([ns.as_str(), "sh", "-c", cmd])
                    .status()
                    .expect("nsenter");
                assert!(st.success(), "{cmd}");
            };
            sh("ip link add va type veth peer name vb && ip link add dm type veth peer name dn");
            let va = index_of(&mut nl, "va").unwrap().unwrap();
            let vb = index_of(&mut nl, "vb").unwrap().unwrap();
            let dm = index_of(&mut nl, "dm").unwrap().unwrap();
            let mac = Mac([2, 0xaa, 0, 0, 0, 1]);
            set_up(&mut nl, vb, "vb", Some(mac), Some(1400)).unwrap();
            set_up(&mut nl, va, "va", None, None).unwrap();
            set_up(&mut nl, dm, "dm", None, None).unwrap();
            assert_eq!(find_by_mac(&mut nl, mac, Duration::ZERO).unwrap(), vb);
            let net = IpNet { address: "10.77.0.2".parse().unwrap(), prefix: 24 };
            add_address(&mut nl, vb, "vb", net).unwrap();
            add_address(&mut nl, vb, "vb", net).unwrap();
            let v6 = IpNet { address: "fd00::2".parse().unwrap(), prefix: 64 };
            add_address(&mut nl, vb, "vb", v6).unwrap();
            let default = super::super::Route {
                destination: None,
                gateway: Some("10.77.0.1".parse().unwrap()),
                interface: 0,
                metric: None,
                source: None,
            };
            add_route(&mut nl, vb, "vb", &default).unwrap();
            add_route(&mut nl, vb, "vb", &default).unwrap();
            let s = scan(&mut nl).unwrap();
            let b = s.interfaces.iter().position(|i| i.name == "vb").unwrap();
            assert_eq!(s.interfaces[b].mac, mac);
            assert_eq!(s.interfaces[b].mtu, 1400);
            assert_eq!(s.interfaces[b].kind.as_deref(), Some("veth"));
            assert!(s.interfaces[b].addresses.contains(&net), "{:?}", s.interfaces[b]);
            assert!(s.interfaces[b].addresses.contains(&v6), "{:?}", s.interfaces[b]);
            assert!(
                s.routes.iter().any(|r| r.interface == b && r.to_string() == "default via 10.77.0.1"),
                "{:?}",
                s.routes
            );

            redirect(&mut nl, (va, "va"), (dm, "dm")).unwrap();
            let again = redirect(&mut nl, (va, "va"), (dm, "dm")).unwrap_err();
            assert!(exists(&again), "{again}");
            let out = std::process::Command::new("nsenter")
                .args([ns.as_str(), "tc", "filter", "show", "dev", "va", "ingress"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("u32") && text.contains("Redirect to device dm"), "{text}");
            remove_ingress(&mut nl, va, "va").unwrap();
            remove_ingress(&mut nl, va, "va").unwrap();
            // A namespace that outlives its maker; vb moves into it.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ns");
            super::super::create_namespace(&path).unwrap();
            let target = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsFd;
            move_to(&mut nl, vb, "vb", target.as_fd()).unwrap();
            assert_eq!(index_of(&mut nl, "vb").unwrap(), None);
            let there = super::super::in_namespace(&path, || scan(&mut Netlink::open()?)).unwrap();
            assert_eq!(there.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["vb"]);
            drop(target);
            nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
            let out = std::process::Command::new("nsenter")
                .args([ns.as_str(), "tc", "qdisc", "show", "dev", "va"])
                .output()
                .unwrap();
            assert!(!String::from_utf8_lossy(&out.stdout).contains("ingress"));
        })
        .join()
        .unwrap();
    }
}
