//! A real Kubernetes node beside the test control plane: containerd (Debian's package) with
//! runc and the CNI bridge plugin, a kubelet and kube-proxy built from the same Kubernetes
//! modules as the control plane, and kube-router's firewall as the NetworkPolicy enforcer.
//! Pods run as real containers with real IPs; Services work through kube-proxy's iptables rules.
//!
//! ```text
//!   host ── rtn-node0 (empty bridge, 172.30.0.1/32: the node's and the apiserver's address)
//!        └─ rtn-cni0  (CNI bridge, 10.244.0.1/24) ── veth ── pod (10.244.0.x)
//! ```
//!
//! There is one real node per machine: kube-proxy's and kube-router's iptables chains are
//! global to the host, so two would fight. [`NodeLock`] takes a machine-wide lock; a second
//! cluster asking for a real node waits for it (the demo's cluster holds it while it runs).
//!
//! Leaving the host as it was is the hard part, and has one code path, [`cleanup`], used at a
//! normal stop, by the reaper process after a crash of the supervisor (see
//! `rustronaut-cluster reap`), and at the next start if both died. It works from a state file
//! written before anything is changed ([`HostState`]): the iptables/ip6tables rules and ipsets
//! as they were (restored whole), the sysctls the kubelet, kube-proxy and the bridge plugin
//! change (restored), the network namespaces and host paths that existed (only new ones are
//! removed). Container processes are killed through the node's cgroups, so nothing depends on
//! the kubelet or containerd still answering.
//!
//! Facts of this machine kind that the configuration respects (see docs/testing.md): cgroup v1
//! (kubelet `failCgroupV1: false`, cgroupfs driver, runc not crun), no CAP_SYS_RESOURCE
//! (containerd `restrict_oom_score_adj`), no registry (the pause image is built from
//! `build/pause/linux/pause.c` of the `k8s.io/kubernetes` module, images are imported), no
//! `dummy` link type (an empty bridge carries the node address).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the real node.
pub const NODE_NAME: &str = "rtn-node";
/// The node's address, on [`NODE_BRIDGE`]; the apiserver listens here when a real node runs.
pub const NODE_IP: &str = "172.30.0.1";
/// Empty bridge holding [`NODE_IP`].
pub const NODE_BRIDGE: &str = "rtn-node0";
/// The CNI bridge the pods' veths attach to.
pub const CNI_BRIDGE: &str = "rtn-cni0";
/// Pod addresses of the real node (kwok's fake pods use [`FAKE_POD_CIDR`]).
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// Pod addresses of kwok's fake nodes, disjoint from the real node's.
pub const FAKE_POD_CIDR: &str = "10.245.0.0/16";
/// Machine-wide state of the real node: lock, state file, containerd socket and state, IPAM.
pub const RUN_DIR: &str = "/run/rustronaut-node";
/// Label every real node carries, for tests that must land on it.
pub const REAL_NODE_LABEL: &str = "rustronaut.io/real-node";
/// Taint of kwok's fake nodes while a real node runs, so pods land on the real node unless
/// they tolerate it (scale tests do).
pub const FAKE_NODE_TAINT: &str = "kwok.x-k8s.io/node";

/// Sysctls the node's components change (kubelet: panic and overcommit; bridge plugin:
/// forwarding; kube-proxy: route_localnet, conntrack), restored at cleanup.
const SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

/// Host paths the kubelet or containerd may create outside the directories we give them;
/// removed at cleanup only if they did not exist before.
const HOST_PATHS: &[&str] = &[
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
    "/etc/kubernetes",
    "/var/lib/cni",
    "/etc/cni",
    "/opt/cni",
    "/run/netns",
    "/var/run/netns",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/kube-router",
    "/var/lib/kube-router",
];

