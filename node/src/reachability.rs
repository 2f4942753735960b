//! Whether a listen address makes this node reachable from the Internet.
//!
//! A node listening on a globally routable IP address is publicly reachable (firewalls aside),
//! so that address is announced as external and Kademlia switches to server mode on its own.
//! Behind NAT there is no such address, and the node stays a DHT client unless asked
//! otherwise ([`crate::NodeConfig::dht_server`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Whether `address` starts with a globally routable IP address.
pub(crate) fn is_public(address: &Multiaddr) -> bool {
    match address.iter().next() {
        Some(Protocol::Ip4(ip)) => is_global(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_global(IpAddr::V6(ip)),
        _ => false,
    }
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_global_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(ip),
        },
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (b & 0xc0) == 64)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b & 0xfe) == 18)
        // "This network" and reserved, 0.0.0.0/8 and 240.0.0.0/4.
        || a == 0
        || a >= 240)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(&s.parse::<Multiaddr>().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for s in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.1/udp/1/quic-v1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/198.18.0.1/tcp/1",
            "/ip4/203.0.113.7/tcp/1",
            "/ip4/224.0.0.251/udp/5353",
            "/ip4/250.0.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/::/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/ip6/::ffff:192.168.0.1/tcp/1",
            "/dns4/example.com/tcp/1",
        ] {
            assert!(!public(s), "{s} is not public");
        }
        for s in [
            "/ip4/1.1.1.1/tcp/4001",
            "/ip4/8.8.8.8/udp/4001/quic-v1",
            "/ip4/100.128.0.1/tcp/1",
            "/ip6/2a00:1450::1/tcp/1",
            "/ip6/::ffff:1.1.1.1/tcp/1",
        ] {
            assert!(public(s), "{s} is public");
        }
    }
}
