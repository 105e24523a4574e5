#!/usr/bin/env python3
"""One room on three chatd hosts over a 3-node NATS JetStream cluster, beside one chatd host and
beside three linked InspIRCd servers, measured by chatload in one run.

    python3 benches/cluster.py [--reps 3] [--scenarios S2,S1] [--duration 10]
                               [--systems single,cluster,irc] [--workers 2] [--host-workers 1]
                               [--nats-procs 0]

Systems (each started afresh for every run, on loopback, and stopped after it):
* single: one chatd host (release build, `--workers` workers, rate limit off);
* cluster: three nats-server nodes routed to each other with JetStream (a store directory each,
  in a temporary directory removed at the end), and three chatd hosts with `[cluster]` (own
  node first in `nats`, then the other two; `replicas = 3`), `--host-workers` workers each;
  `--nats-procs N` runs each nats-server with GOMAXPROCS=N (default: Go's, every core).
  Loaded only once every host's `chatd status --json` says connected and lists all three
  hosts, and a line said on the third host has reached a client of the first;
* irc: three InspIRCd 3 servers linked in a chain A - B - C (benches/peers/inspircd-link-*.conf).
The clients are spread over the system's ports with chatload's --ports, and --server-pid lists
every process of the system (chatd supervisors, whose workers are counted as descendants, and
nats-server nodes; or the InspIRCd servers): CPU is the whole system's. The scenarios are
chatload's S1 and S2 (benches/compare.py, `scenario_args`), interleaved system by system and
repeated; the table gives medians. Prints a markdown table and the targets' check on stdout,
each run's figures on stderr. `--json FILE` keeps every run's summary.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in benches/ from importing compare.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the build, the Server process wrapper, chatload's scenarios)

PEERS = os.path.join(compare.ROOT, "benches", "peers")
HOSTS = 3
READY_TIMEOUT = 60


def wait_for(what, check, timeout=READY_TIMEOUT, every=0.2):
    """Polls `check` until it returns something true; returns it, or raises after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status
    except OSError:
        return None


