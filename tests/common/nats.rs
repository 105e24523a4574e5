//! A real NATS JetStream cluster on loopback, for the cluster tests.
//!
//! [`NatsCluster::start`] runs `nats-server` (the Debian package; `.ci/run` installs it, and
//! without it these tests fail rather than skip) as N nodes routed to each other, each with
//! its own free ports, `server_name` and JetStream store in a temporary directory, and returns
//! once every node says it is healthy on its monitoring port (`/healthz`). Nodes can be
//! stopped (SIGKILL: a crash) and started again on the same ports and store, to make outages.
//! Dropping the cluster kills every node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_until};

/// How long a node gets to become healthy (JetStream elects its meta leader first).
pub const NATS_READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    /// The address clients connect to (routes and monitoring stay on 127.0.0.1).
    host: String,
    dir: tempfile::TempDir,
    /// One cluster at a time per test binary: three nats-servers per test, several tests at
    /// once on two cores, stall acknowledgements past the tests' one-second outage notice.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where `nats-server` is: on `PATH`, or where Debian puts it.
fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!("nats-server is not installed: `apt-get install nats-server` (.ci/run does)")
    })
}

impl NatsCluster {
    /// Starts `n` nodes (1 to 5) and waits until all are healthy.
    pub fn start(n: usize) -> NatsCluster {
        NatsCluster::start_on(n, "127.0.0.1")
    }

    /// [`NatsCluster::start`] with the nodes taking clients on `host`, a local address (such as
    /// one end of a veth pair into a network namespace of the test's).
    pub fn start_on(n: usize, host: &str) -> NatsCluster {
        let one_at_a_time = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<NatsNode> = (1..=n)
            .map(|i| NatsNode {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                http_port: free_port(),
                config: dir.path().join(format!("n{i}.conf")),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            })
            .collect();
        let routes: Vec<String> =
            nodes.iter().map(|n| format!("nats-route://127.0.0.1:{}", n.cluster_port)).collect();
        for node in &nodes {
            let store = dir.path().join(&node.name);
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: chatd-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    node.cluster_port,
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: {}\nlisten: {host}:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{\n  store_dir: \"{}\"\n}}\n{cluster}",
                node.name,
                node.port,
                node.http_port,
                store.display()
            );
            std::fs::write(&node.config, text).expect("write nats config");
        }
        for node in &mut nodes {
            node.spawn();
        }
        let host = host.to_owned();
        let cluster = NatsCluster { nodes, host, dir, _one_at_a_time: one_at_a_time };
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// `nats://HOST:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}:{}", self.host, self.nodes[i].port)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Kills node `i` (SIGKILL: as a crash or a power cut would).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again, same ports and store, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_healthy(i);
    }

    /// Starts every stopped node, then waits until all are healthy (a JetStream cluster needs a
    /// quorum of its nodes back before any of them is).
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if node.child.is_none() {
                node.spawn();
            }
        }
        for i in 0..self.nodes.len() {
            self.wait_healthy(i);
        }
    }

    /// Waits until node `i` answers `/healthz` with 200: up, JetStream on, its streams current.
    pub fn wait_healthy(&self, i: usize) {
        let node = &self.nodes[i];
        let what = format!("nats node {} to be healthy (log: {})", node.name, node.log.display());
        wait_until(NATS_READY_TIMEOUT, &what, || {
            http_status(node.http_port, "/healthz").filter(|s| *s == 200)
        });
    }

    /// The JetStream monitoring report of node `i` (`/jsz?streams=true`), for the stream's
    /// leader and message counts.
    pub fn jsz(&self, i: usize) -> String {
        http_get(self.nodes[i].http_port, "/jsz?streams=true").unwrap_or_default()
    }

    /// The node that leads stream `name`, by asking each live node.
    pub fn stream_leader(&self, name: &str) -> Option<usize> {
        let needle = format!("\"name\":\"{name}\"");
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let text = self.jsz(i).replace(char::is_whitespace, "");
            if let Some(at) = text.find(&needle) {
                let rest = &text[at..];
                let leader = rest.split("\"leader\":\"").nth(1)?.split('"').next()?;
                return self.nodes.iter().position(|n| n.name == leader);
            }
        }
        None
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl NatsNode {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: the answer, head and body.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let response = http_get(port, path)?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `f` holds or panics after `timeout`, returning how long it took.
pub fn time_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_until(timeout, what, || f().then_some(()));
    start.elapsed()
}
