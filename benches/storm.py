#!/usr/bin/env python3
"""A busy room under request storms: does anyone but the askers notice?

Starts the release `chatd serve` (2 workers, loopback, default settings) and, after filling the
history with 1,000 lines of ~900 bytes:

* --crowd ordinary clients (default 2,000, over --crowd-procs processes) chat at --chat-rate
  lines a second in all (each line carries its send time) and read everything, in rounds every
  --crowd-period seconds;
* --probes ordinary clients (default 100, one process) read as soon as anything arrives and
  time every chat line: the latency figures are theirs, so they include this harness's own
  scheduling on a machine it shares with the server;
* from the attack on, --who-spammers clients (default 200) send `/who` and --history-spammers
  (default 20) send `/history 1000` at the default rate limit (20 a second), never reading; each
  one cut by the server connects again after --respawn-delay seconds;
* --storms join storms (default 3, spread over the attack): --storm clients (default 500)
  connect at once, wait for their welcome, send `/quit` and wait for the server to close.

Meanwhile `chatd status --json` is asked every half second (timed: the figure includes starting
the `chatd` process) and the supervisor's and workers' RSS are sampled from /proc. Prints chat
latency before, during and after the attack and during the storms, ordinary clients
disconnected (must be 0), spammers cut (expected) and how the room saw them leave, worker
restarts, RSS and the status command's time. Exits 1 if an ordinary client was disconnected or a
worker replaced.

    python3 benches/storm.py [--chatd PATH] [--duration 60] [--log FILE]

Stdlib only (Python 3.11). Client sockets bind source addresses 127.0.0.1..127.0.0.4 so the
ephemeral port range is never the limit; each process raises its open-file limit to the hard
limit and holds well under it.
"""

