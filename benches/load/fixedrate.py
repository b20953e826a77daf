#!/usr/bin/env python3
"""What a proxy does per request at a fixed rate, side by side: system calls and context
switches (`perf stat` on the proxy's process: `syscalls:sys_enter_*` tracepoints and the
`context-switches` software event, no hardware counters needed) and its CPU ticks, per
thread, while oha sends RATE requests per second over CONNS connections.

At a fixed rate every proxy sleeps between requests, so the wake-ups and parks a request
costs show here, where the saturated run (compare.py, kernel.py) spreads them over many
connections' events.

    python3 benches/load/fixedrate.py [TARGET ...]      # default: haproxy mesh

Targets as compare.py's. Needs oha, perf (Debian: linux-perf), nginx; run as root (the
tracepoints). Knobs: ROUNDS=2 SECS=5, and compare.py's (RATE=2000, CONNS=50, PROXY_CPU,
LOAD_CPU, MESH_BIN, ...).
"""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402  (ports, templates, the origin, the targets)

ROUNDS = int(os.environ.get("ROUNDS", "2"))
SECS = int(os.environ.get("SECS", "5"))
EVENTS = ["syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_recvfrom",
          "syscalls:sys_enter_sendto", "syscalls:sys_enter_writev", "context-switches"]


def threads(pid):
    """Each thread's name, voluntary and involuntary context switches, user and system
    ticks."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(l.split(":\t", 1) for l in f.read().splitlines() if ":\t" in l)
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (status["Name"].strip(), int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]), int(stat[11]), int(stat[12]))
    return out


def one(run, t, rnd):
    oha = c.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    out = f"{run}/{t.name}.{rnd}.perf"
    perf = subprocess.Popen(["perf", "stat", "-e", ",".join(EVENTS), "-p", str(t.pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    before = threads(t.pid)
    res = subprocess.run(c.pinned(c.LOAD_CPU, [oha, "-z", f"{SECS}s", "-c", str(c.CONNS), "-q",
                                               str(c.RATE), "--no-tui", "--output-format", "json",
                                               "-H", f"Host: {c.AUTHORITY}",
                                               f"http://127.0.0.1:{t.port}/"]),
                         capture_output=True, text=True, timeout=SECS + 30)
    after = threads(t.pid)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    codes = json.loads(res.stdout).get("statusCodeDistribution", {})
    n = sum(v for k, v in codes.items() if str(k).startswith("2"))
    print(f"## {t.name}, round {rnd}: {n} requests at {c.RATE} req/s over {c.CONNS} connections")
    with open(out) as f:
        counts = {p[1]: int(p[0].replace(",", "")) for p in (l.split() for l in f)
                  if len(p) >= 2 and p[0].replace(",", "").isdigit()}
    print("per request: " + ", ".join(f"{e.split('sys_enter_')[-1]} {counts.get(e, 0) / n:.3f}"
                                      for e in EVENTS))
    for tid, now in after.items():
        was = before.get(tid)
        if not was:
            continue
        d = [now[i] - was[i] for i in range(1, 5)]
        if any(d):
            print(f"  thread {now[0]}: context switches per request {d[0] / n:.3f} voluntary, "
                  f"{d[1] / n:.3f} involuntary; CPU ticks per 10k requests {d[2] / n * 1e4:.1f} "
                  f"user + {d[3] / n * 1e4:.1f} system")


def main(names):
    for tool in ("perf", "nginx"):
        if not c.which(tool):
            sys.exit(f"fixedrate.py: missing {tool}")
    with c.running(names or ["haproxy", "mesh"], "mesh-fixedrate.") as (run, targets):
        for rnd in range(1, ROUNDS + 1):
            for t in targets:
                one(run, t, rnd)


if __name__ == "__main__":
    main(sys.argv[1:])
