//! Bench-only: the smallest Pingora reverse proxy that does what the gateway's benchmark
//! asks of a proxy, and nothing else: every request to one upstream over HTTP/1.1 with
//! Pingora's keep-alive pool, on the same Pingora version, features, rustls backend and
//! release profile as the gateway. It is the "bare Pingora" row of `make bench-gateway`
//! (gateway/bench/run.sh): the ratio gateway / bare Pingora is the cost of everything the
//! gateway adds (routing, authentication, policy, headers, logs, metrics), which issue 19
//! bounds at 1.15x CPU per request.
//!
//! Deliberately no router, no header rewriting, no logging: a reference that did some of
//! the gateway's work would hide part of the gateway's cost.
//!
//! ```text
//! bare-pingora --listen 127.0.0.1:19008 --upstream 127.0.0.1:19001 --threads 1 \
//!              [--tls-listen 127.0.0.1:19028 --cert tls.crt --key tls.key]   (h2 by ALPN)
//!              [--l4-read-buffer BYTES]                                      (plain listener)
//!              [--work-stealing true|false]        (default: false for 1 thread, else true)
//! ```

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOC: rustronaut_alloc_count::Counting = rustronaut_alloc_count::Counting;

/// The gateway's allocator (gateway/src/main.rs), so "CPU vs bare Pingora" compares code, not
/// allocators.
#[cfg(not(feature = "count-allocs"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// Plain HTTP listener.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream (HTTP/1.1, kept alive).
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads (the gateway's `--threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A TLS listener (HTTP/2 or HTTP/1.1 by ALPN), with `--cert` and `--key`.
    #[arg(long, requires_all = ["cert", "key"])]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[arg(long)]
    cert: Option<String>,
    /// PEM private key of the TLS listener.
    #[arg(long)]
    key: Option<String>,
    /// L4 read buffer of the plain listener, bytes (0: none); Pingora's default (64 KiB)
    /// when not given. The gateway's plain HTTP listeners read unbuffered too
    /// (`rustronaut_gateway::plain`); the benchmark holds 10,000 idle connections on both
    /// settings to show what that setting alone changes.
    #[arg(long)]
    l4_read_buffer: Option<usize>,
    /// Tokio's multi-thread scheduler (`true`) or one current-thread runtime per worker
    /// (`false`). By default Pingora's best setting for the thread count: with one worker a
    /// current-thread runtime, as the gateway runs, so the ratio stays the cost of the
    /// gateway's work and not of a runtime setting; with more, `true`, Pingora's own
    /// default. The gateway's workers (`rustronaut_gateway::server::WORK_STEALING`) are
    /// services of one worker each with accept loops of their own, which Pingora's
    /// listening service does not offer; its `false` with more than one worker spawns the
    /// watchers of idle upstream connections on random workers, the cost that layout
    /// avoids.
    #[arg(long)]
    work_stealing: Option<bool>,
}

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    #[cfg(feature = "count-allocs")]
    rustronaut_alloc_count::report_from_env();
    let conf = ServerConf {
        threads: args.threads.max(1),
        work_stealing: args.work_stealing.unwrap_or(args.threads > 1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut svc = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    svc.add_listener(
        ListenerConfig::tcp(args.listen.to_string()).l4_buffer(L4BufferSettings {
            read: args.l4_read_buffer,
            write: None,
        }),
    );
    if let (Some(addr), Some(cert), Some(key)) = (args.tls_listen, &args.cert, &args.key) {
        let mut tls = match TlsSettings::intermediate(cert, key) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("bare-pingora: TLS settings: {e}");
                std::process::exit(2);
            }
        };
        tls.enable_h2();
        svc.add_tls_with_settings(&addr.to_string(), None, tls);
    }
    server.add_service(svc);
    server.bootstrap();
    server.run_forever();
}
