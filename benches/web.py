#!/usr/bin/env python3
"""Web clients beside plain TCP clients: what a WebSocket session costs chatd.

For each kind of client (plain TCP on `listen`, WebSocket on `[web] listen`), in one run, each
on a fresh `chatd serve` (release build, 2 workers, loopback, rate limit off,
`history_on_join = 0`):

* S3, idle: --idle clients (default 5,000) connect, are welcomed and read every join notice
  until the room is quiet for a second; the RSS of the supervisor and the workers together,
  minus what it was with no client, divided by the number of clients, is the cost of one idle
  session.
* S1, fan-out: --clients clients (default 100) of which --senders (default 10) send --rate
  lines a second in all (open loop, ~40-byte lines); every client reads everything. Over a
  --duration window (default 10 s, after 2 s of warm-up) it counts the lines delivered and the
  CPU time of the supervisor and workers (utime + stime from /proc): deliveries per chatd
  CPU-second. Both kinds run at the same rate, so the ratio compares the server's work per
  delivery under the same load.

The WebSocket clients are written here (stdlib only: the upgrade request, masked text frames);
chatd's frames to them are unmasked text frames of one line, counted by their first byte
(0x81, which no ASCII line and no length under 126 can contain).

    python3 benches/web.py [--chatd PATH] [--idle 5000] [--rate 1000] [--duration 10]
"""

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [f"127.0.0.{i}" for i in range(1, 5)]
TICK = os.sysconf("SC_CLK_TCK")
MASK = bytes([0x37, 0xA1, 0x5C, 0x02])


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Server:
    """`chatd serve` with a plain and a web listener, in its own process group."""

    def __init__(self, chatd, tmp):
        self.chatd = chatd
        self.control = os.path.join(tmp, "control.sock")
        config = os.path.join(tmp, "chatd.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n'
                    f'control_socket = "{self.control}"\n'
                    '[chat]\nhistory_on_join = 0\nrate_limit = { messages = 0 }\n'
                    '[web]\nlisten = ["127.0.0.1:0"]\n')
        self.proc = subprocess.Popen([chatd, "serve", "--config", config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            st = self.status()
            if st and st.get("web_listen") and len(st.get("workers", [])) == 2:
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chatd did not start")
            time.sleep(0.1)
        self.plain = int(st["listen"][0].rsplit(":", 1)[1])
        self.web = int(st["web_listen"][0].rsplit(":", 1)[1])
        self.pids = [self.proc.pid] + [w["pid"] for w in st["workers"]]

    def status(self):
        out = subprocess.run([self.chatd, "status", "--json", "--control", self.control],
                             capture_output=True)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def rss_kib(self):
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        return total

    def cpu_s(self):
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / TICK

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def masked_text(line):
    data = line.encode()
    assert len(data) < 126
    key = int.from_bytes((MASK * (len(data) // 4 + 1))[:len(data)], "big")
    body = (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")
    return bytes([0x81, 0x80 | len(data)]) + MASK + body


class Clients:
    """`n` clients of one kind, read with one selector; counts the lines they receive."""

    def __init__(self, kind, port, n):
        self.kind = kind
        self.sel = selectors.EpollSelector()
        self.socks = []
        self.lines = 0
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((SOURCES[i % len(SOURCES)], 0))
            s.connect(("127.0.0.1", port))
            if kind == "web":
                s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                if not head.startswith(b"HTTP/1.1 101 "):
                    raise RuntimeError(f"upgrade refused: {head[:200]!r}")
                self.lines += head.split(b"\r\n\r\n", 1)[1].count(b"\x81")
            s.setblocking(False)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ)
            if i % 200 == 199:
                self.pump(0)

    def pump(self, timeout):
        """Reads whatever is there (waiting up to `timeout`); returns the bytes read."""
        got = 0
        sep = b"\x81" if self.kind == "web" else b"\n"
        for key, _ in self.sel.select(timeout):
            try:
                data = key.fileobj.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("a client was disconnected")
            got += len(data)
            self.lines += data.count(sep)
        return got

    def quiet(self, seconds=1.0):
        """Reads until nothing arrives for `seconds`."""
        last = time.monotonic()
        while time.monotonic() - last < seconds:
            if self.pump(0.1):
                last = time.monotonic()

    def send(self, i, line):
        data = masked_text(line) if self.kind == "web" else (line + "\n").encode()
        try:
            self.socks[i].send(data)
        except BlockingIOError as e:
            raise RuntimeError("a sender's socket is full: the rate is too high") from e

    def close(self):
        for s in self.socks:
            s.close()
        self.sel.close()


def idle(chatd, kind, n):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(chatd, tmp)
        try:
            base = server.rss_kib()
            clients = Clients(kind, server.web if kind == "web" else server.plain, n)
            clients.quiet()
            rss = server.rss_kib()
            st = server.status()
            if st["clients"] != n:
                raise RuntimeError(f"status counts {st['clients']} clients, not {n}")
            clients.close()
            return {"base_kib": base, "rss_kib": rss, "per_client_b": (rss - base) * 1024 / n}
        finally:
            server.stop()


def fanout(chatd, kind, n, senders, rate, duration):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(chatd, tmp)
        try:
            clients = Clients(kind, server.web if kind == "web" else server.plain, n)
            clients.quiet(0.5)
            start = time.monotonic()
            warm, end = start + 2, start + 2 + duration
            sent, seq = 0, 0
            measuring = False
            while True:
                now = time.monotonic()
                if not measuring and now >= warm:
                    measuring, lines0, cpu0, t0 = True, clients.lines, server.cpu_s(), now
                if now >= end:
                    lines1, cpu1, t1 = clients.lines, server.cpu_s(), now
                    break
                due = int((now - start) * rate)
                while sent < due:
                    seq += 1
                    clients.send(seq % senders, f"L{seq:09d} {'x' * 28}")
                    sent += 1
                clients.pump(0.002)
            clients.close()
            deliveries, cpu = lines1 - lines0, cpu1 - cpu0
            return {"deliveries_per_s": deliveries / (t1 - t0), "chatd_cores": cpu / (t1 - t0),
                    "deliveries_per_cpu_s": deliveries / cpu if cpu else float("nan")}
        finally:
            server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chatd", default=os.path.join(ROOT, "target", "release", "chatd"))
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000, help="lines a second, all senders")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = {}
    for kind in ("plain", "web"):
        log(f"S3 idle, {args.idle} {kind} clients")
        results[f"s3_{kind}"] = idle(args.chatd, kind, args.idle)
    for kind in ("plain", "web"):
        log(f"S1 fan-out, {args.clients} {kind} clients, {args.rate} lines/s")
        results[f"s1_{kind}"] = fanout(args.chatd, kind, args.clients, args.senders, args.rate,
                                       args.duration)
    print(f"| S3: {args.idle} idle clients | chatd RSS per client |")
    print("|---|---|")
    for kind in ("plain", "web"):
        print(f"| {kind} | {results[f's3_{kind}']['per_client_b']:.0f} bytes |")
    print(f"\n| S1: {args.clients} clients, {args.senders} senders, {args.rate} lines/s"
          " | deliveries/s | chatd cores | deliveries per CPU-second |")
    print("|---|---|---|---|")
    for kind in ("plain", "web"):
        r = results[f"s1_{kind}"]
        print(f"| {kind} | {r['deliveries_per_s']:,.0f} | {r['chatd_cores']:.2f} |"
              f" {r['deliveries_per_cpu_s']:,.0f} |")
    ratio = results["s1_web"]["deliveries_per_cpu_s"] / results["s1_plain"]["deliveries_per_cpu_s"]
    print(f"\nweb/plain deliveries per CPU-second: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        if e.errno == errno.EMFILE:
            sys.exit("out of file descriptors: lower --idle")
        raise