class System:
    """The processes of one measured system: `ports` for clients, `pids` for CPU."""

    def __init__(self, name, adapter, directory=None):
        self.name, self.adapter, self.servers, self.ports, self.pids = name, adapter, [], [], []
        self.nats_pids = []
        # Logs, configs, JetStream stores: removed by stop().
        self.directory = directory

    def stop(self):
        # In order: chatd hosts first (each publishes its clients' leaves and its HostDown to
        # NATS and waits for them), then the NATS nodes.
        for server in self.servers:
            server.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def chatd_config(directory, workers, cluster=None):
    """chatd's config: the shipped defaults, rate limit off, loopback port 0, a control socket
    in `directory`; `cluster` is the text of a [cluster] table."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "chatd.toml")
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {workers}\n'
                f'control_socket = "{directory}/chatd.sock"\n'
                '[chat]\nrate_limit = { messages = 0 }\n')
        if cluster:
            f.write(cluster)
    return path


def start_chatd(name, config):
    return compare.Server(name, [compare.CHATD, "serve", "--config", config], 0,
                          ready_re=r"listening on 127\.0\.0\.1:(\d+) with")


def start_single(tmp, args):
    system = System("single", compare.ADAPTER["chatd"])
    server = start_chatd("chatd", chatd_config(os.path.join(tmp, "single"), args.workers))
    system.servers, system.ports, system.pids = [server], [server.port], [server.proc.pid]
    return system


def nats_configs(directory, n):
    """Writes the configs of `n` routed nats-server nodes with JetStream, as
    tests/common/nats.rs does: free ports, a server_name and a store directory each."""
    nodes = [{"name": f"n{i + 1}", "port": compare.free_port(), "cluster_port": compare.free_port(),
              "http_port": compare.free_port()} for i in range(n)]
    routes = ", ".join(f"nats-route://127.0.0.1:{node['cluster_port']}" for node in nodes)
    for node in nodes:
        node["config"] = os.path.join(directory, f"{node['name']}.conf")
        with open(node["config"], "w") as f:
            f.write(f"server_name: {node['name']}\nlisten: 127.0.0.1:{node['port']}\n"
                    f"http: 127.0.0.1:{node['http_port']}\n"
                    f"jetstream {{\n  store_dir: \"{os.path.join(directory, node['name'])}\"\n}}\n"
                    f"cluster {{\n  name: chatd-bench\n  listen: 127.0.0.1:{node['cluster_port']}\n"
                    f"  routes: [{routes}]\n}}\n")
    return nodes


def nats_env(args):
    return {"GOMAXPROCS": str(args.nats_procs)} if args.nats_procs > 0 else None


def chatd_status(config):
    out = subprocess.run([compare.CHATD, "status", "--json", "--config", config],
                         capture_output=True, text=True, timeout=10)
    return json.loads(out.stdout) if out.returncode == 0 else None


def cluster_ready(configs):
    """Every host connected to the room and seeing all the hosts in the stream."""
    for config in configs:
        cluster = (chatd_status(config) or {}).get("cluster") or {}
        if not cluster.get("connected") or len(cluster.get("nodes", [])) < len(configs):
            return False
    return True


def line_crosses(first_port, last_port, timeout=30):
    """A client on the first host sees a line said by a client on the last host: the room is
    served across hosts, end to end."""
    marker = f"ready-{os.getpid()}-{time.time_ns()}"
    with socket.create_connection(("127.0.0.1", first_port), timeout=timeout) as a, \
            socket.create_connection(("127.0.0.1", last_port), timeout=timeout) as b:
        deadline = time.time() + timeout
        for sock in (a, b):
            sock.settimeout(timeout)
            read_until(sock, lambda line: line.startswith("* Welcome to "), deadline)
        b.sendall(f"{marker}\n".encode())
        read_until(a, lambda line: marker in line, deadline)
        for sock in (a, b):
            sock.sendall(b"/quit\n")


def read_until(sock, wanted, deadline):
    buffer = b""
    while time.time() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if any(wanted(line.decode(errors="replace")) for line in lines):
            return
    raise RuntimeError("a probe client did not get the line it waited for")


def start_cluster(tmp, args):
    directory = tempfile.mkdtemp(prefix="cluster-", dir=tmp)
    system = System("cluster", compare.ADAPTER["chatd"], directory)
    try:
        nodes = nats_configs(directory, HOSTS)
        for node in nodes:
            server = compare.Server(f"nats-{node['name']}", ["nats-server", "-c", node["config"]],
                                    node["port"], env=nats_env(args))
            system.servers.append(server)
        for node in nodes:
            wait_for(f"nats node {node['name']} healthy",
                     lambda: http_status(node["http_port"], "/healthz") == 200)
        configs = []
        for i in range(HOSTS):
            own_first = nodes[i:] + nodes[:i]
            urls = ", ".join(f'"nats://127.0.0.1:{node["port"]}"' for node in own_first)
            table = (f'[cluster]\nenabled = true\nnats = [{urls}]\nroom = "bench"\n'
                     f'node = "h{i + 1}"\nreplicas = {args.replicas}\n')
            configs.append(chatd_config(os.path.join(directory, f"h{i + 1}"), args.host_workers,
                                        table))
        nats = list(system.servers)
        for i, config in enumerate(configs):
            # Hosts before NATS nodes in the stop order.
            system.servers.insert(i, start_chatd(f"chatd-h{i + 1}", config))
        hosts = system.servers[:HOSTS]
        system.ports = [host.port for host in hosts]
        system.nats_pids = [server.proc.pid for server in nats]
        system.pids = [host.proc.pid for host in hosts] + system.nats_pids
        wait_for("every chatd host connected and seeing the others", lambda: cluster_ready(configs),
                 every=0.5)
        line_crosses(system.ports[0], system.ports[-1])
    except BaseException:
        system.stop()
        raise
    return system


def start_irc(tmp, args):
    if not shutil.which("inspircd"):
        return None
    directory = tempfile.mkdtemp(prefix="irc-", dir=tmp)
    system = System("irc", compare.ADAPTER["inspircd"], directory)
    names = "abc"[:HOSTS]
    env = {"BENCH_TMP": directory, "BENCH_PEERS": PEERS}
    for n in names:
        env[f"BENCH_PORT_{n.upper()}"] = str(compare.free_port())
        env[f"BENCH_LINK_{n.upper()}"] = str(compare.free_port())
    try:
        # B first: A and C link to it.
        for n in sorted(names, key=lambda n: n != "b"):
            server = compare.Server(f"inspircd-{n}", ["inspircd", "--nofork", "--runasroot",
                                                       "--config", os.path.join(PEERS, f"inspircd-link-{n}.conf")],
                                    int(env[f"BENCH_PORT_{n.upper()}"]), env=env)
            system.servers.append(server)
        system.servers.sort(key=lambda s: s.name)
        system.ports = [s.port for s in system.servers]
        system.pids = [s.proc.pid for s in system.servers]
        for port in system.ports:
            wait_for(f"InspIRCd on {port} linked to all {HOSTS}", lambda: irc_linked(port))
    except BaseException:
        system.stop()
        raise
    return system


def irc_linked(port):
    """Registers a client and reads LUSERS: `... on 3 servers` once the links are up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(f"NICK linkchk{port}\r\nUSER linkchk 0 * :x\r\n".encode())
            sock.settimeout(3)
            data = b""
            while b" 251 " not in data or not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.sendall(b"QUIT\r\n")
            return re.search(rf"on {HOSTS} servers".encode(), data) is not None
    except OSError:
        return False


