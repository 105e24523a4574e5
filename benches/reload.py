#!/usr/bin/env python3
"""Rolling-reload benchmark: how long `chatd reload` takes with many connected sessions.

Builds chatd (release), starts it with 4 workers on 127.0.0.1:0 from a temporary directory,
connects --clients sessions (default 10,000; each socket bound to one of --sources loopback
source addresses 127.0.0.1..127.0.0.N, round-robin, so the ephemeral port range is never the
limit), waits until every one is welcomed and the room is in sync, then runs --reloads
`chatd reload` in a row, timing each command (wall clock) and reading the server's own
`reload to generation G done in Xs` log line. Afterwards one client says a marker line and every
session must receive it: nobody may have been disconnected. Prints a table.

    python3 benches/reload.py [--clients 10000] [--reloads 3] [--workers 4] [--sources 4]
                              [--chatd PATH]   # skip the build, use this binary

Stdlib only (Python 3.11). One process, one epoll loop reading every socket (the room's join
notices alone are clients²/2 lines, so the reader only scans for the lines it waits for).
"""

import argparse
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Server:
    """`chatd serve` in its own process group, with its log collected by a thread."""

    def __init__(self, chatd, workers, tmp):
        self.chatd = chatd
        self.control = os.path.join(tmp, "control.sock")
        self.config = os.path.join(tmp, "chatd.toml")
        with open(self.config, "w") as f:
            f.write(
                "[server]\n"
                'listen = ["127.0.0.1:0"]\n'
                f"workers = {workers}\n"
                "backlog = 4096\n"
                f'control_socket = "{self.control}"\n'
                "\n[chat]\n"
                "history_on_join = 0\n"
                "rate_limit = { messages = 0 }\n"
                # 10,000 joins are 10,000 lines for the first client: room for slow reads.
                "max_backlog_bytes = 16777216\n"
            )
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [chatd, "serve", "--config", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        m = self.wait_log(r"listening on (\S+):(\d+) with", 30)
        self.port = int(m.group(2))

    def _read_log(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_log(self, pattern, timeout, start=0):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no log line /{pattern}/; last lines: {self.lines[-10:]}")
                self.cond.wait(min(left, 0.5))

    def run(self, *args, timeout=600):
        return subprocess.run([self.chatd, *args, "--control", self.control],
                              capture_output=True, text=True, timeout=timeout)

    def status(self):
        out = self.run("status", "--json", timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"chatd status failed: {out.stderr}")
        return json.loads(out.stdout)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Fleet:
    """Non-blocking client sockets on one epoll selector. Each one is waiting for its welcome
    line, then for the current marker; everything else it reads is thrown away."""

    def __init__(self):
        self.sel = selectors.EpollSelector()
        self.socks = []
        self.welcomed = 0
        self.marker = None
        self.have_marker = 0
        self.closed = []
        self.received = 0
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)

    def connect(self, port, source):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            raise OSError(err, os.strerror(err))
        # state: [socket, welcomed, has current marker, tail of the last read, index]
        st = [s, False, False, b"", len(self.socks)]
        self.socks.append(st)
        self.sel.register(s, selectors.EVENT_READ, st)

    def set_marker(self, marker):
        self.marker = marker.encode()
        self.have_marker = 0
        for st in self.socks:
            st[2] = False

    def pump(self, timeout):
        """One round of reads."""
        for key, _ in self.sel.select(timeout):
            st = key.data
            s = st[0]
            try:
                n = s.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                self._close(st, f"error {e}")
                continue
            if n == 0:
                self._close(st, "EOF")
                continue
            self.received += n
            data = self.view[:n]
            if not st[1]:
                chunk = st[3] + bytes(data)
                nl = chunk.find(b"\n")
                if nl < 0:
                    st[3] = chunk[-200:]
                    continue
                if not chunk.startswith(b"* Welcome to "):
                    self._close(st, f"first line is not a welcome: {chunk[:nl]!r}")
                    continue
                st[1] = True
                self.welcomed += 1
                data = chunk[nl + 1:]
                st[3] = b""
            if self.marker is not None and not st[2]:
                chunk = st[3] + bytes(data)
                if self.marker in chunk:
                    st[2] = True
                    self.have_marker += 1
                    st[3] = b""
                else:
                    st[3] = chunk[-len(self.marker):]

    def _close(self, st, why):
        self.closed.append((st[4], why))
        self.sel.unregister(st[0])
        st[0].close()

    def pump_until(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; closed: {self.closed[:5]}")
            self.pump(0.05)

    def send(self, index, line):
        self.socks[index][0].sendall(line.encode() + b"\n")


def fan_out(fleet, text, sender):
    """Client `sender` says `text`; returns how long until every client has read it."""
    n = len(fleet.socks)
    fleet.set_marker("> " + text)
    t = time.monotonic()
    fleet.send(sender, text)
    fleet.pump_until(lambda: fleet.have_marker == n, 120, f"{text!r} at every client")
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sources", type=int, default=4, help="loopback source addresses to spread over")
    ap.add_argument("--chatd", help="use this binary instead of building target/release/chatd")
    ap.add_argument("--log", help="write the server's log to this file")
    args = ap.parse_args()
    # `kill` of this script still stops the server (the `finally` below runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        sys.exit(f"open-file limit {hard} is too low for {args.clients} clients")

    chatd = args.chatd
    if not chatd:
        log("building chatd (release) ...")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        chatd = os.path.join(ROOT, "target", "release", "chatd")

    with tempfile.TemporaryDirectory(prefix="chatd-reload-bench-") as tmp:
        server = Server(chatd, args.workers, tmp)
        try:
            run(server, args)
        finally:
            server.stop()
            if args.log:
                with open(args.log, "w") as f:
                    f.write("\n".join(server.lines) + "\n")


def run(server, args):
    fleet = Fleet()
    n = args.clients
    sources = [f"127.0.0.{1 + i}" for i in range(args.sources)]
    t0 = time.monotonic()
    for i in range(n):
        fleet.connect(server.port, sources[i % len(sources)])
        if i % 200 == 199:
            fleet.pump(0)  # keep reading the join notices while connecting
    fleet.pump_until(lambda: fleet.welcomed + len(fleet.closed) >= n, 300, "every welcome")
    if fleet.closed:
        raise RuntimeError(f"{len(fleet.closed)} clients failed to join: {fleet.closed[:5]}")
    connected = time.monotonic() - t0
    # In sync: a marker numbered after every join notice has reached everyone.
    fleet.set_marker("> sync-0")
    fleet.send(0, "sync-0")
    fleet.pump_until(lambda: fleet.have_marker == n, 600, "the room to catch up")
    synced = time.monotonic() - t0
    st = server.status()
    assert st["clients"] == n, st["clients"]
    log(f"{n} clients welcomed in {connected:.1f}s, room in sync after {synced:.1f}s "
        f"({fleet.received / 1e6:.0f} MB of join notices read)")
    fanout_before = fan_out(fleet, "before-reloads", 0)

    rows = []
    for r in range(1, args.reloads + 1):
        before = {w["pid"] for w in st["workers"]}
        gen = st["generation"] + 1
        mark = len(server.lines)
        t = time.monotonic()
        proc = subprocess.Popen([server.chatd, "reload", "--control", server.control],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:  # keep reading while sessions move
            fleet.pump(0.01)
        wall = time.monotonic() - t
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"chatd reload failed: {err.strip()}")
        m = server.wait_log(rf"reload to generation {gen} done in ([\d.]+)s", 30, mark)
        logged = float(m.group(1))
        # Wait for the old generation to exit before the next reload.
        deadline = time.monotonic() + 60
        while True:
            st = server.status()
            pids = {w["pid"] for w in st["workers"]}
            if len(pids) == args.workers and not pids & before and \
                    all(w["generation"] == gen for w in st["workers"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"old workers still listed: {st['workers']}")
            fleet.pump(0.05)
        if fleet.closed:
            raise RuntimeError(f"{len(fleet.closed)} clients disconnected: {fleet.closed[:5]}")
        rows.append((r, gen, out.strip(), wall, logged, st["clients"]))
        log(f"reload {r}: {wall:.3f}s")

    fanout = fan_out(fleet, "after-reloads", n - 1)
    st = server.status()

    print(f"\nchatd rolling reload, {n} sessions, {args.workers} workers, "
          f"{args.sources} source addresses")
    print(f"connect + welcome: {connected:.1f}s; room in sync (every join notice read): "
          f"{synced:.1f}s\n")
    print("| reload | generation | `chatd reload` wall (s) | server log (s) | sessions/s | clients after |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r, gen, _, wall, logged, clients in rows:
        print(f"| {r} | {gen} | {wall:.3f} | {logged:.3f} | {n / logged:,.0f} | {clients} |")
    walls = sorted(w for _, _, _, w, _, _ in rows)
    print(f"\nmedian `chatd reload`: {walls[len(walls) // 2]:.3f}s")
    print(f"after the reloads: {n - len(fleet.closed)}/{n} clients connected, status says "
          f"{st['clients']}; a line from one client reached all {fleet.have_marker} "
          f"in {fanout:.3f}s (before the reloads: {fanout_before:.3f}s); "
          f"disconnected: {len(fleet.closed)}")
    if fleet.closed or fleet.have_marker != n or st["clients"] != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
