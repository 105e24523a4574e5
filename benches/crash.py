#!/usr/bin/env python3
"""Crash-survival benchmark (SPEC §8): what a `kill -9` of the supervisor costs the sessions, and
what keeping them restorable costs every second the server runs.

Pause (`--pause`, needs root, overlayfs and cgroup2, like tests/systemd_sandbox/): boots the
throw-away systemd of tests/tools/systemd-sandbox, installs the release binary with
packaging/chatd.service and a config with --workers workers on a free loopback port, connects
each --sessions count of clients from this process (one epoll loop, benches/reload.py's Fleet),
waits until the room is in sync, then `kill -9`s the service's MainPID with a few clients
chatting. It reports the time from the kill to the first and to the last client reading `* the
server restarted; ...`, the restore rate (sessions per second of that pause), the time until a
line said after the restart reached everyone, and how many clients were disconnected; then
stops the service and goes on with the next count.

Steady-state cost (`--steady`): the same binary run twice per repetition, interleaved, on the
same machine and config: once as outside systemd (nothing stored), once with NOTIFY_SOCKET
pointing at a stand-in for systemd's notify socket in this script, which keeps every
descriptor handed to it as systemd's store would (so chatd keeps its stored state current as it
does under systemd). chatload's S1 and S2 measure deliveries per server CPU-second and S2 p99.

    sudo python3 benches/crash.py --pause --sessions 1000,10000 [--workers 4]
    python3 benches/crash.py --steady [--reps 3] [--duration 8]
    [--chatd PATH]   # skip the build, use this binary

Stdlib only (Python 3.11), plus chatload (built by compare.py's build()).
"""

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (benches/compare.py: chatload runs, chatd configs)
import reload as rl  # noqa: E402  (benches/reload.py: the epoll fleet of line clients)

ROOT = compare.ROOT
SANDBOX = os.path.join(ROOT, "tests", "tools", "systemd-sandbox")
NOTICE = "* the server restarted; lines sent in the last moment may not have reached the room"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Sandbox:
    """A booted systemd-sandbox: `exec` runs a command inside, `down` removes it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-crash-bench-")
        os.rmdir(self.dir)  # `up` wants a fresh directory it creates itself
        subprocess.run([SANDBOX, "up", self.dir], check=True, timeout=120)

    def exec(self, *args, stdin=None, check=True):
        out = subprocess.run([SANDBOX, "exec", self.dir, *args], input=stdin,
                             capture_output=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"{args}: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode(errors="replace")

    def write(self, path, data, mode="644"):
        script = 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"'
        self.exec("sh", "-c", script, "sh", path, mode, stdin=data)

    def prop(self, name):
        return self.exec("systemctl", "show", "-P", name, "chatd.service").strip()

    def down(self):
        subprocess.run([SANDBOX, "down", self.dir], timeout=120)


def install(sb, chatd, port, workers):
    with open(chatd, "rb") as f:
        sb.write("/usr/bin/chatd", f.read(), "755")
    for src, dst in [("packaging/chatd.service", "/etc/systemd/system/chatd.service"),
                     ("packaging/sysusers.d/chatd.conf", "/usr/lib/sysusers.d/chatd.conf")]:
        with open(os.path.join(ROOT, src), "rb") as f:
            sb.write(dst, f.read())
    config = ("[server]\n"
              f'listen = ["127.0.0.1:{port}"]\n'
              f"workers = {workers}\n"
              "backlog = 4096\n"
              'control_socket = "/run/chatd/control.sock"\n'
              "\n[chat]\n"
              "history_on_join = 0\n"
              "rate_limit = { messages = 0 }\n"
              "max_backlog_bytes = 16777216\n")
    sb.write("/etc/chatd/chatd.toml", config.encode())
    sb.exec("systemd-sysusers")
    sb.exec("systemctl", "daemon-reload")


def wait_active(sb, old_pid=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sb.prop("ActiveState") == "active":
            pid = sb.prop("MainPID")
            if pid not in ("0", old_pid):
                return pid
        time.sleep(0.1)
    raise RuntimeError(f"chatd.service not active: {sb.exec('systemctl', 'status', 'chatd', check=False)}")


def pause_once(sb, port, n, sources):
    sb.exec("systemctl", "start", "chatd")
    main_pid = wait_active(sb)
    fleet = rl.Fleet()
    for i in range(n):
        fleet.connect(port, sources[i % len(sources)])
        if i % 200 == 199:
            fleet.pump(0)
    fleet.pump_until(lambda: fleet.welcomed + len(fleet.closed) >= n, 300, "every welcome")
    if fleet.closed:
        raise RuntimeError(f"{len(fleet.closed)} clients failed to join: {fleet.closed[:5]}")
    rl.fan_out(fleet, "sync-0", 0)
    # Lines in flight at the instant of the kill: five clients chatting.
    for s in range(5):
        fleet.send(s, f"in flight {s}")
    fleet.set_marker(NOTICE)
    t0 = time.monotonic()
    sb.exec("kill", "-9", main_pid)
    first = None
    deadline = t0 + 300
    while fleet.have_marker + len(fleet.closed) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {fleet.have_marker}/{n} read the notice")
        fleet.pump(0.01)
        if first is None and fleet.have_marker:
            first = time.monotonic() - t0
    last = time.monotonic() - t0
    closed = len(fleet.closed)
    new_pid = wait_active(sb, main_pid)
    after = rl.fan_out(fleet, "after the restart", n - 1) if not closed else float("nan")
    journal = sb.exec("journalctl", "-u", "chatd", "-o", "cat", "--no-pager", check=False)
    sb.exec("systemctl", "stop", "chatd")
    for st in fleet.socks:
        st[0].close()
    return {"sessions": n, "first": first, "last": last, "after": after, "closed": closed,
            "new_pid": new_pid != main_pid,
            "adopted": [l for l in journal.splitlines() if "kept through the crash" in l][-1:]}


def run_pause(args, chatd):
    counts = [int(c) for c in args.sessions.split(",")]
    need = max(counts) + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    sources = [f"127.0.0.{1 + i}" for i in range(4)]
    port = compare.free_port()
    sb = Sandbox()
    rows = []
    try:
        install(sb, chatd, port, args.workers)
        for n in counts:
            for rep in range(args.reps):
                row = pause_once(sb, port, n, sources)
                log(f"{n} sessions, run {rep + 1}: {row}")
                rows.append(row)
    except Exception:
        journal = sb.exec("journalctl", "-u", "chatd", "-o", "short-precise", "--no-pager",
                          check=False)
        lines = [l for l in journal.splitlines() if ": connect " not in l and ": disconnect " not in l]
        log("chatd's journal without connects, last lines:\n" + "\n".join(lines[-40:]))
        raise
    finally:
        sb.down()
    print(f"\nchatd: kill -9 of the supervisor under systemd, {args.workers} workers\n")
    print("| sessions | first notice (s) | last notice (s) | sessions/s | line after, to all (s) "
          "| disconnected |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sessions']:,} | {r['first'] or float('nan'):.3f} | {r['last']:.3f} | "
              f"{r['sessions'] / r['last']:,.0f} | {r['after']:.3f} | {r['closed']} |")
    for r in rows:
        if r["adopted"]:
            print(f"\nserver log ({r['sessions']:,}): {r['adopted'][0]}")


class NotifyStandIn:
    """What chatd sees of systemd's notify socket: datagrams, descriptors kept as the store
    keeps them (removed on FDSTOREREMOVE=1 with their FDNAME=)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.stored = {}
        self.stopping = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stopping:
            try:
                msg, fds, _, _ = socket.recv_fds(self.sock, 65536, 1024)
            except OSError:
                return
            fields = dict(l.split("=", 1) for l in msg.decode(errors="replace").splitlines()
                          if "=" in l)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTOREREMOVE") == "1":
                for fd in self.stored.pop(name, []):
                    os.close(fd)
            self.stored.setdefault(name, []).extend(fds)

    def close(self):
        self.stopping = True
        self.sock.close()
        for fds in self.stored.values():
            for fd in fds:
                os.close(fd)


