#!/usr/bin/env python3
"""S3 for TLS: what an idle TLS connection costs a chatd worker, beside an idle plain one.

Starts chatd (one worker, a plain and a TLS listener, a throwaway certificate from chatload's
peers/tls-certs.sh), then opens N plain connections and N TLS 1.3 connections (each a full
handshake, certificate verified) and reads the worker's VmRSS from /proc after each batch, once
the handshakes are done, the join notices read and the worker has had its quiet ticks (it frees
idle buffers and an idle session's record keys on its 1-second tick). Repeated --reps times,
each with a fresh server; prints the medians as bytes per connection.
"""

import argparse
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATLOAD_DIR = os.environ.get("CHATLOAD_DIR", os.path.join(ROOT, "..", "shared", "tools", "chatload"))
QUIET = 3.0  # seconds: more than two worker ticks, so an idle session's keys are let go


def make_certs(tmp):
    directory = os.path.join(tmp, "tls")
    subprocess.run(["sh", os.path.join(CHATLOAD_DIR, "peers", "tls-certs.sh"), directory],
                   check=True, capture_output=True)
    return [os.path.join(directory, f) for f in ("ca.pem", "server.pem", "server.key")]


def worker_rss_kib(pid):
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for child in children:
        with open(f"/proc/{child}/status") as status:
            total += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return total


def drain(socks):
    """Reads whatever each connection was sent (welcome, join notices) without waiting."""
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
        except (BlockingIOError, ssl.SSLWantReadError):
            pass


def quiet(pid, socks):
    drain(socks)
    time.sleep(QUIET)
    drain(socks)
    time.sleep(QUIET)
    return worker_rss_kib(pid)


def one_run(chatd, tmp, certs, n):
    ca, cert, key = certs
    conf = os.path.join(tmp, "chatd.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol_socket = "{tmp}/c.sock"\n'
                f'[chat]\nhistory_on_join = 0\n'
                f'[tls]\nlisten = ["127.0.0.1:0"]\ncert = "{cert}"\nkey = "{key}"\n')
    log_path = os.path.join(tmp, "chatd.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen([chatd, "serve", "--config", conf], stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        ports = []
        while len(ports) < 2 and time.time() < deadline:
            time.sleep(0.1)
            with open(log_path) as log:
                ports = re.findall(r"listening on 127\.0\.0\.1:(\d+)( \(tls\))?", log.read())
        plain_port = next(int(p) for p, tls in ports if not tls)
        tls_port = next(int(p) for p, tls in ports if tls)
        base = quiet(server.pid, [])
        plain = [socket.create_connection(("127.0.0.1", plain_port)) for _ in range(n)]
        after_plain = quiet(server.pid, plain)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        tls = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)),
                               server_hostname="127.0.0.1") for _ in range(n)]
        after_tls = quiet(server.pid, plain + tls)
        suite = tls[0].cipher()[0]
        for s in plain + tls:
            s.close()
        return ((after_plain - base) * 1024 / n, (after_tls - after_plain) * 1024 / n, suite)
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chatd", default=os.path.join(ROOT, "target", "release", "chatd"))
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(args.chatd):
        sys.exit(f"no chatd at {args.chatd}: cargo build --release, or pass --chatd PATH")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.connections + 100)), hard))
    tmp = tempfile.mkdtemp(prefix="chatd-idle-tls.")
    try:
        certs = make_certs(tmp)
        runs = [one_run(args.chatd, tmp, certs, args.connections) for _ in range(args.reps)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for i, (plain, tls, suite) in enumerate(runs):
        print(f"run {i + 1}: plain {plain:.0f} B, TLS {tls:.0f} B per idle connection ({suite})")
    plain = statistics.median(r[0] for r in runs)
    tls = statistics.median(r[1] for r in runs)
    print(f"\n| medians of {len(runs)}, {args.connections} connections each | worker RSS per idle connection |")
    print("|---|---|")
    print(f"| S3 chatd plain | {plain:.0f} B |")
    print(f"| S3 chatd TLS | {tls:.0f} B ({tls - plain:+.0f} B beside plain) |")


if __name__ == "__main__":
    main()