STARTERS = {"single": start_single, "cluster": start_cluster, "irc": start_irc}


def run_chatload(system, scenario, duration):
    ports = ",".join(map(str, system.ports))
    argv = [compare.CHATLOAD, "--ports" if len(system.ports) > 1 else "--port", ports,
            "--server-pid", ",".join(map(str, system.pids)), "--quiet"]
    argv += system.adapter + compare.scenario_args(scenario, duration)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"chatload gave no report: {out.stderr[-2000:]}")


def summary(report, system):
    load, cpu = report.get("load", {}), report.get("cpu_window", {})
    latency = report.get("latency_us", {})
    cores = cpu.get("server_cores") or float("nan")
    dps = load.get("deliveries_per_s", 0.0)
    s = {"deliveries_per_s": dps, "server_cores": cores, "per_core_s": dps / cores,
         "harness_cores": cpu.get("harness_cores"), "machine_busy_cores": cpu.get("machine_busy_cores"),
         "p50_ms": latency.get("p50", float("nan")) / 1000,
         "p99_ms": latency.get("p99", float("nan")) / 1000,
         "max_ms": latency.get("max", float("nan")) / 1000,
         "loss": load.get("loss"), "duplicates": load.get("duplicates"),
         "members": load.get("members"),
         "cross_p99_ms": report.get("latency_us_cross_port", {}).get("p99", float("nan")) / 1000,
         "same_p99_ms": report.get("latency_us_same_port", {}).get("p99", float("nan")) / 1000}
    nats = getattr(system, "nats_pids", [])
    by_pid = cpu.get("server_by_pid", {})
    s["nats_cores"] = sum(by_pid.get(str(pid), {}).get("cores", 0.0) for pid in nats) if nats else None
    return s