/// Errors of the real node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Not running as root: the node needs to create interfaces, mounts and iptables rules.
    #[error(
        "a real node needs root (network interfaces, mounts, iptables); run as root or without --real-node"
    )]
    NotRoot,
    /// A program the node needs is missing.
    #[error("{0} not found: {1}")]
    Missing(String, String),
    /// A host command failed.
    #[error("{cmd} failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its error output.
        detail: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The filesystem the node keeps its images, containers and logs on is nearly full: the
    /// kubelet would report DiskPressure and admit no pod, and every test would time out
    /// waiting for one (seen in CI when build caches had filled the disk).
    #[error(
        "only {free_mib} MiB free on the filesystem of {path}; a real node needs at least {needed_mib} MiB there (images, container layers, pod logs; the kubelet refuses pods below {eviction_mib} MiB). Free some space, e.g. old Cargo target directories"
    )]
    LowDisk {
        /// The node's directory.
        path: PathBuf,
        /// Free bytes for an unprivileged writer, in MiB.
        free_mib: u64,
        /// What [`preflight`] asks for, in MiB.
        needed_mib: u64,
        /// The kubelet's eviction threshold, in MiB.
        eviction_mib: u64,
    },
    /// Another real node holds the machine-wide lock.
    #[error(
        "another real node runs on this machine ({holder}); stop it ('make cluster-down') or wait"
    )]
    Busy {
        /// Who holds it, from the state file.
        holder: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a host command; its stdout on success.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NodeError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<(), NodeError> {
    use std::io::Write;
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NodeError::Command {
            cmd: cmd.clone(),
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NodeError::Command {
        cmd: cmd.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NodeError::Command {
            cmd,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What the host looked like before the node changed it: everything [`cleanup`] needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    /// Process id of the supervisor that owns the node.
    pub owner_pid: u32,
    /// The node's scratch directory (kubelet root, containerd root, CNI config, logs).
    pub node_dir: PathBuf,
    /// `iptables-save` output (without counters), restored whole.
    pub iptables: String,
    /// `ip6tables-save` output, restored whole.
    pub ip6tables: String,
    /// nftables tables (`family name`) that existed. iptables-nft creates the `nat`, `mangle`
    /// and `filter` tables on first use, and `iptables-save` prints only existing tables, so a
    /// table that did not exist before is deleted rather than restored.
    pub nft_tables: BTreeSet<String>,
    /// Names of the ipsets that existed.
    pub ipsets: BTreeSet<String>,
    /// Sysctl path (under /proc/sys) -> value.
    pub sysctls: BTreeMap<String, String>,
    /// Network namespaces under /run/netns that existed.
    pub netns: BTreeSet<String>,
    /// [`HOST_PATHS`] that existed.
    pub host_paths: BTreeSet<String>,
    /// Network interfaces that existed.
    pub links: BTreeSet<String>,
}

impl HostState {
    /// Reads the current host state.
    pub fn capture(node_dir: &Path) -> Result<Self, NodeError> {
        let save = |p| run(p, &[]).map(|s| strip_counters(&s)).unwrap_or_default();
        Ok(HostState {
            owner_pid: std::process::id(),
            node_dir: node_dir.to_path_buf(),
            iptables: save("iptables-save"),
            ip6tables: save("ip6tables-save"),
            nft_tables: nft_tables(),
            ipsets: ipsets(),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| {
                    std::fs::read_to_string(Path::new("/proc/sys").join(k))
                        .ok()
                        .map(|v| (k.to_string(), v.trim().to_string()))
                })
                .collect(),
            netns: list_dir("/run/netns"),
            host_paths: HOST_PATHS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| p.to_string())
                .collect(),
            links: links(),
        })
    }

    fn path() -> PathBuf {
        Path::new(RUN_DIR).join("host-state.json")
    }

    /// Writes the state file (before the node changes anything).
    pub fn save(&self) -> Result<(), NodeError> {
        let path = Self::path();
        std::fs::create_dir_all(RUN_DIR).map_err(io_err("create", Path::new(RUN_DIR)))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())
            .map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))
    }

    /// Reads the state file, if a node left one.
    pub fn load() -> Option<Self> {
        let data = std::fs::read(Self::path()).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// `iptables-save` output without comments and packet counters, so two captures of the same
/// rules compare equal.
pub fn strip_counters(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                // ":CHAIN POLICY [packets:bytes]" -> ":CHAIN POLICY [0:0]"
                match l.rsplit_once(' ') {
                    Some((head, _)) => format!("{head} [0:0]"),
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn nft_tables() -> BTreeSet<String> {
    run("nft", &["list", "tables"])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("table "))
                .map(|t| t.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn ipsets() -> BTreeSet<String> {
    run("ipset", &["list", "-n"])
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn links() -> BTreeSet<String> {
    list_dir("/sys/class/net")
}

fn list_dir(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A comparable picture of what a node run may leave behind, for the "host left as it was"
/// test: interfaces, iptables and ip6tables rules, ipsets, sysctls, network namespaces,
/// mounts, and processes of the node's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Everything but processes and mounts, as [`HostState`] captures it.
    pub state: HostState,
    /// Mount points (from /proc/self/mountinfo).
    pub mounts: BTreeSet<String>,
    /// Command names of running node programs (containerd, shims, kubelet, ...).
    pub processes: BTreeSet<String>,
    /// Cgroups named kubepods in any hierarchy.
    pub cgroups: BTreeSet<String>,
}

/// Programs of the node; none may outlive it.
const NODE_PROGRAMS: &[&str] = &[
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "pause",
    "runc",
];

impl HostSnapshot {
    /// Takes the snapshot.
    pub fn take() -> Self {
        let mut state = HostState::capture(Path::new("/")).unwrap_or_default();
        state.owner_pid = 0;
        HostSnapshot {
            state,
            mounts: mounts().into_iter().collect(),
            processes: processes_named(NODE_PROGRAMS)
                .into_iter()
                .map(|(_, name)| name)
                .collect(),
            cgroups: kubepods_cgroups()
                .into_iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }
}

fn mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .collect()
}

/// Mount points in mountinfo escape spaces and backslashes as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// (pid, comm) of live processes whose command name is one of `names`. Zombies are skipped:
/// they are dead and hold nothing but a process table entry until their parent (often init,
/// for the daemonised shims) reaps them.
fn processes_named(names: &[&str]) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z') | Some('X') | None) {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        // comm is cut at 15 bytes ("containerd-shim-runc-v2" -> "containerd-shim").
        if names
            .iter()
            .any(|n| n.starts_with(comm) && !comm.is_empty())
        {
            out.push((pid, comm.to_string()));
        }
    }
    out
}

/// Every `kubepods` cgroup directory in every v1 hierarchy (and the unified one).
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path().join("kubepods");
        if p.is_dir() {
            out.push(p);
        }
        let p = e.path().join("kubepods.slice");
        if p.is_dir() {
            out.push(p);
        }
    }
    out
}

/// Machine-wide lock of the real node: a Unix socket bound to an abstract name
/// (`@rustronaut-node`). Only one process can hold the name, the kernel releases it when the
/// holder exits however it exits, and unlike a lock file it leaves nothing on the host. Held by
/// the supervisor for the node's life and by the reaper while it cleans up.
#[derive(Debug)]
pub struct NodeLock {
    _socket: std::os::unix::net::UnixListener,
}

/// The abstract socket name of [`NodeLock`].
const LOCK_NAME: &[u8] = b"rustronaut-node";

impl NodeLock {
    /// Takes the lock, waiting up to `wait` for another node to finish.
    pub fn acquire(wait: Duration) -> Result<Self, NodeError> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(LOCK_NAME)
            .map_err(io_err("name", Path::new("@rustronaut-node")))?;
        let deadline = Instant::now() + wait;
        loop {
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(socket) => return Ok(NodeLock { _socket: socket }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(io_err("bind", Path::new("@rustronaut-node"))(e)),
            }
            if Instant::now() > deadline {
                let holder = HostState::load()
                    .map(|s| format!("supervisor pid {}, {}", s.owner_pid, s.node_dir.display()))
                    .unwrap_or_else(|| "unknown holder".into());
                return Err(NodeError::Busy { holder });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The kubelet's hard eviction threshold for free disk (node and image filesystems), in MiB.
/// An absolute value rather than the default percentage: 10 % (or even 1 %) of a large
/// developer disk is gigabytes the test node never needs, and crossing it taints the node
/// with DiskPressure so no pod starts.
pub const EVICTION_DISK_MIB: u64 = 256;

/// Free disk [`preflight`] asks for on the node's filesystem, in MiB: the imported images
/// (about 200 MiB), their unpacked layers, pod logs and etcd, with room to spare above
/// [`EVICTION_DISK_MIB`].
pub const NEEDED_DISK_MIB: u64 = 2048;

/// Checks what the node needs from this machine, with a message that says how to get it.
/// `node_dir` is where containerd and the kubelet will keep their state (it must exist).
pub fn preflight(bin_dir: &Path, node_dir: &Path) -> Result<(), NodeError> {
    // SAFETY-free: geteuid has no preconditions, but it is an FFI call.
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(NodeError::NotRoot);
    }
    for (prog, hint) in [
        (
            "containerd",
            "apt-get install containerd (.ci/install-deps.sh)",
        ),
        ("ctr", "apt-get install containerd"),
        ("runc", "apt-get install runc"),
        ("iptables-save", "apt-get install iptables"),
        ("nft", "apt-get install nftables"),
        ("ipset", "apt-get install ipset"),
        ("conntrack", "apt-get install conntrack"),
        ("ip", "apt-get install iproute2"),
    ] {
        if which(prog).is_none() {
            return Err(NodeError::Missing(prog.into(), hint.into()));
        }
    }
    for f in [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(f).exists() {
            return Err(NodeError::Missing(
                f.into(),
                "apt-get install containernetworking-plugins".into(),
            ));
        }
    }
    for b in ["kubelet", "kube-proxy", "kube-router", "coredns", "pause"] {
        if !bin_dir.join(b).exists() {
            return Err(NodeError::Missing(
                bin_dir.join(b).display().to_string(),
                "build the tools with e2e/scripts/tools.sh".into(),
            ));
        }
    }
    let free_mib = free_disk_mib(node_dir)?;
    if free_mib < NEEDED_DISK_MIB {
        return Err(NodeError::LowDisk {
            path: node_dir.to_path_buf(),
            free_mib,
            needed_mib: NEEDED_DISK_MIB,
            eviction_mib: EVICTION_DISK_MIB,
        });
    }
    Ok(())
}

/// Free space on the filesystem of `path` for an unprivileged writer (statvfs `f_bavail`,
/// what the kubelet's `nodefs.available` measures), in MiB.
pub fn free_disk_mib(path: &Path) -> Result<u64, NodeError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io_err("statvfs", path)(std::io::Error::from(std::io::ErrorKind::InvalidInput))
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    #[allow(unsafe_code)]
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the size statvfs(3) fills; it is read only after a 0 return.
    let (rc, st) = unsafe {
        let rc = libc::statvfs(c_path.as_ptr(), st.as_mut_ptr());
        (rc, (rc == 0).then(|| st.assume_init()))
    };
    match (rc, st) {
        (0, Some(st)) => Ok(st.f_bavail.saturating_mul(st.f_frsize) >> 20),
        _ => Err(io_err("statvfs", path)(std::io::Error::last_os_error())),
    }
}

/// Finds a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// The network interface of the default route: forwarded traffic never leaves through it.
fn uplink() -> Option<String> {
    let out = run("ip", &["-4", "route", "show", "default"]).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "dev")
        .and_then(|i| words.get(i + 1))
        .map(|s| s.to_string())
}

/// Prepares the host: state file first (so a crash from here on is cleaned up), then the node
/// address and the egress guard.
pub fn prepare_host(node_dir: &Path) -> Result<HostState, NodeError> {
    let state = HostState::capture(node_dir)?;
    state.save()?;
    for sub in ["containerd", "ipam"] {
        let d = Path::new(RUN_DIR).join(sub);
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    if !state.links.contains(NODE_BRIDGE) {
        run("ip", &["link", "add", NODE_BRIDGE, "type", "bridge"])?;
    }
    let _ = run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_BRIDGE],
    );
    run("ip", &["link", "set", NODE_BRIDGE, "up"])?;
    // The bridge plugin turns on forwarding; pods must never reach beyond this machine.
    if let Some(up) = uplink() {
        run(
            "iptables",
            &[
                "-I",
                "FORWARD",
                "1",
                "-o",
                &up,
                "-m",
                "comment",
                "--comment",
                "rustronaut-node: pods never leave this machine",
                "-j",
                "DROP",
            ],
        )?;
    }
    Ok(state)
}

