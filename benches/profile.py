#!/usr/bin/env python3
"""Where a busy chatd worker spends its CPU: `perf record -g` on the workers during a scenario.

Starts chatd as compare.py does (shipped defaults, rate limit off, `workers = "auto"`), runs one
chatload scenario against it, records the worker processes with call graphs for a few seconds
in the middle of the measurement window, and prints the top of the profile (children included,
so `__send` shows the whole cost of writing to a client, kernel TCP included) and the load
generator's own report line. Needs `perf` (Debian's linux-perf) and root or
kernel.perf_event_paranoid <= 1.

    python3 benches/profile.py [--scenario S2] [--seconds 4] [--top 30] [--keep perf.data]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from compare import ADAPTER, CHATLOAD, build, scenario_args, start_chatd, summary  # noqa: E402


def worker_pids(supervisor):
    out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="S2", choices=["S1", "S2"])
    ap.add_argument("--seconds", type=int, default=4, help="how long perf records")
    ap.add_argument("--top", type=int, default=30, help="profile lines to print")
    ap.add_argument("--keep", metavar="FILE", help="keep perf.data here")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf is not installed (apt-get install linux-perf)")
    build()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_chatd(tmp)
        data = args.keep or os.path.join(tmp, "perf.data")
        try:
            argv = [CHATLOAD, "--port", str(server.port), "--server-pid", str(server.proc.pid),
                    "--quiet"] + ADAPTER["chatd"] + scenario_args(args.scenario, 10, "chatd")
            load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            # Connect, probe and the 2 s warm-up take ~3 s; record inside the 10 s window.
            time.sleep(5)
            pids = ",".join(str(p) for p in worker_pids(server.proc.pid))
            subprocess.run(["perf", "record", "-F", "2000", "-g", "-o", data, "-p", pids, "--",
                            "sleep", str(args.seconds)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out, _ = load.communicate(timeout=120)
        finally:
            server.stop()
        report = subprocess.run(["perf", "report", "-i", data, "--children", "--sort", "symbol",
                                 "--stdio", "-g", "none"], capture_output=True, text=True)
        lines = [l for l in report.stdout.splitlines() if l.strip()[:1].isdigit()]
        print(f"chatd workers, {args.scenario}, {args.seconds} s of samples "
              "(children: a function with everything it calls)")
        print("\n".join(lines[:args.top]))
        reports = [l for l in out.splitlines() if l.startswith("{")]
        if reports:
            print("\nload:", summary(json.loads(reports[-1]), args.scenario))


if __name__ == "__main__":
    main()
