#!/usr/bin/env python3
"""Bytes a proxy copies with `memcpy` per proxied request, side by side, and where.

The memory a request touches is what separates the proxy's CPU per request from HAProxy's
beyond the instructions (docs/performance.md: the same system calls cost more when the user
side evicts the kernel's socket data). The largest part a profiler cannot show is the moves
of futures and requests through the layers: Rust copies them with libc's `memcpy` above a
hundred or so bytes. This script counts them: a perf uprobe on the `memmove` variant libc
picked for this CPU (memcpy's body) with its length argument, on every call of the target's
process during REQUESTS requests on one keep-alive connection (after WARMUP), then per
request: calls, bytes, and with DWARF call stacks the functions (inlined frames skipped)
that copied most.

    sudo python3 benches/load/copies.py [TARGET ...]     # default: haproxy mesh

Targets as compare.py's (haproxy, nginx, envoy, mesh, NAME=PATH[,TEMPLATE]). Needs perf
(Debian: linux-perf) with uprobes, run as root, and nginx for the origin. Knobs: REQUESTS=1000,
WARMUP=200, TOP=25, and compare.py's. Copies inlined as moves of registers (small ones) are
not counted: the figure is a floor.
"""

import collections
import glob
import http.client
import os
import re
import select
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind as cg  # noqa: E402  (the checked requests)
import compare as c  # noqa: E402  (ports, templates, the origin, the targets)

REQUESTS = int(os.environ.get("REQUESTS", "1000"))
WARMUP = int(os.environ.get("WARMUP", "200"))
TOP = int(os.environ.get("TOP", "25"))
GROUP = "mesh_copies"
# memcpy is an alias of memmove's body in each of glibc's variants; the CPU picks one
VARIANTS = ["__memmove_avx512_unaligned_erms", "__memmove_avx512_no_vzeroupper",
            "__memmove_evex_unaligned_erms", "__memmove_avx_unaligned_erms",
            "__memmove_avx_unaligned_erms_rtm", "__memmove_sse2_unaligned_erms",
            "__memmove_ssse3", "__memmove_erms"]


def libc():
    for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6",
              *glob.glob("/lib*/libc.so.6")):
        if os.path.exists(p):
            return p
    sys.exit("copies.py: libc.so.6 not found")


def add_probes():
    """One uprobe per memmove variant of libc's (x86-64: the length is in rdx)."""
    lib, events = libc(), []
    for i, sym in enumerate(VARIANTS):
        ev = f"{GROUP}:v{i}"
        r = subprocess.run(["perf", "probe", "-q", "-x", lib, "-a", f"{GROUP}:v{i}={sym} len=%dx:u64"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            events.append(ev)
    if not events:
        sys.exit("copies.py: no uprobe could be added (perf probe needs root and uprobes)")
    return events


def del_probes():
    subprocess.run(["perf", "probe", "-q", "-d", f"{GROUP}:*"], capture_output=True)


def send(port, n):
    """`n` requests on one keep-alive connection, each checked (callgrind.py's)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cg.send(conn, n)
    conn.close()


def measure(t, events, out):
    send(t.port, WARMUP)
    ctl, ack = f"{out}.ctl", f"{out}.ack"
    for f in (ctl, ack):
        os.mkfifo(f)
    # started disabled (-D -1), enabled through the control fifo, whose ack tells that the
    # events are on: every request below is counted, none before. Every process of the
    # target's (nginx's workers are its master's children).
    pids = ",".join(str(p) for p in c.tree(t.pid))
    argv = ["perf", "record", "-q", "-D", "-1", f"--control=fifo:{ctl},{ack}", "--call-graph",
            "dwarf,8192", "-m", "8192", "-p", pids, "-o", out]
    for ev in events:
        argv += ["-e", ev]
    err = open(f"{out}.err", "w")
    rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        # opened read-write, the fifos never block on perf's end: a perf that failed to
        # start is seen by poll() rather than waited for
        cw, ar = os.open(ctl, os.O_RDWR), os.open(ack, os.O_RDWR)

        def command(cmd):
            os.write(cw, cmd)
            got = b""
            while b"\n" not in got:
                if rec.poll() is not None:
                    sys.exit(f"copies.py: perf record exited (see {out}.err)")
                r, _, _ = select.select([ar], [], [], 1.0)
                if r:
                    got += os.read(ar, 64)

        command(b"enable\n")
        send(t.port, REQUESTS)
        command(b"disable\n")
        os.close(cw)
        os.close(ar)
    finally:
        rec.send_signal(signal.SIGINT)
        try:
            rec.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rec.kill()
        err.close()
    script = subprocess.run(["perf", "script", "-i", out], capture_output=True, text=True).stdout
    by_fn, calls, total = collections.Counter(), collections.Counter(), 0
    for block in script.strip().split("\n\n"):
        lines = block.strip().split("\n")
        m = re.search(r"len=(0x[0-9a-f]+|\d+)", lines[0])
        if not m:
            continue
        n = int(m.group(1), 0)
        fn = "?"
        for f in lines[1:]:
            f = f.strip()
            if "(inlined)" in f or "memmove" in f or "memcpy" in f:
                continue
            fn = re.sub(r"\+0x[0-9a-f]+ \(.*$", "", re.sub(r"^\S+\s+", "", f))
            break
        total += n
        by_fn[(fn, n)] += n
        calls[(fn, n)] += 1
    stats = subprocess.run(["perf", "report", "-i", out, "--stats"], capture_output=True, text=True).stdout
    lost = sum(int(m) for m in re.findall(r"LOST(?:_SAMPLES)? events:\s+(\d+)", stats))
    return total, sum(calls.values()), by_fn, calls, lost


def main(argv):
    for tool in ("perf", "nginx"):
        if not c.which(tool):
            sys.exit(f"copies.py: missing {tool}")
    # a proxy's process is measured: not `direct`
    names = [n for n in (argv or ["haproxy", "mesh"]) if n != "direct"]
    del_probes()
    events = add_probes()
    try:
        with c.running(names, "mesh-copies.") as (run, targets):
            for t in targets:
                total, n, by_fn, calls, lost = measure(t, events, f"{run}/perf.{t.name}.data")
                if not n:
                    sys.exit(f"copies.py: no memcpy counted for {t.name}: libc's variant for "
                             f"this CPU is none of {', '.join(VARIANTS)}")
                per = REQUESTS
                print(f"## {t.name}: {total / per:,.0f} bytes in {n / per:.1f} memcpy calls per request"
                      + (f" (perf lost {lost} of {n + lost} calls: a floor)" if lost else ""))
                for (fn, size), b in by_fn.most_common(TOP):
                    print(f"  {b / per:7,.0f} B  {calls[(fn, size)] / per:5.2f} x {size:5d}  {fn[:150]}")
                print()
    finally:
        del_probes()
    print(f"perf data: {run} (perf script -i {run}/perf.NAME.data)")


if __name__ == "__main__":
    main(sys.argv[1:])