/// Undoes everything a node did, from its state file: kills the pods' processes (through
/// their cgroups) and the node's programs, unmounts what they mounted, removes the network
/// namespaces, interfaces, iptables rules, ipsets, cgroups and paths they created, and
/// restores the sysctls. Best effort on each step, so one failure does not leave the rest;
/// the returned list says what could not be undone.
pub fn cleanup(state: &HostState) -> Vec<String> {
    let mut problems = Vec::new();
    // 1. Processes: pods first (by cgroup), then the node's programs that are still running;
    // until none is left (a shim reaps its container before it exits itself).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = 0;
        for cg in kubepods_cgroups() {
            left += kill_cgroup_tree(&cg);
        }
        for (pid, _) in processes_named(NODE_PROGRAMS) {
            if is_ours(pid, state) && crate::signal(pid, libc::SIGKILL) {
                left += 1;
            }
        }
        if left == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // 2. Mounts under the node's directories and the network namespaces it created.
    let new_netns: Vec<String> = list_dir("/run/netns")
        .into_iter()
        .filter(|n| !state.netns.contains(n))
        .collect();
    let roots: Vec<String> = [state.node_dir.display().to_string(), RUN_DIR.to_string()]
        .into_iter()
        .chain(new_netns.iter().map(|n| format!("/run/netns/{n}")))
        .collect();
    for _ in 0..3 {
        let mut ms: Vec<String> = mounts()
            .into_iter()
            .filter(|m| {
                roots
                    .iter()
                    .any(|r| m == r || m.starts_with(&format!("{r}/")))
            })
            .collect();
        if ms.is_empty() {
            break;
        }
        // Deepest first.
        ms.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ms {
            umount(&m);
        }
    }
    for n in &new_netns {
        let _ = std::fs::remove_file(format!("/run/netns/{n}"));
    }
    // 3. Interfaces: the pods' veths die with their namespaces; remove our bridges and any
    // interface that appeared while the node ran.
    for link in links() {
        if !state.links.contains(&link) && link != "lo" {
            let _ = run("ip", &["link", "delete", &link]);
        }
    }
    // 4. iptables and ip6tables as they were: tables that existed get their rules back
    // (iptables-restore replaces only the tables in its input), tables that did not are
    // deleted; then the ipsets kube-router created (they can only go once no rule refers to
    // them).
    for (program, saved) in [
        ("iptables-restore", &state.iptables),
        ("ip6tables-restore", &state.ip6tables),
    ] {
        if saved.contains("COMMIT")
            && let Err(e) = run_stdin(program, &[], saved)
        {
            problems.push(e.to_string());
        }
    }
    for table in nft_tables() {
        if !state.nft_tables.contains(&table) {
            let mut args = vec!["delete", "table"];
            args.extend(table.split_whitespace());
            if let Err(e) = run("nft", &args) {
                problems.push(e.to_string());
            }
        }
    }
    for set in ipsets() {
        if !state.ipsets.contains(&set) {
            let _ = run("ipset", &["destroy", &set]);
        }
    }
    // 5. Sysctls.
    for (k, v) in &state.sysctls {
        let path = Path::new("/proc/sys").join(k);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() != v && std::fs::write(&path, v).is_err() {
            problems.push(format!("could not restore sysctl {k}={v}"));
        }
    }
    // 6. Cgroups (now empty) and paths the node created.
    for cg in kubepods_cgroups() {
        remove_cgroup_tree(&cg);
    }
    for p in HOST_PATHS {
        if !state.host_paths.contains(*p) && Path::new(p).exists() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    let _ = std::fs::remove_dir_all(RUN_DIR);
    // What is still there?
    let after = HostSnapshot::take();
    if !after.processes.is_empty() {
        problems.push(format!("processes still running: {:?}", after.processes));
    }
    if !after.cgroups.is_empty() {
        problems.push(format!("cgroups left: {:?}", after.cgroups));
    }
    for link in links() {
        if !state.links.contains(&link) {
            problems.push(format!("interface left: {link}"));
        }
    }
    problems
}

/// A process belongs to the node when its command line names one of the node's directories
/// (containerd and its shims carry the socket path; kubelet and kube-proxy their configs).
fn is_ours(pid: i32, state: &HostState) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(RUN_DIR)
        || (!state.node_dir.as_os_str().is_empty()
            && state.node_dir != Path::new("/")
            && cmdline.contains(&*state.node_dir.to_string_lossy()))
}

