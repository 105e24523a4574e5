#!/usr/bin/env python3
"""Side-by-side fan-out benchmark: chatd vs Redis pub/sub vs NATS vs InspIRCd, measured by chatload.

Builds chatd (release) and chatload, starts each server on loopback in the foreground, runs the
scenarios of ../shared/tools/chatload/README.md interleaved (server by server, repeated), and
prints a markdown table of medians and ratios. Peers that are not installed are skipped
(Debian packages: redis-server, nats-server, inspircd).

    python3 benches/compare.py [--reps 3] [--scenarios S1,S2,S3] [--duration 10] [--tls]

--tls adds the TLS form of chatd, Redis and NATS (servers chatd-tls, redis-tls, nats-tls; they
can also be named in --servers) to S1 and S2: a throwaway CA and server certificate from
chatload's peers/tls-certs.sh, chatload with --tls --ca. chatd-tls is skipped, saying why, when
the chatd under test refuses a [tls] listen address.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATLOAD_DIR = os.environ.get("CHATLOAD_DIR", os.path.join(ROOT, "..", "shared", "tools", "chatload"))
CHATLOAD_TARGET = os.environ.get("CHATLOAD_TARGET", "/tmp/chatload-target")
CHATLOAD = os.path.join(CHATLOAD_TARGET, "release", "chatload")
CHATD = os.path.join(ROOT, "target", "release", "chatd")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    os.path.join(CHATLOAD_DIR, "Cargo.toml"), "--target-dir", CHATLOAD_TARGET],
                   check=True)


class Server:
    """A server process started for one scenario run."""

    def __init__(self, name, argv, port, ready_re=None, cwd=None, env=None):
        self.name, self.port = name, port
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=dict(os.environ, **env) if env else None,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if ready_re:
                self.log.seek(0)
                m = re.search(ready_re, self.log.read().decode(errors="replace"))
                if m:
                    self.port = int(m.group(1))
                    return
            else:
                import socket
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def chatd_config(tmp, metrics=False, tls=None):
    """Writes chatd's config: shipped defaults but no rate limit, loopback port 0; with `tls` (the
    certificates) a TLS listener too, on a port of its own."""
    config = os.path.join(tmp, "chatd.toml")
    with open(config, "w") as f:
        f.write('[server]\nlisten = ["127.0.0.1:0"]\nworkers = "auto"\n'
                f'control_socket = "{tmp}/chatd.sock"\n'
                '[chat]\nrate_limit = { messages = 0 }\n')
        if metrics:
            f.write(f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
        if tls:
            f.write(f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{tls["cert"]}"\nkey = "{tls["key"]}"\n')
    return config


def chatd_refuses_tls(tmp, certs, binary=CHATD):
    """Why `binary` cannot serve TLS (its check-config's complaint), or None if it can."""
    config = chatd_config(tmp, tls=certs)
    out = subprocess.run([binary, "check-config", "--config", config], capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()


def start_chatd(tmp, binary=CHATD, name="chatd", metrics=False, tls=None):
    config = chatd_config(tmp, metrics, tls)
    # The TLS listener logs `listening on IP:PORT (tls) with N workers` (SPEC §7).
    ready = r"listening on 127\.0\.0\.1:(\d+) \(tls\) with" if tls else r"listening on 127\.0\.0\.1:(\d+) with"
    server = Server(name, [binary, "serve", "--config", config], 0, ready_re=ready)
    if metrics:
        server.scraper = Scraper(re.search(r"^listen = \"(.*)\"$", open(config).read(), re.M)[1])
    return server


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper:
    """Scrapes chatd's /metrics once a second, as Prometheus would, timing each answer."""

    def __init__(self, address):
        import threading
        self.address, self.times, self.stopping = address, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import urllib.request
        while not self.stopping.wait(1.0):
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as answer:
                answer.read()
            self.times.append(time.perf_counter() - started)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self.times


def start_redis(tmp):
    if not shutil.which("redis-server"):
        return None
    return Server("redis", ["redis-server", os.path.join(CHATLOAD_DIR, "peers", "redis.conf")], 16379)


def start_nats(tmp):
    if not shutil.which("nats-server"):
        return None
    return Server("nats", ["nats-server", "-c", os.path.join(CHATLOAD_DIR, "peers", "nats.conf")], 14222)


def make_certs(tmp):
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (chatload's script)."""
    directory = os.path.join(tmp, "tls")
    subprocess.run(["sh", os.path.join(CHATLOAD_DIR, "peers", "tls-certs.sh"), directory],
                   check=True, capture_output=True)
    return {name: os.path.join(directory, file)
            for name, file in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}


def start_redis_tls(tmp, certs):
    if not shutil.which("redis-server"):
        return None
    return Server("redis-tls", ["redis-server", os.path.join(CHATLOAD_DIR, "peers", "redis-tls.conf"),
                                "--tls-cert-file", certs["cert"], "--tls-key-file", certs["key"],
                                "--tls-ca-cert-file", certs["ca"]], 16380)


def start_nats_tls(tmp, certs):
    if not shutil.which("nats-server"):
        return None
    return Server("nats-tls", ["nats-server", "-c", os.path.join(CHATLOAD_DIR, "peers", "nats-tls.conf")],
                  14223, env={"CHATLOAD_TLS_CERT": certs["cert"], "CHATLOAD_TLS_KEY": certs["key"]})


def start_inspircd(tmp):
    if not shutil.which("inspircd"):
        return None
    # InspIRCd 3.x: --nofork keeps it in the foreground; it refuses to start as root without
    # --runasroot (harmless otherwise). The config reads BENCH_TMP (its log file and pid file go
    # there) and BENCH_PEERS (the MOTD) from the environment; it binds 127.0.0.1:16667.
    peers = os.path.join(ROOT, "benches", "peers")
    return Server("inspircd", ["inspircd", "--nofork", "--runasroot", "--config",
                               os.path.join(peers, "inspircd.conf")], 16667,
                  env={"BENCH_TMP": tmp, "BENCH_PEERS": peers})


# --quickack for InspIRCd: it does not set TCP_NODELAY, so Nagle on its side plus the delayed
# ACK of chatload's receiving sockets produce ~40 ms stalls on loopback (see chatload's README).
# chatd, Redis and NATS all set TCP_NODELAY, so without it the IRC peer alone would be measured
# waiting on the client's ACK timer (server idle, throughput and p99 set by a timer) instead of
# working. Measured S1 by hand (100 clients, 5 s, medians of 9 runs each, 2 cores): with
# --quickack 2.69 M deliveries/s, 0.92 server cores, 3.0 M per core-second, p99 13 ms; without
# 2.41 M/s, 0.81 cores, 3.2 M per core-second, p99 43 ms. Per core-second is about the same
# (within noise; the stalls, if anything, flatter it by batching writes), but throughput and
# tail latency without it measure the artefact, not the server. The fair comparison with the
# NODELAY servers is the one without that artificial stall, so the IRC peer uses --quickack.
ADAPTER = {"chatd": ["--adapter", "line", "--prelude", "/nick x{i}"],
           "redis": ["--adapter", "redis"], "nats": ["--adapter", "nats"],
           "inspircd": ["--adapter", "irc", "--quickack"]}

# Per-server changes of scenario *deadlines* (not of what is measured). S3 for InspIRCd: 10,000
# clients joining one IRC channel means ~50 M JOIN lines (each join is sent to every member;
# InspIRCd walks the channel's member std::map every time) on one server core, with event-loop
# iterations of 10-20 s. Measured: the last client was in the channel after ~65 s with
# --quickack (~47 s without, but then the probe queued ~23 s behind the JOIN backlog), past the
# default 60 s connect / 20 s probe deadlines. The report is taken after the hold, not timed.
DEADLINES = {("inspircd", "S3"): {"--connect-timeout": "150", "--probe-timeout": "90"}}


def scenario_args(name, duration, server=None):
    if name == "S1":
        args = ["--clients", "100", "--senders", "10", "--rate", "max", "--threads", "2",
                "--duration", str(duration), "--warmup", "2"]
    elif name == "S2":
        args = ["--clients", "1000", "--senders", "10", "--rate", "1000",
                "--duration", str(duration), "--warmup", "2"]
    elif name == "S3":
        args = ["--idle", "--clients", "10000", "--duration", str(duration),
                "--connect-timeout", "60", "--probe-timeout", "20"]
    else:
        raise ValueError(name)
    for flag, value in DEADLINES.get((server, name), {}).items():
        args[args.index(flag) + 1] = value
    return args


def run_chatload(server, scenario, duration, certs=None):
    argv = [CHATLOAD, "--port", str(server.port), "--server-pid", str(server.proc.pid), "--quiet"]
    argv += ADAPTER[server.name] + scenario_args(scenario, duration, server.name)
    if server.name.endswith("-tls"):
        # The certificate names 127.0.0.1, chatload's --host: verified, as a client would.
        argv += ["--tls", "--ca", certs["ca"]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"chatload gave no report: {out.stderr[-2000:]}")


def summary(report, scenario):
    load, cpu = report.get("load", {}), report.get("cpu_window", {})
    if scenario == "S3":
        idle = report.get("idle", {})
        return {"rss_per_conn": idle.get("rss_bytes_per_conn"),
                "alive": idle.get("alive_after_hold", idle.get("alive"))}
    dps = load.get("deliveries_per_s", 0.0)
    cores = cpu.get("server_cores") or float("nan")
    tls = report.get("tls", {})
    return {"deliveries_per_s": dps, "server_cores": cores,
            "per_core_s": dps / cores if cores else float("nan"),
            "harness_cores": cpu.get("harness_cores"),
            "p99_ms": report.get("latency_us", {}).get("p99", float("nan")) / 1000,
            "loss": load.get("loss"), "disagree": load.get("order", {}).get("disagree_receivers"),
            "handshake_p50_ms": tls.get("handshake_ms", {}).get("p50") if tls.get("enabled") else None,
            "tls_version": f'{tls.get("version")} {tls.get("cipher_suite")}' if tls.get("enabled") else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios", default="S1,S2,S3")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--servers", default="chatd,redis,nats,inspircd")
    ap.add_argument("--chatd-base", metavar="PATH",
                    help="another chatd binary (e.g. a build of an earlier commit), measured in the "
                         "same run as server 'chatd-base'")
    ap.add_argument("--chatd-metrics", action="store_true",
                    help="also measure chatd with [metrics] on and scraped once a second, as server "
                         "'chatd-metrics'; prints how long each scrape took")
    ap.add_argument("--tls", action="store_true",
                    help="also measure chatd, Redis and NATS over TLS (chatd-tls, redis-tls, "
                         "nats-tls) in S1 and S2")
    args = ap.parse_args()
    build()
    starters = {"chatd": start_chatd, "redis": start_redis, "nats": start_nats,
                "inspircd": start_inspircd}
    servers = args.servers.split(",")
    if args.tls:
        servers += [f"{n}-tls" for n in ("chatd", "redis", "nats")
                    if n in servers and f"{n}-tls" not in servers]
    tls_servers = [n for n in servers if n.endswith("-tls")]
    if args.chatd_metrics:
        ADAPTER["chatd-metrics"] = ADAPTER["chatd"]
        starters["chatd-metrics"] = lambda tmp: start_chatd(tmp, name="chatd-metrics", metrics=True)
        if "chatd-metrics" not in servers:
            servers.append("chatd-metrics")
    if args.chatd_base:
        ADAPTER["chatd-base"] = ADAPTER["chatd"]
        starters["chatd-base"] = lambda tmp: start_chatd(tmp, args.chatd_base, "chatd-base")
        if "chatd-base" not in servers:
            servers.append("chatd-base")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(tmp) if tls_servers else None
        for name in tls_servers:
            ADAPTER[name] = ADAPTER[name[:-len("-tls")]]
        starters["redis-tls"] = lambda tmp: start_redis_tls(tmp, certs)
        starters["nats-tls"] = lambda tmp: start_nats_tls(tmp, certs)
        starters["chatd-tls"] = lambda tmp: start_chatd(tmp, name="chatd-tls", tls=certs)
        if "chatd-tls" in servers:
            refusal = chatd_refuses_tls(tmp, certs)
            if refusal:
                print(f"skipping chatd-tls: this chatd refuses a [tls] listener: {refusal}",
                      file=sys.stderr, flush=True)
                servers.remove("chatd-tls")
        skipped = set()
        for rep in range(args.reps):
            for scenario in args.scenarios.split(","):
                for name in servers:
                    if name in tls_servers and scenario == "S3" or name in skipped:
                        continue
                    try:
                        server = starters[name](tmp)
                    except RuntimeError:
                        if name != "chatd-tls":
                            raise
                        # It took the config but never said it listens with TLS.
                        print("skipping chatd-tls: chatd did not log `listening on IP:PORT (tls)`",
                              file=sys.stderr, flush=True)
                        skipped.add(name)
                        continue
                    if server is None:
                        continue
                    try:
                        report = run_chatload(server, scenario, args.duration, certs)
                    finally:
                        scrapes = server.scraper.stop() if hasattr(server, "scraper") else None
                        server.stop()
                    s = summary(report, scenario)
                    if scrapes:
                        s["scrape_ms_max"] = max(scrapes) * 1000
                        s["scrape_ms_p50"] = statistics.median(scrapes) * 1000
                    results.setdefault((scenario, name), []).append(s)
                    print(f"rep {rep + 1} {scenario} {name}: {s}", file=sys.stderr, flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, medians of {args.reps} runs\n")
    for scenario in args.scenarios.split(","):
        rows = {n: r for (sc, n), r in results.items() if sc == scenario}
        if not rows:
            continue
        med = {n: {k: statistics.median([x[k] for x in r if x[k] is not None] or [float("nan")])
                   for k in r[0] if k != "tls_version"} for n, r in rows.items()}
        if scenario == "S3":
            print(f"| {scenario} | RSS per idle connection (bytes) |\n|---|---|")
            for n, m in med.items():
                print(f"| {n} | {m['rss_per_conn']:.0f} |")
        else:
            print(f"| {scenario} | deliveries/s | server cores | per core-second | p99 ms | loss |"
                  f" order disagreements |\n|---|---|---|---|---|---|---|")
            for n, m in med.items():
                print(f"| {n} | {m['deliveries_per_s'] / 1e6:.2f} M | {m['server_cores']:.2f} |"
                      f" {m['per_core_s'] / 1e6:.2f} M | {m['p99_ms']:.1f} | {m['loss']:.0f} |"
                      f" {m['disagree']:.0f} |")
            for n, m in med.items():
                if "scrape_ms_max" in m:
                    print(f"\n{n}: /metrics scraped once a second answered in {m['scrape_ms_p50']:.1f} ms"
                          f" (median), {m['scrape_ms_max']:.1f} ms at most (medians over runs)")
            for n, r in rows.items():
                if r[0]["tls_version"]:
                    print(f"\n{n}: {r[0]['tls_version']}, handshake p50 {med[n]['handshake_p50_ms']:.1f} ms"
                          f" (all clients connecting at once)")
            # chatd against the peers of its kind (plain with plain, TLS with TLS), and what TLS
            # costs each server.
            pairs = [(ref, n) for ref in ("chatd", "chatd-tls") if ref in med
                     for n in med if n != ref and n.endswith("-tls") == ref.endswith("-tls")]
            pairs += [(n, n[:-len("-tls")]) for n in med if n.endswith("-tls") and n[:-len("-tls")] in med]
            for a, b in pairs:
                print(f"\n{a} / {b}: {med[a]['per_core_s'] / med[b]['per_core_s']:.2f}x per"
                      f" core-second, {med[a]['deliveries_per_s'] / med[b]['deliveries_per_s']:.2f}x"
                      f" deliveries/s, p99 {med[a]['p99_ms']:.1f} vs {med[b]['p99_ms']:.1f} ms")
        print()


if __name__ == "__main__":
    main()
