//! Fuzzes the hub's packet entry point: classification (MACs, rate limit, key and index
//! lookup), then the site's link (boringtun decapsulation, cryptokey routing, smoltcp).
//! Run: `cd tunnel/fuzz && cargo +nightly fuzz run hub_ingress`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustronaut_tunnel::hub::{Ingress, Verdict};
use rustronaut_tunnel::keys::PrivateKey;
use rustronaut_tunnel::link::{Link, LinkConfig};

const SITE_INDEX: u32 = 42;

struct Fixture {
    hub_key: PrivateKey,
    site_key: PrivateKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        // Fixed keys keep runs reproducible.
        hub_key: PrivateKey::from_base64("YHkWxXy0ZRlZRNWwqM6Dj6cGjz0vbvyJ0Sj2kWpgU0o=").unwrap(),
        site_key: PrivateKey::from_base64("qAR0XxdBvVdo5cVZPQqyB2pTwUsn1MFOc6QMQLLzvVU=").unwrap(),
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let ingress = Ingress::new(&f.hub_key);
    let mut link = Link::new(LinkConfig {
        private_key: f.hub_key.clone(),
        peer_key: f.site_key.public_key(),
        local_ip: "100.96.0.1".parse().unwrap(),
        peer_ip: "100.96.1.1".parse().unwrap(),
        keepalive: None,
        index: SITE_INDEX,
        rate_limiter: Some(ingress.limiter()),
        endpoint: None,
    })
    .unwrap();
    let from: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let mut reply = [0u8; 256];
    // The input may hold several datagrams: split on a 2-byte length prefix.
    let mut rest = data;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let dg = &rest[2..2 + n];
        rest = &rest[2 + n..];
        match ingress.classify(from.ip(), dg, &mut reply) {
            Verdict::Key(k) if k == f.site_key.public_key() => {
                link.receive_datagram(from, dg);
            }
            Verdict::Index(i) if i == SITE_INDEX => {
                link.receive_datagram(from, dg);
            }
            _ => {}
        }
        link.poll();
        let _ = link.drain_outgoing().count();
    }
});
