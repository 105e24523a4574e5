//! What `/proc` says about the server: its processes (children, workers, states) and its TCP
//! sockets (which process holds which connection, how many sockets listen on a port). The tests
//! check *where* things happen — which worker serves a client, whether a worker was replaced —
//! and only the kernel can tell that without asking the server itself.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------------------------
// /proc: processes
// ---------------------------------------------------------------------------------------------

/// Direct children of `pid` (from every thread's `children` file).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// All descendants of `pid` (children, their children, …).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// argv of a process (empty if gone).
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Is `pid` a live chatd worker (argv[1] == "worker")?
pub fn is_chatd_worker(pid: i32) -> bool {
    let argv = cmdline(pid);
    argv.get(1).map(String::as_str) == Some("worker") && process_alive(pid)
}

/// Children of the supervisor `pid` that are workers, sorted. A child that is forked but not yet
/// exec'd (argv still `serve`) is not counted.
pub fn worker_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|&c| is_chatd_worker(c)).collect()
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, `Z`, …), `None` if the pid is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is in parentheses and may contain spaces; the state follows the last ')'.
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// Running or sleeping or stopped — not gone, not a zombie.
pub fn process_alive(pid: i32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

// ---------------------------------------------------------------------------------------------
// /proc: sockets
// ---------------------------------------------------------------------------------------------

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Debug)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel state number: 0x01 ESTABLISHED, 0x0A LISTEN, …
    pub state: u8,
    /// 0 for a connection still in an accept queue (no file yet).
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host byte order.
    let ip: IpAddr = match ip.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes()).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// All TCP sockets of this network namespace (IPv4 and IPv6 tables).
pub fn tcp_table() -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
                parse_proc_addr(f[1]),
                parse_proc_addr(f[2]),
                u8::from_str_radix(f[3], 16),
                f[9].parse::<u64>(),
            ) else {
                continue;
            };
            out.push(TcpEntry { local, remote, state, inode });
        }
    }
    out
}

/// Inodes of the sockets open in `pid` (from `/proc/PID/fd/*` → `socket:[INODE]`).
pub fn socket_inodes_of(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(inode) = n.parse() {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// For each client port: the pid among `pids` that holds the server side of that connection
/// (ESTABLISHED, local port `server_port`, remote port = the client's port). One `/proc` scan.
pub fn workers_of(client_ports: &[u16], server_port: u16, pids: &[i32]) -> Vec<Option<i32>> {
    let mut inode_by_port: HashMap<u16, u64> = HashMap::new();
    for e in tcp_table() {
        if e.state == TCP_ESTABLISHED && e.local.port() == server_port && e.inode != 0 {
            inode_by_port.insert(e.remote.port(), e.inode);
        }
    }
    let mut owner: HashMap<u64, i32> = HashMap::new();
    for &pid in pids {
        for inode in socket_inodes_of(pid) {
            owner.entry(inode).or_insert(pid);
        }
    }
    client_ports
        .iter()
        .map(|p| inode_by_port.get(p).and_then(|inode| owner.get(inode)).copied())
        .collect()
}

/// The pid among `worker_pids` serving the client whose local port is `client_local_port`.
pub fn worker_of(client_local_port: u16, server_port: u16, worker_pids: &[i32]) -> Option<i32> {
    workers_of(&[client_local_port], server_port, worker_pids)[0]
}

/// Number of distinct listening sockets bound to exactly `addr`.
pub fn listening_sockets(addr: SocketAddr) -> usize {
    tcp_table()
        .into_iter()
        .filter(|e| e.state == TCP_LISTEN && e.local == addr)
        .map(|e| e.inode)
        .collect::<HashSet<_>>()
        .len()
}

/// Can this machine bind `[::1]`?
pub fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}