def loss_cell(rows):
    losses = sorted(r["loss"] or 0 for r in rows)
    middle = statistics.median(losses)
    return f"{middle:,.0f}" + (f" (one run {losses[-1]:,})" if losses[-1] != middle else "")


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def fmt_ms(value):
    return "–" if value != value else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def load_average():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def report_table(results, scenarios, args):
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared by every server process"
          f" and chatload; medians of {args.reps} runs; single chatd: {args.workers} workers;"
          f" cluster: {HOSTS} chatd hosts × {args.host_workers} workers + {HOSTS} nats-server"
          f" nodes (JetStream, replicas {args.replicas}); irc: {HOSTS} InspIRCd linked A - B - C;"
          f" 1-minute load average {args.load_before} before, {load_average()} after\n")
    print("| scenario, system | deliveries/s | system cores | deliveries per CPU-s | p50 ms |"
          " p99 ms | max ms | p99 across hosts | loss | chatload cores | machine busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = {}
    for scenario in scenarios:
        for name in args.systems.split(","):
            rows = results.get((scenario, name))
            if not rows:
                continue
            m = {k: median(rows, k) for k in rows[0]}
            med[(scenario, name)] = m
            cores = f"{m['server_cores']:.2f}"
            if m.get("nats_cores") == m.get("nats_cores") and m.get("nats_cores") is not None:
                cores += f" (NATS {m['nats_cores']:.2f})"
            print(f"| {scenario} {name} | {m['deliveries_per_s'] / 1e6:.2f} M | {cores} |"
                  f" {m['per_core_s'] / 1e6:.2f} M | {fmt_ms(m['p50_ms'])} | {fmt_ms(m['p99_ms'])} |"
                  f" {fmt_ms(m['max_ms'])} | {fmt_ms(m['cross_p99_ms'])} |"
                  f" {loss_cell(rows)} |"
                  f" {m['harness_cores']:.2f} | {m['machine_busy_cores']:.2f} |")
    print("\nMedians of the runs; loss: the median, and the largest when a run lost more.")
    s2 = {name: m for (sc, name), m in med.items() if sc == "S2"}
    if "cluster" in s2:
        c = s2["cluster"]
        print()
        checks = []
        if "single" in s2:
            limit = 2 * s2["single"]["p99_ms"]
            checks.append((f"cluster S2 p99 {fmt_ms(c['p99_ms'])} ms ≤ 2 × single-host p99"
                           f" ({fmt_ms(limit)} ms)", c["p99_ms"] <= limit))
        if "irc" in s2:
            checks.append((f"cluster S2 p99 {fmt_ms(c['p99_ms'])} ms ≤ linked IRC servers' p99"
                           f" ({fmt_ms(s2['irc']['p99_ms'])} ms)", c["p99_ms"] <= s2["irc"]["p99_ms"]))
        lost = max(r["loss"] or 0 for r in results[("S2", "cluster")])
        checks.append((f"cluster S2 loss {lost} = 0", lost == 0))
        for text, ok in checks:
            print(f"* {'met' if ok else 'MISSED'}: {text}")
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios", default="S2,S1")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--systems", default="single,cluster,irc")
    ap.add_argument("--workers", type=int, default=2, help="workers of the single chatd host")
    ap.add_argument("--host-workers", type=int, default=1, help="workers of each cluster host")
    ap.add_argument("--replicas", type=int, default=HOSTS,
                    help="replicas of the cluster's stream (to see what replication costs)")
    ap.add_argument("--nats-procs", type=int, default=0,
                    help="GOMAXPROCS of each nats-server node (0: Go's default, every core)")
    ap.add_argument("--json", metavar="FILE", help="write every run's summary there")
    ap.add_argument("--chatd", metavar="PATH",
                    help="this chatd binary, not built (default: build target/release/chatd)")
    args = ap.parse_args()
    if args.chatd:
        compare.CHATD = os.path.abspath(args.chatd)
    else:
        compare.build()
    if "cluster" in args.systems and not shutil.which("nats-server"):
        sys.exit("nats-server is not installed (apt-get install nats-server)")
    scenarios = args.scenarios.split(",")
    results, runs = {}, []
    args.load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="chatd-cluster-bench-") as tmp:
        for rep in range(args.reps):
            for scenario in scenarios:
                for name in args.systems.split(","):
                    system = STARTERS[name](tmp, args)
                    if system is None:
                        print(f"skipping {name}: not installed", file=sys.stderr, flush=True)
                        continue
                    try:
                        report = run_chatload(system, scenario, args.duration)
                    finally:
                        system.stop()
                    s = summary(report, system)
                    results.setdefault((scenario, name), []).append(s)
                    runs.append({"rep": rep + 1, "scenario": scenario, "system": name, **s})
                    print(f"rep {rep + 1} {scenario} {name}: " + ", ".join(
                        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()),
                        file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    report_table(results, scenarios, args)


if __name__ == "__main__":
    main()