import argparse
import array
import errno
import json
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [f"127.0.0.{i}" for i in range(1, 5)]
WELCOME = b"* Welcome to "
LATENCY = re.compile(rb"> L(\d+) ")
LEAVE = re.compile(rb"^\* (\S+) left \(([^):]*)", re.M)
HISTORY_LINES = 1000
HISTORY_PAD = "h" * 880
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect_nonblocking(port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((SOURCES[n % len(SOURCES)], 0))
    s.setblocking(False)
    err = s.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        s.close()
        raise OSError(err, os.strerror(err))
    return s


def now_ns():
    return time.monotonic_ns()


# ---------------------------------------------------------------------------------------------
# Child processes. Each one prints `ready` once its clients are in, then reads the schedule
# (`go ATTACK_START ATTACK_END END` in monotonic nanoseconds, plus storm times) from stdin, runs
# until END and prints one JSON report. CLOCK_MONOTONIC is system-wide, so a send time written
# by one process is read by another.
# ---------------------------------------------------------------------------------------------


class Readers:
    """Ordinary clients: connect, wait for the welcome, then read everything. `eager` ones read
    as soon as anything arrives and time chat lines; the others read in rounds."""

    def __init__(self, port, count, first, eager, observer):
        self.sel = selectors.EpollSelector()
        self.eager, self.observer = eager, observer
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)
        self.socks = []
        self.welcomed = 0
        self.lost = []
        self.leaves = {}
        self.recv_t = array.array("q")
        self.lat_ns = array.array("q")
        self.bytes = 0
        self.sel.register(sys.stdin, selectors.EVENT_READ, None)
        self.stdin = b""
        for i in range(count):
            # [socket, welcomed, tail]
            st = [connect_nonblocking(port, first + i), False, b""]
            self.socks.append(st)
            self.sel.register(st[0], selectors.EVENT_READ, st)
            if i % 100 == 99:
                self.pump(0.01)

    def pump(self, timeout):
        """One select; returns lines read from stdin."""
        lines = []
        for key, _ in self.sel.select(timeout):
            st = key.data
            if st is None:
                chunk = os.read(sys.stdin.fileno(), 65536)
                if not chunk:
                    sys.exit(0)
                self.stdin += chunk
                *done, self.stdin = self.stdin.split(b"\n")
                lines += [line.decode() for line in done]
                continue
            self.read(st)
        return lines

    def read(self, st):
        s = st[0]
        try:
            n = s.recv_into(self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self.close(st, f"error {e}")
        if n == 0:
            return self.close(st, "EOF")
        self.bytes += n
        t = now_ns()
        if not st[1]:
            data = st[2] + bytes(self.view[:n])
            nl = data.find(b"\n")
            if nl < 0:
                st[2] = data[-300:]
                return
            if not data.startswith(WELCOME):
                return self.close(st, f"first line {data[:nl]!r}")
            st[1] = True
            self.welcomed += 1
            st[2] = b""
            data = data[nl + 1:]
        elif self.eager or self.observer:
            data = st[2] + bytes(self.view[:n])
        else:
            # Only the end is kept, to say why the server closed (if it ever does).
            st[2] = bytes(self.view[max(0, n - 300):n])
            return
        if not (self.eager or self.observer):
            st[2] = data[-300:]
            return
        nl = data.rfind(b"\n")
        whole, st[2] = data[:nl + 1], data[nl + 1:]
        if self.eager:
            for m in LATENCY.finditer(whole):
                self.recv_t.append(t)
                self.lat_ns.append(t - int(m.group(1)))
        if self.observer and st is self.socks[0]:
            for m in LEAVE.finditer(whole):
                reason = m.group(2).decode()
                self.leaves[reason] = self.leaves.get(reason, 0) + 1

    def close(self, st, why):
        self.lost.append(f"{why}; last bytes {st[2][-120:]!r}")
        self.sel.unregister(st[0])
        st[0].close()
        self.socks.remove(st)

    def say(self, text):
        st = random.choice(self.socks)
        try:
            st[0].send(f"L{now_ns()} {text}\n".encode())
        except (BlockingIOError, InterruptedError):
            pass


def wait_for_go(readers):
    while readers.welcomed < len(readers.socks):
        readers.pump(0.05)
    print("ready", flush=True)
    while True:
        for line in readers.pump(0.05):
            if line.startswith("go "):
                return [int(x) for x in line.split()[1:]]


def role_readers(args, eager):
    count = args.count
    readers = Readers(args.port, count, args.first, eager, observer=eager)
    _, _, _, end, *_ = wait_for_go(readers)
    rate = args.chat_rate
    next_say = now_ns()
    pad = "chat line of an ordinary client " + "x" * 20
    stalls = []  # (when, how long) this process itself did not get to read for over 20 ms
    last = now_ns()
    while now_ns() < end:
        if eager:
            readers.pump(0.01)
            t = now_ns()
            if t - last > 20_000_000:
                stalls.append((t, t - last))
            last = t
        else:
            time.sleep(args.period)
            readers.pump(0)
        if rate > 0:
            t = now_ns()
            while next_say <= t:
                readers.say(pad)
                next_say += int(1e9 / rate)
    print(json.dumps({"clients": count, "welcomed": readers.welcomed, "lost": readers.lost,
                      "bytes": readers.bytes, "leaves": readers.leaves, "stalls": stalls,
                      "recv_t": list(readers.recv_t), "lat_ns": list(readers.lat_ns)}), flush=True)


class Spammers:
    """Clients that send a request at 20 a second and never read. One that the server closes
    (reset or FIN) is replaced after a delay."""

    def __init__(self, port, who, history, respawn_delay):
        self.port = port
        self.kinds = [b"/who\n"] * who + [f"/history {HISTORY_LINES}\n".encode()] * history
        self.respawn_delay = int(respawn_delay * 1e9)
        self.poll = select.poll()
        self.slots = [None] * len(self.kinds)  # (socket, connected at) or None
        self.due = [0] * len(self.kinds)  # when an empty slot connects again
        self.by_fd = {}
        self.connects = 0
        self.cut = [0, 0]  # /who, /history
        self.lifetimes = []
        self.sent = 0

    def tick(self):
        t = now_ns()
        for i, kind in enumerate(self.kinds):
            slot = self.slots[i]
            if slot is None:
                if t >= self.due[i]:
                    s = connect_nonblocking(self.port, i)
                    self.slots[i] = (s, t)
                    self.by_fd[s.fileno()] = i
                    self.poll.register(s.fileno(), POLLRDHUP | select.POLLERR)
                    self.connects += 1
                continue
            try:
                slot[0].send(kind)
                self.sent += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.drop(i)
                # ENOTCONN: still connecting.
        for fd, _ in self.poll.poll(0):
            i = self.by_fd.get(fd)
            if i is not None:
                self.drop(i)

    def drop(self, i):
        s, since = self.slots[i]
        self.poll.unregister(s.fileno())
        del self.by_fd[s.fileno()]
        s.close()
        self.slots[i] = None
        t = now_ns()
        self.due[i] = t + self.respawn_delay
        self.cut[0 if self.kinds[i] == b"/who\n" else 1] += 1
        self.lifetimes.append((t - since) / 1e9)

    def close_all(self):
        for slot in self.slots:
            if slot:
                slot[0].close()


def read_schedule():
    print("ready", flush=True)
    line = sys.stdin.readline()
    assert line.startswith("go "), line
    return [int(x) for x in line.split()[1:]]


def role_spam(args):
    attack_start, attack_end, end, *_ = read_schedule()
    spam = Spammers(args.port, args.who, args.history, args.respawn_delay)
    time.sleep(max(0, attack_start - now_ns()) / 1e9)
    tick = 0.05  # 20 requests a second per client
    next_tick = now_ns()
    while now_ns() < attack_end:
        spam.tick()
        next_tick += int(tick * 1e9)
        time.sleep(max(0, next_tick - now_ns()) / 1e9)
    spam.close_all()
    life = sorted(spam.lifetimes)
    print(json.dumps({"connects": spam.connects, "cut_who": spam.cut[0],
                      "cut_history": spam.cut[1], "requests_sent": spam.sent,
                      "lifetime_p50_s": life[len(life) // 2] if life else None}), flush=True)


def timed_status(chatd, control):
    t = time.monotonic()
    out = subprocess.run([chatd, "status", "--json", "--control", control],
                         capture_output=True, text=True, timeout=120)
    return time.monotonic() - t, (json.loads(out.stdout) if out.returncode == 0 else None)


def storm(port, n, first, chatd, control):
    """n clients connect at once, wait for their welcome, quit and wait for the close; `chatd
    status` is asked again and again meanwhile."""
    sel = selectors.EpollSelector()
    t0 = now_ns()
    asks = []
    stop = threading.Event()

    failed = []

    def ask():
        while not stop.is_set():
            took, st = timed_status(chatd, control)
            asks.append(took)
            if st is None:
                failed.append(took)
            stop.wait(0.05)
    asker = threading.Thread(target=ask)
    asker.start()
    welcomed, closed, errors = [], [], []
    socks = {}
    for i in range(n):
        try:
            s = connect_nonblocking(port, first + i)
        except OSError as e:
            errors.append(str(e))
            continue
        socks[s] = b""
        sel.register(s, selectors.EVENT_READ)
    quit_at = None
    early = 0
    deadline = t0 + int(120e9)
    pending = set(socks)

    def maybe_quit():
        if len(welcomed) + early < len(socks):
            return None
        for c in pending:
            c.send(b"/quit\n")
        return now_ns()
    while pending and now_ns() < deadline:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                data = b""
                errors.append(str(e))
            if not data:
                sel.unregister(s)
                s.close()
                pending.discard(s)
                if socks[s] is not None:
                    errors.append("closed before the welcome")
                    socks[s] = None
                    early += 1
                closed.append(now_ns() - (quit_at or t0))
                quit_at = quit_at or maybe_quit()
                continue
            if socks[s] is not None:
                buf = socks[s] + data
                if b"\n" in buf:
                    if not buf.startswith(WELCOME):
                        errors.append(f"first line {buf[:80]!r}")
                    socks[s] = None
                    welcomed.append(now_ns() - t0)
                    quit_at = quit_at or maybe_quit()
                else:
                    socks[s] = buf
    for s in pending:
        s.close()
    stop.set()
    asker.join()
    welcomed.sort()
    closed.sort()
    return {"clients": n, "welcomed": len(welcomed), "closed": len(closed), "errors": errors[:5],
            "start_ns": t0,
            "all_welcomed_s": welcomed[-1] / 1e9 if welcomed else None,
            "welcome_p50_s": welcomed[len(welcomed) // 2] / 1e9 if welcomed else None,
            "all_closed_after_quit_s": closed[-1] / 1e9 if closed and quit_at else None,
            "status_s": sorted(asks), "status_failed": len(failed), "end_ns": now_ns()}


def role_storm(args):
    _, _, _, *times = read_schedule()
    reports = []
    for k, t in enumerate(times):
        time.sleep(max(0, t - now_ns()) / 1e9)
        reports.append(storm(args.port, args.count, k * args.count, args.chatd, args.control))
    print(json.dumps({"storms": reports}), flush=True)


# ---------------------------------------------------------------------------------------------
# The orchestrator.
# ---------------------------------------------------------------------------------------------


class Server:
    """`chatd serve` in its own process group, its log collected by a thread."""

    def __init__(self, chatd, workers, tmp):
        self.chatd = chatd
        self.control = os.path.join(tmp, "control.sock")
        config = os.path.join(tmp, "chatd.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {workers}\n'
                    f'control_socket = "{self.control}"\n')
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([chatd, "serve", "--config", config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + 30
        with self.cond:
            while True:
                m = next((re.search(r"listening on \S+:(\d+) with", x) for x in self.lines
                          if "listening on" in x), None)
                if m:
                    self.port = int(m.group(1))
                    break
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"chatd did not start: {self.lines[-10:]}")
                self.cond.wait(0.5)

    def _read_log(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def status(self):
        return timed_status(self.chatd, self.control)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def rss_kib(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def schedstat(pid):
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def fill_history(port):
    """1,000 chat lines of ~900 bytes, so that `/history 1000` is ~900 KB: 25 clients each say
    40 lines (the default burst) and read until their own last line comes back."""
    def one(k):
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall("".join(f"P{k}-{i} {HISTORY_PAD}\n" for i in range(40)).encode())
        want = f"> P{k}-39 ".encode()
        tail = b""
        while True:
            data = s.recv(1 << 16)
            if not data:
                raise RuntimeError("history filler disconnected")
            tail = tail[-len(want):] + data
            if want in tail:
                break
        s.close()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(HISTORY_LINES // 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(f"/history {HISTORY_LINES}\n".encode())
    data = b""
    while b" lines fit in one answer" not in data and len(data) < 1 << 20:
        data += s.recv(1 << 16)
    s.close()
    if f"of {HISTORY_LINES} lines fit".encode() not in data:
        raise RuntimeError(f"history not filled: {data[-300:]!r}")


def child(role, port, extra):
    argv = [sys.executable, os.path.abspath(__file__), "--role", role, "--port", str(port)] + extra
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def pct(xs, p):
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chatd", help="use this binary instead of building target/release/chatd")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--crowd", type=int, default=2000)
    ap.add_argument("--crowd-procs", type=int, default=2)
    ap.add_argument("--crowd-period", type=float, default=0.05)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--chat-rate", type=float, default=20, help="room chat lines per second")
    ap.add_argument("--who-spammers", type=int, default=200)
    ap.add_argument("--history-spammers", type=int, default=20)
    ap.add_argument("--respawn-delay", type=float, default=1.0)
    ap.add_argument("--storm", type=int, default=500)
    ap.add_argument("--storms", type=int, default=3)
    ap.add_argument("--baseline", type=float, default=10)
    ap.add_argument("--duration", type=float, default=60, help="seconds of attack")
    ap.add_argument("--cooldown", type=float, default=10)
    ap.add_argument("--log", help="write the server's log to this file")
    ap.add_argument("--json", help="write the raw figures (every probe delivery, every status "
                                   "sample, the client processes' reports) to this file")
    # Child processes.
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--period", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--who", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--history", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--control", help=argparse.SUPPRESS)
    args = ap.parse_args()
    raise_nofile()
    if args.role:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        {"crowd": lambda: role_readers(args, eager=False),
         "probe": lambda: role_readers(args, eager=True),
         "spam": lambda: role_spam(args),
         "storm": lambda: role_storm(args)}[args.role]()
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chatd = args.chatd
    if not chatd:
        log("building chatd (release) ...")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        chatd = os.path.join(ROOT, "target", "release", "chatd")
    with tempfile.TemporaryDirectory(prefix="chatd-storm-bench-") as tmp:
        server = Server(chatd, args.workers, tmp)
        children = []
        try:
            ok = run(server, args, children)
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
            server.stop()
            if args.log:
                with open(args.log, "w") as f:
                    f.write("\n".join(server.lines) + "\n")
    sys.exit(0 if ok else 1)


def run(server, args, children):
    log(f"load average before: {loadavg()}")
    t = time.monotonic()
    fill_history(server.port)
    log(f"history filled ({HISTORY_LINES} lines) in {time.monotonic() - t:.1f}s")
    per_proc = args.crowd // args.crowd_procs
    rate = args.chat_rate / args.crowd_procs
    first = 0
    crowd = []
    for _ in range(args.crowd_procs):
        crowd.append(child("crowd", server.port, ["--count", str(per_proc), "--first", str(first),
                                                  "--period", str(args.crowd_period),
                                                  "--chat-rate", str(rate)]))
        first += per_proc
    probe = child("probe", server.port, ["--count", str(args.probes), "--first", str(first),
                                         "--chat-rate", "0"])
    spam = child("spam", server.port, ["--who", str(args.who_spammers), "--history",
                                       str(args.history_spammers), "--respawn-delay",
                                       str(args.respawn_delay)])
    storm_proc = child("storm", server.port, ["--count", str(args.storm), "--chatd", server.chatd,
                                              "--control", server.control])
    children += crowd + [probe, spam, storm_proc]
    t = time.monotonic()
    for c in children:
        line = c.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a client process did not get ready: {line!r}")
    ordinary = per_proc * args.crowd_procs + args.probes
    log(f"{ordinary} ordinary clients in the room after {time.monotonic() - t:.1f}s")
    _, st = server.status()
    workers0 = {w["pid"] for w in st["workers"]}

    settle = 3e9
    go = now_ns()
    attack_start = go + int(settle + args.baseline * 1e9)
    attack_end = attack_start + int(args.duration * 1e9)
    end = attack_end + int(args.cooldown * 1e9)
    storms = [attack_start + int(args.duration * 1e9 * (k + 1) / (args.storms + 1))
              for k in range(args.storms)]
    schedule = " ".join(str(x) for x in [attack_start, attack_end, end] + storms)
    for c in crowd + [probe]:
        c.stdin.write(f"go 0 0 0 {end}\n")
        c.stdin.flush()
    for c in (spam, storm_proc):
        c.stdin.write(f"go {schedule}\n")
        c.stdin.flush()

    samples = []  # (t, status seconds, clients, worker pids, supervisor RSS, workers' RSS)
    seen_workers = set(workers0)
    loads = []
    while now_ns() < end + int(2e9):
        t = now_ns()
        took, st = server.status()
        pids = [w["pid"] for w in st["workers"]] if st else []
        seen_workers |= set(pids)
        samples.append((t, took, st["clients"] if st else None, pids, rss_kib(server.proc.pid),
                        [rss_kib(p) for p in pids]))
        loads.append(loadavg())
        time.sleep(max(0, 0.5 - (now_ns() - t) / 1e9))

    reports = {}
    for name, c in [("crowd", x) for x in crowd] + [("probe", probe), ("spam", spam),
                                                     ("storm", storm_proc)]:
        out, _ = c.communicate(timeout=300)
        reports.setdefault(name, []).append(json.loads(out.strip().splitlines()[-1]))
    phases = (go + int(settle), attack_start, attack_end, end)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"phases": phases, "samples": samples, "reports": reports}, f)
    return report(server, args, reports, samples, workers0, seen_workers, loads, phases, ordinary)


def report(server, args, reports, samples, workers0, seen_workers, loads, phases, ordinary):
    base_start, attack_start, attack_end, end = phases
    probe = reports["probe"][0]
    storms = reports["storm"][0]["storms"]
    spam = reports["spam"][0]
    # A storm's effect on the room (its join and leave notices) lasts a little past its end.
    windows = [(s["start_ns"], s["end_ns"] + int(1e9)) for s in storms]

    def lat(lo, hi, inside=None):
        xs = sorted(lat for t, lat in zip(probe["recv_t"], probe["lat_ns"])
                    if lo <= t < hi and (inside is None or inside(t)))
        return xs

    def in_storm(t):
        return any(a <= t < b for a, b in windows)

    rows = [("before the attack", lat(base_start, attack_start)),
            ("during the attack", lat(attack_start, attack_end)),
            ("  of which during join storms", lat(attack_start, attack_end, in_storm)),
            ("after the attack", lat(attack_end, end))]
    lost = [x for r in reports["crowd"] + [probe] for x in r["lost"]]
    bad_log = [x for x in server.lines if "tcp_migrate_req" not in x and
               re.search(r"silent for|died|behind on the bus|killing|bad frame|WARN|ERROR", x)]
    st_attack = sorted(s[1] for s in samples if attack_start <= s[0] < attack_end)
    st_storm = sorted(x for s in storms for x in s["status_s"])
    sup = [s[4] for s in samples if s[4]]
    wrk = [sum(x for x in s[5] if x) for s in samples if s[5]]
    hwm_sup = rss_kib(server.proc.pid, "VmHWM")
    last_pids = samples[-1][3]
    sched = [schedstat(p) for p in last_pids]
    hwm_wrk = sum(rss_kib(p, "VmHWM") or 0 for p in last_pids)
    end_wrk = sum(rss_kib(p) or 0 for p in last_pids)
    replaced = seen_workers - workers0

    print(f"\nchatd under request storms: {ordinary} ordinary clients ({args.crowd} reading in "
          f"rounds of {args.crowd_period * 1000:.0f} ms, {args.probes} timing probes), "
          f"{args.chat_rate:g} chat lines/s, {args.workers} workers")
    print(f"attack: {args.duration:g}s of {args.who_spammers} `/who` and {args.history_spammers} "
          f"`/history {HISTORY_LINES}` spammers at 20/s each, never reading (each replaced "
          f"{args.respawn_delay:g}s after the server cuts it), {len(storms)} join storms of "
          f"{args.storm}\n")
    print("| chat-line latency (probes) | lines | p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for name, xs in rows:
        print(f"| {name} | {len(xs):,} | {pct(xs, 0.5) / 1e6:.1f} ms | {pct(xs, 0.99) / 1e6:.1f} ms "
              f"| {(xs[-1] if xs else float('nan')) / 1e6:.1f} ms |")
    print()
    print(f"ordinary clients disconnected: {len(lost)} of {ordinary}"
          + (f" — {lost[:3]}" if lost else ""))
    print(f"spammers: {spam['connects']} connections, {spam['requests_sent']:,} requests sent; "
          f"closed by the server: {spam['cut_who']} `/who`, {spam['cut_history']} `/history` "
          f"(median life {spam['lifetime_p50_s'] or float('nan'):.1f}s)")
    print(f"the room saw clients leave: {json.dumps(probe['leaves'], sort_keys=True)}")
    for k, s in enumerate(storms):
        print(f"join storm {k + 1}: {s['welcomed']}/{s['clients']} welcomed, all within "
              f"{s['all_welcomed_s']:.2f}s (median {s['welcome_p50_s']:.2f}s); all closed "
              f"{s['all_closed_after_quit_s'] or float('nan'):.2f}s after `/quit`"
              + (f"; errors {s['errors']}" if s["errors"] else ""))
    print(f"workers replaced: {len(replaced)}" + (f" (new pids {sorted(replaced)})" if replaced
                                                   else ""))
    print(f"`chatd status` during the attack: median {pct(st_attack, 0.5) * 1000:.0f} ms, max "
          f"{(st_attack[-1] if st_attack else float('nan')) * 1000:.0f} ms; during the storms max "
          f"{(st_storm[-1] if st_storm else float('nan')) * 1000:.0f} ms ({len(st_attack)} and "
          f"{len(st_storm)} asks; failed: {sum(1 for s in samples if s[2] is None)} and "
          f"{sum(s['status_failed'] for s in storms)})")
    print(f"RSS: supervisor max {max(sup) / 1024:.1f} MiB (peak VmHWM {(hwm_sup or 0) / 1024:.1f} "
          f"MiB); workers together: max {max(wrk) / 1024:.1f} MiB (sum of peaks "
          f"{hwm_wrk / 1024:.1f} MiB), {end_wrk / 1024:.1f} MiB at the end")
    print(f"workers since start: {sum(r for r, _ in sched):.1f} s on a CPU, "
          f"{sum(w for _, w in sched):.1f} s runnable but waiting for one (schedstat)")
    print(f"client bytes read: {sum(r['bytes'] for r in reports['crowd'] + [probe]) / 1e6:,.0f} MB")
    print(f"load average during the run: {loads[0]} → {loads[-1]} (max 1-min "
          f"{max(float(x.split()[0]) for x in loads):.2f}); warnings/errors in the server log: "
          f"{len(bad_log)}")
    for line in bad_log[:10]:
        print(f"  {line}")
    return not lost and not replaced


if __name__ == "__main__":
    main()
