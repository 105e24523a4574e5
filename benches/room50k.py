#!/usr/bin/env python3
"""50,000 clients in one room, a message every second reaching all of them: latency.

One chatload process holds at most ~19,990 connections here (the per-process descriptor limit is
20,000), so three of them share the clients, each with one sender at a third of a message per
second: together one message a second, delivered to all 50,000. chatd runs with enough workers
that each stays well under the limit. Prints each harness's latency percentiles and the total.

    python3 benches/room50k.py [--clients 50000] [--duration 30] [--workers 4] [--keep DIR]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from compare import CHATD, CHATLOAD, build  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50000)
    ap.add_argument("--harnesses", type=int, default=3)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--connect-rate", type=int, default=1000,
                    help="connections per second per load generator")
    ap.add_argument("--keep", metavar="DIR", help="copy the server log and the reports here")
    args = ap.parse_args()
    build()
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "chatd.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {args.workers}\n'
                    f'control_socket = "{tmp}/chatd.sock"\n'
                    '[chat]\nrate_limit = { messages = 0 }\nhistory_on_join = 0\n')
        log = open(os.path.join(tmp, "chatd.log"), "w+")
        server = subprocess.Popen([CHATD, "serve", "--config", config], stderr=log,
                                  start_new_session=True)
        try:
            port = None
            for _ in range(200):
                log.seek(0)
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
                if m:
                    port = int(m.group(1))
                    break
                time.sleep(0.05)
            assert port, "chatd did not start"
            per = args.clients // args.harnesses
            rate = 1.0 / args.harnesses
            harnesses = []
            for h in range(args.harnesses):
                argv = [CHATLOAD, "--adapter", "line", "--port", str(port),
                        "--server-pid", str(server.pid), "--quiet",
                        "--clients", str(per), "--senders", "1", "--rate", f"{rate:.4f}",
                        "--duration", str(args.duration), "--warmup", "5",
                        "--connect-timeout", "600", "--probe-timeout", "300",
                        "--connect-rate", str(args.connect_rate), "--src-count", "16",
                        "--json-out", os.path.join(tmp, f"h{h}.json")]
                harnesses.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
            reports = []
            for proc in harnesses:
                out, _ = proc.communicate(timeout=1800)
                reports.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                for name in os.listdir(tmp):
                    if name.endswith((".log", ".json")):
                        shutil.copy(os.path.join(tmp, name), args.keep)
    worst = 0.0
    for i, r in enumerate(reports):
        lat, load, conn = r["latency_us"], r["load"], r["connect"]
        worst = max(worst, lat["p99"])
        print(f"harness {i}: {conn['ready']} ready, {load['received_unique']} deliveries, "
              f"loss {load['loss']}, p50 {lat['p50'] / 1000:.1f} ms, p99 {lat['p99'] / 1000:.1f} ms, "
              f"max {lat['max'] / 1000:.1f} ms, server cores {r['cpu_window']['server_cores']:.2f}, "
              f"harness cores {r['cpu_window']['harness_cores']:.2f}, "
              f"machine busy {r['cpu_window']['machine_busy_cores']:.2f} of 2")
    members = reports[0]["load"]["members"]
    print(f"\n{sum(r['connect']['ready'] for r in reports)} clients ({members} room members seen by"
          f" one harness's probe), worst harness p99 {worst / 1000:.1f} ms")


if __name__ == "__main__":
    main()
