//! The `read` step of a Gateway build: what [`rustronaut_compile::snapshot::gateway_snapshot`]
//! needs besides the [`World`], taken from the caches ([`Stores`]): the Gateway's TLS key
//! pairs, the ready endpoints of every Service port its Resources name, the tenants' session
//! keys and the sites' public keys from the Secrets the operator generated. Used by the
//! Gateway reconciler and by the Resource/Policy status pass ([`crate::status`]), which builds
//! every Gateway's snapshot the same way.

use super::{objects, session, tunnel};
use crate::cache::Stores;
use kube::ResourceExt;
use rustronaut_compile::World;
use rustronaut_compile::snapshot::{GatewayInputs, ServicePort, TlsKeyPair};
use rustronaut_contract::snapshot as cs;
use rustronaut_crds::Gateway;
use std::collections::BTreeMap;

/// The inputs of `gateway`'s build: its TLS Secrets, the endpoints of every Service
/// port the Resources in `world` name.
pub fn inputs<'a>(stores: &'a Stores, world: &World, gateway: &Gateway) -> GatewayInputs<'a> {
    let ns = gateway.namespace().unwrap_or_default();
    let mut tls = BTreeMap::new();
    for l in &gateway.spec.listeners {
        for r in l.tls.iter().flat_map(|t| &t.certificate_refs) {
            let Some(s) = stores.secrets.get(&ns, &r.name) else {
                continue;
            };
            let key = |k: &str| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .unwrap_or_default()
            };
            tls.insert(
                cs::ObjectRef::new(&ns, &r.name),
                TlsKeyPair {
                    certificate_chain_pem: key("tls.crt"),
                    private_key_pem: key("tls.key"),
                },
            );
        }
    }
    let mut endpoints = BTreeMap::new();
    let cluster = stores.networks.cidrs();
    for res in &world.resources {
        let res_ns = res.namespace().unwrap_or_default();
        let upstreams = res
            .spec
            .upstreams
            .iter()
            .chain(res.spec.rules.iter().flat_map(|r| &r.upstreams));
        for svc in upstreams.filter_map(|u| u.service.as_ref()) {
            let Ok(port) = u16::try_from(svc.port) else {
                continue;
            };
            let key = ServicePort::new(&res_ns, &svc.name, port);
            if endpoints.contains_key(&key) {
                continue;
            }
            if let Some(addrs) = stores.endpoints_within(&res_ns, &svc.name, port, &cluster) {
                endpoints.insert(key, addrs);
            }
        }
    }
    GatewayInputs {
        tls,
        endpoints,
        secrets: stores,
        site_keys: site_keys(stores, gateway),
        session_keys: session_keys(stores, world, gateway),
    }
}

/// The data of `gateway`'s session key Secrets in the cache, by tenant (only of the
/// tenants that want one: a Secret about to be pruned contributes nothing).
pub fn session_keys(
    stores: &Stores,
    world: &World,
    gateway: &Gateway,
) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let ns = gateway.namespace().unwrap_or_default();
    session::wanted(world, gateway)
        .into_iter()
        .filter_map(|(tenant, name)| {
            let s = stores.secrets.get(&ns, &name.ok()?)?;
            objects::generated_for(&s, gateway).then(|| (tenant, session::data(&s)))
        })
        .collect()
}

/// Public keys of `gateway`'s sites without spec publicKey, from the generated
/// `<gw>-site-<name>` Secrets in the cache.
pub fn site_keys(stores: &Stores, gateway: &Gateway) -> BTreeMap<String, String> {
    let ns = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let sites = gateway.spec.tunnel.iter().flat_map(|t| &t.sites);
    sites
        .filter(|s| s.public_key.is_none())
        .filter_map(|s| {
            let secret = stores
                .secrets
                .get(&ns, &tunnel::names::site(&name, &s.name))?;
            if !objects::generated_for(&secret, gateway) {
                return None;
            }
            Some((s.name.clone(), tunnel::public_key_of(&secret)?))
        })
        .collect()
}
