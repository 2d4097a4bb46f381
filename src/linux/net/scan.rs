//! What a network namespace holds: its Ethernet interfaces with their
//! addresses, and the main table's routes through them.
//!
//! Routes the kernel made itself from an address (protocol "kernel") are
//! left out: adding the address makes them again wherever the list is
//! applied. So are IPv6 link-local addresses and the local and multicast
//! routes, which come with the interface.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::{Kind, Netlink};
use super::{Interface, IpNet, Mac, NetError, Route};

/// The main routing table's id.
const RT_TABLE_MAIN: u32 = 254;

/// A namespace's interfaces and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Ethernet interfaces (no loopback), in index order.
    pub interfaces: Vec<Interface>,
    /// Routes whose interface is in `interfaces` (`Route::interface` is
    /// the position there).
    pub routes: Vec<Route>,
}

/// Reads the calling thread's network namespace.
pub fn scan(nl: &mut Netlink) -> Result<Scan, NetError> {
    let links = nl.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), Kind::Dump, "list the interfaces")?;
    let mut interfaces: Vec<Interface> = links
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => interface_of(&l),
            _ => None,
        })
        .collect();
    interfaces.sort_by_key(|i| i.index);
    let addresses =
        nl.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), Kind::Dump, "list the addresses")?;
    for m in addresses {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if let Some(net) = address_of(&a) {
                if let Some(i) = interfaces.iter_mut().find(|i| i.index == a.header.index) {
                    i.addresses.push(net);
                }
            }
        }
    }
    let mut routes = Vec::new();
    for m in nl.request(RouteNetlinkMessage::GetRoute(RouteMessage::default()), Kind::Dump, "list the routes")? {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            routes.extend(route_of(&r, &interfaces));
        }
    }
    Ok(Scan { interfaces, routes })
}

fn interface_of(l: &LinkMessage) -> Option<Interface> {
    if l.header.link_layer_type != LinkLayerType::Ether || l.header.flags.contains(LinkFlags::Loopback) {
        return None;
    }
    let mut out = Interface {
        index: l.header.index,
        name: String::new(),
        kind: None,
        mac: Mac::default(),
        mtu: 1500,
        up: l.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::Address(b) => out.mac = Mac(<[u8; 6]>::try_from(b.as_slice()).ok()?),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        out.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

fn address_of(a: &AddressMessage) -> Option<IpNet> {
    if matches!(a.header.scope, AddressScope::Link | AddressScope::Host) {
        return None;
    }
    // IFA_LOCAL is the interface's own address on point-to-point links,
    // where IFA_ADDRESS is the peer's; elsewhere they are the same.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some(IpNet { address, prefix: a.header.prefix_len })
}

fn ip_of(r: &RouteAddress) -> Option<IpAddr> {
    match r {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_of(r: &RouteMessage, interfaces: &[Interface]) -> Option<Route> {
    let h = &r.header;
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != RT_TABLE_MAIN || h.kind != RouteType::Unicast || h.protocol == RouteProtocol::Kernel {
        return None;
    }
    let mut route = Route { destination: None, gateway: None, interface: usize::MAX, metric: None, source: None };
    let mut destination = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = ip_of(d),
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => route.source = ip_of(s),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Oif(o) => route.interface = interfaces.iter().position(|i| i.index == *o)?,
            _ => {}
        }
    }
    if route.interface == usize::MAX {
        return None;
    }
    route.destination = destination.map(|address| IpNet { address, prefix: h.destination_prefix_length });
    if let Some(d) = &route.destination {
        // fe80::/64 comes with every IPv6 interface.
        if let IpAddr::V6(v6) = d.address {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return None;
            }
        }
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteHeader;
    use netlink_packet_route::AddressFamily;

    fn eth(index: u32) -> Interface {
        Interface {
            index,
            name: format!("eth{index}"),
            kind: Some("veth".into()),
            mac: Mac([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            up: true,
            addresses: vec![],
        }
    }

    fn route(protocol: RouteProtocol, attrs: Vec<RouteAttribute>, prefix: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: AddressFamily::Inet,
            table: RT_TABLE_MAIN as u8,
            kind: RouteType::Unicast,
            protocol,
            destination_prefix_length: prefix,
            ..Default::default()
        };
        m.attributes = attrs;
        m
    }

    #[test]
    fn the_default_route_and_static_routes_are_kept_the_kernels_are_not() {
        let ifs = [eth(7), eth(9)];
        let gw = RouteAttribute::Gateway(RouteAddress::Inet("10.88.0.1".parse().unwrap()));
        let r = route_of(&route(RouteProtocol::Boot, vec![gw.clone(), RouteAttribute::Oif(9)], 0), &ifs).unwrap();
        assert_eq!(r.to_string(), "default via 10.88.0.1");
        assert_eq!(r.interface, 1);
        let dst = RouteAttribute::Destination(RouteAddress::Inet("10.88.0.0".parse().unwrap()));
        assert_eq!(route_of(&route(RouteProtocol::Kernel, vec![dst.clone(), RouteAttribute::Oif(7)], 16), &ifs), None);
        let r = route_of(
            &route(RouteProtocol::Static, vec![dst, RouteAttribute::Oif(7), RouteAttribute::Priority(5)], 16),
            &ifs,
        )
        .unwrap();
        assert_eq!((r.to_string(), r.metric), ("10.88.0.0/16".to_string(), Some(5)));
        // Through an interface that is not on the list (the loopback), or
        // in another table: left out.
        assert_eq!(route_of(&route(RouteProtocol::Boot, vec![gw.clone(), RouteAttribute::Oif(1)], 0), &ifs), None);
        let mut other = route(RouteProtocol::Boot, vec![gw, RouteAttribute::Oif(7)], 0);
        other.header.table = 255;
        assert_eq!(route_of(&other, &ifs), None);
        let ll = RouteAttribute::Destination(RouteAddress::Inet6("fe80::".parse().unwrap()));
        assert_eq!(route_of(&route(RouteProtocol::Boot, vec![ll, RouteAttribute::Oif(7)], 64), &ifs), None);
    }

    #[test]
    fn link_local_addresses_stay_and_local_wins_over_address() {
        let mut a = AddressMessage::default();
        a.header.prefix_len = 16;
        a.attributes = vec![
            AddressAttribute::Address("10.0.0.9".parse().unwrap()),
            AddressAttribute::Local("10.88.0.5".parse().unwrap()),
        ];
        assert_eq!(address_of(&a).unwrap().to_string(), "10.88.0.5/16");
        a.header.scope = AddressScope::Link;
        assert_eq!(address_of(&a), None);
    }

    /// Root tier: the loopback-only namespace of a fresh thread.
    #[test]
    #[ignore = "needs root (CAP_SYS_ADMIN for a network namespace); run with --ignored as root"]
    fn a_fresh_namespace_has_no_interface_and_no_route() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = scan(&mut Netlink::open().unwrap()).unwrap();
            assert_eq!(s, Scan::default());
        })
        .join()
        .unwrap();
    }
}
