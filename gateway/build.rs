//! Release builds of the gateway binary on x86_64 Linux (glibc) link the functions a
//! sidecar executes next to each other, in the order of `link/symbol-order.txt`, and pack
//! their relative relocations (below).
//!
//! Why: the kernel maps a program's code into a process 64 KiB at a time (fault-around),
//! so one function touched in a 64 KiB stretch of the 13 MB `.text` makes the whole stretch
//! resident. The ~1,760 functions a sidecar runs were spread over 118 such stretches of
//! LTO's layout: 8.0-9.0 MiB of resident code for an idle sidecar. Gathered at the start of
//! `.text` they take 2.5 MiB (the sidecar's idle RSS 15.0 -> 8.5 MiB; docs/benchmarks.md,
//! "Sidecar vs an nginx sidecar and direct"). Within the list, the request path's functions
//! come first, clustered by caller (`gateway/bench/symbol-order.sh` says how), which the CPU
//! per request feels too: the list gone stale cost the one-worker gateway 3.5 % (issue 19,
//! docs/benchmarks.md). Nothing changes in what the code does: the linker only places these
//! functions first (lld's `--symbol-ordering-file`, Rust emitting one section per
//! function), the rest follows in its usual order.
//!
//! The list holds mangled names, whose hashes change with a dependency's version, the
//! toolchain or this package's own build metadata, and with an item's path: a new `impl`
//! block renumbers the impls after it in its module (adding one to `listener.rs` took
//! `Connection`'s reads and writes, which run on every request, out of the list). Names the
//! build no longer has are skipped silently (`--no-warn-symbol-ordering`), so a stale list
//! costs memory and CPU again (`make bench-sidecar` and `make bench-gateway` print how many
//! of its names the binary has); `gateway/bench/symbol-order.sh` regenerates it from a
//! callgrind run of the sidecar, and should be run whenever Cargo.lock or the toolchain
//! changes, and when a benchmark prints that names are missing.
//!
//! The shipped gateway's profile-guided build (`pgo/cargo.sh`) passes no `--target`, which
//! Cargo would hash into every name, so the list applies to it as to a plain release build.
//!
//! Only where the linker is lld: x86_64-unknown-linux-gnu links with it by default since
//! Rust 1.90 (the workspace needs 1.91). Set `RUSTRONAUT_SYMBOL_ORDER=0` to link without
//! the list (for example with another linker).

use std::env;

fn main() {
    let order = "link/symbol-order.txt";
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rerun-if-env-changed=RUSTRONAUT_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let wanted = var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("RUSTRONAUT_SYMBOL_ORDER") != "0";
    if wanted {
        // The linker reads a copy in OUT_DIR, not the checkout's file: cargo reuses a build
        // script's output across checkouts that share a target directory (a CI clone, a
        // worktree for an A/B benchmark), and a path into a removed checkout failed the link.
        let from = format!("{}/{order}", var("CARGO_MANIFEST_DIR"));
        let path = format!("{}/symbol-order.txt", var("OUT_DIR"));
        if let Err(e) = std::fs::copy(&from, &path) {
            panic!("copying {from} to {path}: {e}");
        }
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={path}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        // Relative relocations packed (DT_RELR, glibc 2.36: Debian 12, the images' base):
        // the dynamic loader reads all of `.rela.dyn` at start-up, 585 KiB that stay
        // resident, where the packed table is 11 KiB (the sidecar's RssFile 6.6 -> 6.1 MiB).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
