//! `rustronaut-cluster`: runs a local Kubernetes control plane in the foreground and tears it
//! down on SIGINT/SIGTERM/SIGHUP, when a component dies, or (with `--watch-stdin`) when its
//! standard input closes: that is how test binaries tie the cluster's life to their own, even
//! when they are killed.
//!
//! ```text
//! rustronaut-cluster up [--dir D] [--nodes N] [--real-node [--images DIR]] [--watch-stdin] [--keep]
//!     prints `KUBECONFIG=<path>` on stdout once the cluster can run Pods
//! rustronaut-cluster down --dir D
//!     stops the supervisor whose pid is in D/supervisor.pid and waits for it
//! rustronaut-cluster reap --pid P
//!     (started by `up --real-node`) waits for P to exit, then undoes whatever of the real node
//!     P left behind: the crash path of the "leave the host as it was" rule
//! rustronaut-cluster cleanup
//!     undoes a real node left behind now (same code as reap), e.g. after a machine restart
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rustronaut_e2e::controlplane::{Config, ControlPlane};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes control plane for Rustronaut's tests and demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a control plane and supervise it until told to stop.
    Up {
        /// Working directory (created; removed at shutdown unless --keep). Default: a new
        /// directory under $TMPDIR.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of fake kwok nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Also run a real node: containerd, kubelet, kube-proxy and a NetworkPolicy enforcer
        /// (root; one per machine).
        #[arg(long)]
        real_node: bool,
        /// Image tar files to import into the real node (`rustronaut-image build` output).
        #[arg(long, requires = "real_node")]
        images: Option<PathBuf>,
        /// Directory with the Go-built binaries. Default: what e2e/scripts/tools.sh builds.
        #[arg(long, env = rustronaut_e2e::TOOLS_BIN_ENV)]
        bin_dir: Option<PathBuf>,
        /// Shut down when standard input reaches end of file (its writer exited).
        #[arg(long)]
        watch_stdin: bool,
        /// Keep the working directory (logs, etcd data) after shutdown.
        #[arg(long)]
        keep: bool,
    },
    /// Stop the control plane supervised from DIR.
    Down {
        /// The directory given to `up`.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Wait for a supervisor to exit, then clean up the real node it left behind.
    Reap {
        /// The supervisor's process id.
        #[arg(long)]
        pid: u32,
        /// The supervisor's working directory, removed too when the supervisor died without
        /// cleaning up (given when it would have removed it itself).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Clean up a real node that was left behind.
    Cleanup,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            dir,
            nodes,
            real_node,
            images,
            bin_dir,
            watch_stdin,
            keep,
        } => up(
            dir,
            Nodes {
                fake: nodes,
                real: real_node,
                images,
            },
            bin_dir,
            watch_stdin,
            keep,
        ),
        Cmd::Down { dir } => down(dir),
        Cmd::Reap { pid, dir } => reap(pid, dir),
        Cmd::Cleanup => cleanup_now(),
    }
}

/// Which nodes to run.
struct Nodes {
    fake: usize,
    real: bool,
    images: Option<PathBuf>,
}

