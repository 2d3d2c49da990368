//! Tunnel addresses: where the hub and every site sit inside `spec.tunnel.addressPool`.
//!
//! The hub takes the first host of the pool (`100.96.0.1` in `100.96.0.0/16`). A site's
//! address is configured on its connector, outside the cluster, so it must not move when
//! *other* sites come and go: it is derived from the site's name (FNV-1a, a hash fixed by
//! its specification, unlike `std`'s `DefaultHasher`) rather than from its position in
//! `spec.tunnel.sites`. Names are placed in sorted order and a name whose slot is taken
//! moves to the next free one, so the result never depends on the order of the list; only
//! two names that hash to the same slot can influence each other (about a 3% chance for 64
//! sites in a /16), and the address is always written where the site owner reads it
//! (the generated site Secret, the hub configuration).
//!
//! Pure: no state, no I/O.

use rustronaut_contract::cidr::Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of addresses of `pool` and its network address as an integer.
fn span(pool: &Cidr) -> (u128, u128) {
    match pool.network() {
        IpAddr::V4(a) => {
            let bits = 32 - u32::from(pool.prefix_len());
            (1u128 << bits, u128::from(u32::from(a)))
        }
        IpAddr::V6(a) => {
            let bits = 128 - u32::from(pool.prefix_len());
            // A /0 IPv6 pool would overflow; nobody needs more than 2^127 addresses.
            (1u128 << bits.min(127), u128::from(a))
        }
    }
}

fn at(pool: &Cidr, base: u128, offset: u128) -> IpAddr {
    match pool.network() {
        // The offset is below the pool's size, which fits the family.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(base + offset).unwrap_or(u32::MAX),
        )),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(base + offset)),
    }
}

/// The hub's tunnel address: the first host of `pool`; None when the pool has no room for a
/// hub and at least one site (a /31 or /32).
pub fn hub_address(pool: &Cidr) -> Option<IpAddr> {
    let (size, base) = span(pool);
    (size >= 4).then(|| at(pool, base, 1))
}

/// FNV-1a, 64 bits: stable across Rust releases and platforms.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Tunnel addresses of the sites `names` in `pool`: never the network address, the hub's
/// or the last address of the pool (IPv4 broadcast). Sites that do not fit (more sites than
/// free addresses) are absent from the result.
pub fn site_addresses<'a>(
    pool: &Cidr,
    names: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, IpAddr> {
    let (size, base) = span(pool);
    let mut out = BTreeMap::new();
    if size < 4 {
        return out;
    }
    // Offsets 2 ..= size - 2.
    let slots = size - 3;
    let names: BTreeSet<&str> = names.into_iter().collect();
    let mut taken = BTreeSet::new();
    for name in names {
        if u128::try_from(taken.len()).unwrap_or(u128::MAX) >= slots {
            break;
        }
        let mut slot = u128::from(fnv1a(name)) % slots;
        while !taken.insert(slot) {
            slot = (slot + 1) % slots;
        }
        out.insert(name.to_string(), at(pool, base, slot + 2));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn hub_is_the_first_host() {
        assert_eq!(
            hub_address(&pool("100.96.0.0/16")),
            Some("100.96.0.1".parse().unwrap())
        );
        assert_eq!(
            hub_address(&pool("fd00:96::/64")),
            Some("fd00:96::1".parse().unwrap())
        );
        assert_eq!(hub_address(&pool("100.96.0.0/31")), None);
    }

    #[test]
    fn site_addresses_do_not_move_when_other_sites_change() {
        let p = pool("100.96.0.0/16");
        let three = site_addresses(&p, ["dc1", "dc2", "branch-7"]);
        assert_eq!(three.len(), 3);
        let hub = hub_address(&p).unwrap();
        for ip in three.values() {
            assert!(p.contains(*ip));
            assert_ne!(*ip, hub);
            assert_ne!(*ip, p.network());
            assert_ne!(*ip, "100.96.255.255".parse::<IpAddr>().unwrap());
        }
        let values: BTreeSet<_> = three.values().collect();
        assert_eq!(values.len(), 3, "distinct");
        // Order of the list, removals and additions leave the others where they were.
        assert_eq!(site_addresses(&p, ["branch-7", "dc2", "dc1"]), three);
        let two = site_addresses(&p, ["dc1", "branch-7"]);
        assert_eq!(two["dc1"], three["dc1"]);
        assert_eq!(two["branch-7"], three["branch-7"]);
        let four = site_addresses(&p, ["dc1", "dc2", "branch-7", "lab"]);
        for (k, v) in &three {
            assert_eq!(four[k], *v);
        }
        // Fixed by FNV-1a: a regression here would move every deployed site.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn small_pools_fill_up_and_collisions_probe() {
        // A /29 has 8 addresses: network, hub, broadcast and 5 for sites.
        let p = pool("10.0.0.0/29");
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let got = site_addresses(&p, names);
        assert_eq!(got.len(), 5, "{got:?}");
        let values: BTreeSet<_> = got.values().copied().collect();
        let want: BTreeSet<IpAddr> = (2..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(values, want);
        assert!(site_addresses(&pool("10.0.0.0/31"), ["a"]).is_empty());
        let v6 = site_addresses(&pool("fd00::/120"), ["dc1"]);
        assert!(pool("fd00::/120").contains(v6["dc1"]));
    }
}