/// SIGKILLs every process of a cgroup tree; returns how many were still there.
fn kill_cgroup_tree(dir: &Path) -> usize {
    let mut n = 0;
    for e in walk_dirs(dir) {
        let procs = std::fs::read_to_string(e.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            crate::signal(pid, libc::SIGKILL);
            n += 1;
        }
    }
    n
}

fn remove_cgroup_tree(dir: &Path) {
    let mut dirs = walk_dirs(dir);
    // Children before parents.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

#[allow(unsafe_code)]
fn umount(path: &str) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return;
    };
    // SAFETY: umount2(2) with a valid NUL-terminated path and a flag; no memory is retained.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// The containerd configuration of the node (containerd 1.6/1.7 config version 2).
pub fn containerd_config(node_dir: &Path, pause_ref: &str) -> String {
    let d = node_dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{RUN_DIR}/containerd/state"
[grpc]
  address = "{RUN_DIR}/containerd/containerd.sock"
[ttrpc]
  address = "{RUN_DIR}/containerd/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  enable_cdi = false
  # This machine kind lacks CAP_SYS_RESOURCE: a negative oom_score_adj (the pause container's
  # -998) is refused and every sandbox fails; clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
"#
    )
}

/// The CNI network: a bridge with host-local addresses from [`POD_SUBNET`], hairpin on (a pod
/// reaching itself through its Service), no masquerade (pods never leave the machine).
pub fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "rtn-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": "10.244.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": format!("{RUN_DIR}/ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet configuration.
pub fn kubelet_config(node_dir: &Path, ca: &Path) -> String {
    let d = node_dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine kind is cgroup v1 (hybrid); kubelet 1.35+ refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{RUN_DIR}/containerd/containerd.sock
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
# CoreDNS runs on the node address (see [`corefile`]).
clusterDNS: ["{NODE_IP}"]
failSwapOn: false
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "{EVICTION_DISK_MIB}Mi", imagefs.available: "{EVICTION_DISK_MIB}Mi", nodefs.inodesFree: "1%"}}
serializeImagePulls: false
protectKernelDefaults: false
makeIPTablesUtilChains: true
podLogsDir: {d}/kubelet/pod-logs
maxPods: 110
"#,
        ca = ca.display()
    )
}