/// Waits for `pid` to exit, then cleans up the real node if `pid` still owns it (a supervisor
/// that stopped normally removed the state file already), and its working directory `dir`.
fn reap(pid: u32, dir: Option<PathBuf>) -> Result<()> {
    use rustronaut_e2e::node::{HostState, NodeLock, cleanup};
    while pid_alive(&pid.to_string()) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let _lock = NodeLock::acquire(Duration::from_secs(120))?;
    match HostState::load() {
        Some(state) if state.owner_pid == pid => {
            eprintln!(
                "rustronaut-cluster reap: supervisor {pid} died without cleaning up; cleaning up"
            );
            for problem in cleanup(&state) {
                eprintln!("rustronaut-cluster reap: {problem}");
            }
            let _ = std::fs::remove_dir_all(&state.node_dir);
            // The etcd data and logs of the killed control plane (the log of this reaper is
            // in it too: nothing of a cluster nobody can stop any more is kept).
            if let Some(dir) = &dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        _ => {}
    }
    Ok(())
}

fn cleanup_now() -> Result<()> {
    use rustronaut_e2e::node::{HostState, NodeLock, cleanup};
    let _lock = NodeLock::acquire(Duration::from_secs(5))
        .context("a real node is running: stop it with `make cluster-down` instead")?;
    match HostState::load() {
        Some(state) => {
            let problems = cleanup(&state);
            for p in &problems {
                eprintln!("rustronaut-cluster cleanup: {p}");
            }
            if !problems.is_empty() {
                bail!("{} problem(s) left", problems.len());
            }
            eprintln!("rustronaut-cluster cleanup: done");
        }
        None => eprintln!("rustronaut-cluster cleanup: no real node was left behind"),
    }
    Ok(())
}

fn up(
    dir: Option<PathBuf>,
    nodes: Nodes,
    bin_dir: Option<PathBuf>,
    watch_stdin: bool,
    keep: bool,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    if watch_stdin {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }

    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "rustronaut-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        )),
    };
    if dir.join("supervisor.pid").exists() {
        let pid = std::fs::read_to_string(dir.join("supervisor.pid")).unwrap_or_default();
        if pid_alive(pid.trim()) {
            bail!(
                "a cluster is already running from {} (pid {}); stop it with `rustronaut-cluster down --dir {}`",
                dir.display(),
                pid.trim(),
                dir.display()
            );
        }
    }
    // A leftover directory from a killed run would mix old etcd data into the new cluster.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string())?;

    let bin_dir = match bin_dir {
        Some(b) => b,
        None => rustronaut_e2e::build_tools()
            .map_err(anyhow::Error::msg)
            .context("building the control-plane tools")?,
    };
    eprintln!(
        "rustronaut-cluster: starting control plane in {}",
        dir.display()
    );
    let started = Instant::now();
    let result = ControlPlane::start(&Config {
        bin_dir,
        dir: dir.clone(),
        nodes: nodes.fake,
        real_node: nodes.real,
        images_dir: nodes.images,
        reaper: std::env::current_exe().ok(),
        reap_dir: !keep,
    });
    let mut cp = match result {
        Ok(cp) => cp,
        Err(e) => {
            if !keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e).context("control plane failed to start");
        }
    };
    eprintln!(
        "rustronaut-cluster: ready in {:.1}s (apiserver port {}{})",
        started.elapsed().as_secs_f64(),
        cp.apiserver_port(),
        if cp.has_real_node() {
            ", real node rtn-node"
        } else {
            ""
        }
    );
    std::fs::write(dir.join("ready"), "")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "KUBECONFIG={}", cp.kubeconfig().display())?;
    stdout.flush()?;

    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Err(e) = cp.check_alive() {
            break Err(e);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("rustronaut-cluster: stopping");
    cp.stop();
    drop(cp);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let _ = std::fs::remove_file(dir.join("supervisor.pid"));
        let _ = std::fs::remove_file(dir.join("ready"));
    }
    outcome.context("a control-plane component failed")
}

fn pid_alive(pid: &str) -> bool {
    !pid.is_empty() && std::path::Path::new("/proc").join(pid).exists()
}

fn down(dir: PathBuf) -> Result<()> {
    let pid_file = dir.join("supervisor.pid");
    let pid = match std::fs::read_to_string(&pid_file) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            eprintln!(
                "rustronaut-cluster: no cluster running from {}",
                dir.display()
            );
            return Ok(());
        }
    };
    let n: i32 = pid
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    if !rustronaut_e2e::signal(n, libc::SIGTERM) {
        eprintln!("rustronaut-cluster: supervisor {n} is gone");
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(&pid) {
        if Instant::now() > deadline {
            bail!("supervisor {n} did not stop within 60s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("rustronaut-cluster: stopped");
    Ok(())
}
