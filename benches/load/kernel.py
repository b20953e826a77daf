#!/usr/bin/env python3
"""Where a proxy's kernel time goes per request, side by side: TCP segments and bytes
(`nstat`), the load CPU's idle share and context switches (`/proc/stat`), system calls and
epoll events (`strace`), and CPU samples of named kernel functions (`perf record -e
cpu-clock`, which needs no hardware counters), per request.

Starts the origin and the targets as compare.py does (same templates, same CPUs), warms
each up with wrk, then for each target: a wrk run under `nstat`, one under `strace -f`
(slowed down: only the counts per request are used), one under `perf record -g`.

    python3 benches/load/kernel.py [TARGET ...]      # default: haproxy mesh

Needs wrk, nginx, nstat (iproute2), strace and perf (Debian: linux-perf). Knobs: SECS=5
(each run), and compare.py's (PROXY_CPU, LOAD_CPU, CONNS, MESH_BIN, ...).
"""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402  (ports, templates, the origin, wrk)

SECS = int(os.environ.get("SECS", "5"))
NSTAT = ["TcpInSegs", "TcpOutSegs", "TcpExtTCPPureAcks", "TcpExtDelayedACKs", "IpExtInOctets"]
SYSCALLS = "epoll_wait,epoll_pwait,recvfrom,read,readv,writev,sendto,sendmsg,write,epoll_ctl,futex"
# kernel functions whose inclusive samples per request tell the system calls apart, and the
# per-socket work inside them
# (`sock_def_readable`: the wake-up of the peer a send delivers to, inside the send)
SYMBOLS = ["__x64_sys_sendto", "do_writev", "__x64_sys_recvfrom", "__x64_sys_epoll_wait",
           "tcp_poll", "sock_poll", "_copy_to_iter", "tcp_recvmsg_locked", "do_softirq.part.0",
           "sock_def_readable"]


def nstat():
    out = subprocess.run(["nstat", "-az"], capture_output=True, text=True).stdout
    return {p[0]: int(p[1]) for p in (l.split() for l in out.splitlines()) if len(p) >= 2 and p[1].isdigit()}


def load_cpu():
    """The load CPU's idle and total ticks, and the machine's context switches so far."""
    idle = total = switches = 0
    with open("/proc/stat") as f:
        for line in f:
            p = line.split()
            if p[0] == f"cpu{c.LOAD_CPU}":
                ticks = [int(x) for x in p[1:]]
                idle, total = ticks[3] + ticks[4], sum(ticks)
            elif p[0] == "ctxt":
                switches = int(p[1])
    return idle, total, switches


def segments(t):
    """TCP counts per request, and the load CPU's share of idle time and the context
    switches per request: each is a peer (wrk, the origin) that ran out of work and slept,
    and that the proxy's next send to it wakes (`sock_def_readable`, an interrupt to the
    other CPU: microseconds in a VM, in the proxy's system time)."""
    a, la = nstat(), load_cpu()
    r = c.wrk(t, SECS)
    b, lb = nstat(), load_cpu()
    n = (r["h1_rps"] or 0) * SECS
    if not n:
        return {}, None
    seg = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in NSTAT}
    idle = 100 * (lb[0] - la[0]) / max(lb[1] - la[1], 1)
    return seg, (idle, (lb[2] - la[2]) / n)


def syscalls(t, out):
    # every process of the target's (nginx's workers are its master's children)
    pids = [a for p in c.tree(t.pid) for a in ("-p", str(p))]
    st = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={SYSCALLS}", "-o", out] + pids)
    time.sleep(0.5)  # strace attaching: not a synchronisation of the measurement
    r = c.wrk(t, SECS)
    st.send_signal(signal.SIGINT)
    st.wait()
    calls, events, waits = {}, 0, 0
    with open(out) as f:
        for line in f:
            m = re.search(r"(\w+)\(.*\)\s+=\s+(-?\d+)", line)
            if not m:
                continue
            calls[m.group(1)] = calls.get(m.group(1), 0) + 1
            if m.group(1).startswith("epoll"):
                waits += 1
                events += max(0, int(m.group(2)))
    # requests under strace: wrk's count (the proxy is slowed, the count is what it did)
    n = (r["h1_rps"] or 0) * SECS
    per = {k: v / n for k, v in sorted(calls.items())} if n else {}
    return per, (events / waits if waits else 0)


def samples(t, out):
    pr = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-g", "-p",
                           ",".join(str(p) for p in c.tree(t.pid)),
                           "-o", out, "--", "sleep", str(max(SECS - 1, 1))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = c.wrk(t, SECS)
    pr.wait()
    n = (r["h1_rps"] or 0) * max(SECS - 1, 1)
    rep = subprocess.run(["perf", "report", "-i", out, "--children", "-n", "--sort", "sym", "--stdio", "-g", "none"],
                         capture_output=True, text=True).stdout
    total = re.search(r"# Samples: (\d+)([KM]?)", rep)
    got = {}
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+(\d+)\s+\[k\]\s+(\S+)", line)
        if m and m.group(4) in SYMBOLS:
            got[m.group(4)] = float(m.group(1))
    return {k: v for k, v in got.items()}, r["cpu_sat"], n, total.group(0) if total else "?"


def main(argv):
    for tool in ("wrk", "nginx", "nstat", "strace", "perf"):
        if not c.which(tool):
            sys.exit(f"kernel.py: missing {tool}")
    # a proxy's process is measured: not `direct`
    names = [n for n in (argv or ["haproxy", "mesh"]) if n != "direct"]
    with c.running(names, "mesh-kernel.") as (run, targets):
        for t in targets:
            c.wrk(t, 2)
        for t in targets:
            seg, load = segments(t)
            per, evs = syscalls(t, f"{run}/strace.{t.name}")
            pct, cpu, n, total = samples(t, f"{run}/perf.{t.name}.data")
            print(f"## {t.name}")
            print("TCP per request: " + ", ".join(f"{k.replace('TcpExt', '')} {v:.2f}" for k, v in seg.items()))
            if load:
                print(f"load CPU (wrk, the origin): idle {load[0]:.1f} %, "
                      f"{load[1]:.3f} context switches per request")
            print("system calls per request: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                  + f"; events per epoll wait {evs:.1f}")
            print(f"CPU s /100k (sat., during perf) {cpu:.2f}; {total}; inclusive share of samples:")
            for k in SYMBOLS:
                if k in pct:
                    print(f"  {k}: {pct[k]:.2f} %")
            print()
    print(f"perf data and strace logs: {run} (perf report -i {run}/perf.NAME.data)")


if __name__ == "__main__":
    main(sys.argv[1:])
