//! WireGuard tunnels in userspace: a hub in the cluster and a connector at each remote site.
//!
//! Neither side needs a TUN device, NET_ADMIN or root: WireGuard's noise protocol comes from
//! boringtun, and the TCP/IP stack inside each tunnel is smoltcp, in the process.
//!
//! ```text
//!  gateway ─TCP─▶ hub stream endpoint ─┐                         ┌─▶ forwarder ─TCP/UDP─▶ target
//!    (token)                          hub Link ═══WireGuard═══ connector Link
//!                 hub control port ◀──┘        (UDP, roaming)    └── control client (allow list)
//! ```
//!
//! Module map: [`keys`] (key files), [`config`] (plain serde configuration and validation),
//! [`allow`] (allow-list matching), [`proto`] (wire formats), [`auth`] (gateway tokens),
//! [`backoff`], [`link`] (one peer: boringtun + smoltcp, synchronous), [`udp`] (the
//! WireGuard socket: many datagrams per system call), [`engine`] (the task driving a link), [`control`] (allow-list channel), [`hub`], [`connector`], [`client`]
//! (the gateway side), [`admin`] (metrics and status). The design and operations guide is
//! docs/tunnel.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod allow;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod config;
pub mod connector;
pub mod control;
pub mod engine;
pub mod hub;
pub mod keys;
pub mod link;
pub mod proto;
pub mod udp;