def run_steady(args, chatd):
    rows = {}
    with tempfile.TemporaryDirectory(prefix="chatd-steady-bench-") as tmp:
        config = compare.chatd_config(tmp)
        for rep in range(args.reps):
            for mode in ("plain", "stored"):
                for scenario in ("S1", "S2"):
                    env = None
                    stand_in = None
                    if mode == "stored":
                        path = os.path.join(tmp, "notify.sock")
                        if os.path.exists(path):
                            os.unlink(path)
                        stand_in = NotifyStandIn(path)
                        env = {"NOTIFY_SOCKET": path}
                    server = compare.Server(
                        "chatd", [chatd, "serve", "--config", config], 0,
                        ready_re=r"listening on 127\.0\.0\.1:(\d+) with", env=env)
                    try:
                        report = compare.run_chatload(server, scenario, args.duration)
                    finally:
                        server.stop()
                        if stand_in:
                            stored = sum(len(v) for v in stand_in.stored.values())
                            stand_in.close()
                    s = compare.summary(report, scenario)
                    if stand_in:
                        s["stored_fds"] = stored
                    rows.setdefault((mode, scenario), []).append(s)
                    log(f"rep {rep + 1} {mode} {scenario}: {s['per_core_s'] / 1e6:.2f} M/core-s, "
                        f"p99 {s['p99_ms']:.1f} ms, loss {s['loss']}")
    print(f"\nchatd steady state with and without the stored state kept current, "
          f"medians of {args.reps}, {args.duration} s each\n")
    print("| scenario | nothing stored: M deliveries/core-s | stored: M deliveries/core-s | ratio "
          "| p99 ms (nothing / stored) | loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for scenario in ("S1", "S2"):
        plain, stored = rows[("plain", scenario)], rows[("stored", scenario)]
        a = statistics.median(r["per_core_s"] for r in plain)
        b = statistics.median(r["per_core_s"] for r in stored)
        pa = statistics.median(r["p99_ms"] for r in plain)
        pb = statistics.median(r["p99_ms"] for r in stored)
        loss = sum(r["loss"] or 0 for r in plain + stored)
        print(f"| {scenario} | {a / 1e6:.2f} | {b / 1e6:.2f} | {b / a:.3f} | {pa:.1f} / {pb:.1f} "
              f"| {loss} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pause", action="store_true", help="kill -9 under systemd, timed")
    ap.add_argument("--steady", action="store_true", help="S1/S2 with and without the store")
    ap.add_argument("--sessions", default="1000,10000")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--chatd", help="use this binary instead of building target/release/chatd")
    args = ap.parse_args()
    if not (args.pause or args.steady):
        ap.error("say --pause, --steady or both")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chatd = args.chatd
    if not chatd:
        log("building chatd and chatload (release) ...")
        compare.build()
        chatd = os.path.join(ROOT, "target", "release", "chatd")
    if args.steady and not shutil.which(compare.CHATLOAD) and not os.path.exists(compare.CHATLOAD):
        sys.exit(f"no chatload at {compare.CHATLOAD}")
    if args.pause:
        run_pause(args, chatd)
    if args.steady:
        run_steady(args, chatd)


if __name__ == "__main__":
    main()