/// The cluster DNS: CoreDNS's kubernetes plugin answers `<svc>.<ns>.svc.cluster.local` (and
/// pod and reverse names) from the API; nothing is forwarded, since pods never leave this
/// machine. CoreDNS runs as a host process on the node address, where the kubelet points the
/// pods' resolv.conf, instead of as a pod behind a Service: one less image to build, same
/// answers.
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kc}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"#,
        kc = kubeconfig.display()
    )
}

/// The kube-proxy configuration (iptables mode).
pub fn kube_proxy_config(kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: {kc}}}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {POD_SUBNET}
nodePortAddresses: ["{NODE_IP}/32"]
# Leave the host's conntrack settings alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}}
iptables: {{localhostNodePorts: false}}
"#,
        kc = kubeconfig.display()
    )
}

/// Waits until `check` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_do_not_make_two_saves_differ() {
        let a = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [12:345]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let b = "# Generated at another time\n*filter\n:INPUT ACCEPT [99:1]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        assert_eq!(strip_counters(a), strip_counters(b));
        assert!(strip_counters(a).contains(":INPUT ACCEPT [0:0]"));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    #[test]
    fn configs_name_the_node_directories() {
        let dir = Path::new("/tmp/n");
        let c = containerd_config(dir, "localhost/rustronaut/pause:dev");
        assert!(c.contains("root = \"/tmp/n/containerd/root\""));
        assert!(c.contains("restrict_oom_score_adj = true"));
        let k = kubelet_config(dir, Path::new("/tmp/ca.crt"));
        assert!(k.contains("failCgroupV1: false"));
        assert!(k.contains("podLogsDir: /tmp/n/kubelet/pod-logs"));
        // An absolute eviction threshold, not a share of a possibly huge disk.
        assert!(k.contains("nodefs.available: \"256Mi\""), "{k}");
        assert!(k.contains("imagefs.available: \"256Mi\""), "{k}");
        let cni: serde_json::Value = serde_json::from_str(&cni_config()).unwrap();
        assert_eq!(cni["plugins"][0]["bridge"], CNI_BRIDGE);
    }

    #[test]
    fn free_disk_is_measured_and_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_disk_mib(dir.path()).unwrap();
        // The test itself just created a directory there, so the filesystem has room.
        assert!(free > 0);
        let missing = dir.path().join("absent");
        let err = free_disk_mib(&missing).unwrap_err();
        assert!(err.to_string().contains("statvfs"), "{err}");
        let low = NodeError::LowDisk {
            path: dir.path().into(),
            free_mib: 900,
            needed_mib: NEEDED_DISK_MIB,
            eviction_mib: EVICTION_DISK_MIB,
        };
        let msg = low.to_string();
        assert!(
            msg.contains("only 900 MiB free") && msg.contains("2048 MiB"),
            "{msg}"
        );
    }
}
