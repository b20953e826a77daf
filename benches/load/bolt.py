#!/usr/bin/env python3
"""mesh-proxy with its hot code laid out by BOLT, from a sampled profile of the load
comparison's traffic: what the code layout within functions costs at saturation.

    python3 benches/load/bolt.py        # writes target/release/mesh-proxy.bolt

Then run it beside the build it came from, e.g.
`compare.py haproxy mesh=target/release/mesh-proxy.relocs bolt=target/release/mesh-proxy.bolt`.

Steps: links the release binary again with its relocations kept (`cargo rustc --release -p
mesh-proxy --bin mesh-proxy -- -C link-arg=-Wl,--emit-relocs`: BOLT moves functions only in a
binary that has them) and keeps it as `target/release/mesh-proxy.relocs`; runs that as
compare.py's `mesh` target under wrk (CONNS connections, SECS seconds) with `perf record -e
cpu-clock` on its process; turns the samples in its text into BOLT's profile without branch
records (`no_lbr`: function, offset, count; a local symbol named `name/1`, as BOLT names
them); and runs `llvm-bolt` with block reordering (ext-tsp), hot/cold splitting and function
ordering (hfsort). Last, `cargo build --release -p mesh-proxy` links the ordinary binary again.

This machine's VM has no hardware counters: the profile is instruction-pointer samples, not
the last-branch records BOLT prefers, so it infers the edges from the blocks' samples.

Needs perf (Debian: linux-perf), wrk, nginx and Debian's bolt-15 (`apt-get install bolt-15`;
its `llvm-bolt-15` reads rustc's binaries). Knobs: SECS=15, BOLT=llvm-bolt-15, and compare.py's
(CONNS, PROXY_CPU, LOAD_CPU, ...). Not a build step of the project: a measurement.
"""

import bisect
import collections
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402  (ports, templates, the origin, wrk)

SECS = int(os.environ.get("SECS", "15"))
BOLT = os.environ.get("BOLT", "llvm-bolt-15")
RELEASE = "target/release"


def relink_with_relocations():
    subprocess.run(["cargo", "rustc", "--release", "-p", "mesh-proxy", "--bin", "mesh-proxy", "--",
                    "-C", "link-arg=-Wl,--emit-relocs"], check=True)
    out = f"{RELEASE}/mesh-proxy.relocs"
    shutil.copy2(f"{RELEASE}/mesh-proxy", out)
    return out


def text_symbols(binary):
    """The binary's functions by address: (address, BOLT's name)."""
    out = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True,
                         check=True).stdout
    syms = []
    for line in out.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "tTwW":
            syms.append((int(p[0], 16), p[2] + ("/1" if p[1] == "t" else "")))
    return syms


def profile(binary, perf_data):
    """Samples of the binary's own code at saturation."""
    name = "relocs"
    with c.running([f"{name}={os.path.abspath(binary)}"], "mesh-bolt.") as (run, targets):
        if not targets:
            sys.exit(f"bolt.py: {binary} did not start (see the logs in {run})")
        t = targets[0]
        c.wrk(t, 2)
        if os.path.exists(perf_data):
            os.remove(perf_data)
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "20000", "-o", perf_data,
                                 "-p", str(t.pid)])
        time.sleep(0.5)
        c.wrk(t, SECS)
        perf.send_signal(signal.SIGINT)
        perf.wait()
        if not os.path.exists(perf_data):
            sys.exit(f"bolt.py: perf record wrote nothing (exit {perf.returncode})")


def fdata(binary, perf_data, out):
    """BOLT's no-LBR profile of the samples that fall in `binary`'s text."""
    script = subprocess.run(["perf", "script", "-i", perf_data, "--show-mmap-events", "-F",
                             "ip,dso"], capture_output=True, text=True, check=True).stdout
    real = os.path.realpath(binary)
    base = None
    ips = []
    for line in script.splitlines():
        if "PERF_RECORD_MMAP" in line and line.rstrip().endswith(real) and " r-xp " in line:
            # [start(len) @ pgoff ...]: the text's file offset, mapped at start
            span = line.split("[", 1)[1]
            start = int(span.split("(", 1)[0], 16)
            pgoff = int(span.split("@ ", 1)[1].split()[0], 16)
            base = (start, pgoff)
        elif line.rstrip().endswith(f"({real})"):
            ips.append(int(line.split()[0], 16))
    if base is None or not ips:
        sys.exit("bolt.py: no samples in the binary's text")
    # file offset -> virtual address: the executable segment's own difference
    seg = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True,
                         check=True).stdout
    delta = next((int(p[2], 16) - int(p[1], 16) for p in (l.split() for l in seg.splitlines())
                  if len(p) > 7 and p[0] == "LOAD" and "E" in "".join(p[6:-1])), None)
    if delta is None:
        sys.exit(f"bolt.py: no executable LOAD segment in {binary}")
    syms = text_symbols(binary)
    addrs = [a for a, _ in syms]
    counts = collections.Counter()
    for ip in ips:
        v = ip - base[0] + base[1] + delta
        i = bisect.bisect_right(addrs, v) - 1
        if i >= 0:
            a, n = syms[i]
            counts[(n, v - a)] += 1
    with open(out, "w") as f:
        f.write("no_lbr cpu-clock\n")
        for (n, off), k in sorted(counts.items()):
            f.write(f"1 {n} {off:x} {k}\n")
    return len(ips)


def main():
    for tool in ("cargo", "perf", "wrk", "nginx", "taskset", "nm", "readelf", BOLT):
        if not c.which(tool):
            sys.exit(f"bolt.py: missing {tool} (apt-get install linux-perf wrk nginx-light binutils bolt-15)")
    binary = relink_with_relocations()
    try:
        perf_data = f"{RELEASE}/mesh-proxy.perf.data"
        profile(binary, perf_data)
        prof = f"{RELEASE}/mesh-proxy.fdata"
        n = fdata(binary, perf_data, prof)
        c.log(f"{n} samples in mesh-proxy's text: {prof}")
        subprocess.run([BOLT, binary, "-o", f"{RELEASE}/mesh-proxy.bolt", f"-data={prof}", "-lite=0",
                        "-reorder-blocks=ext-tsp", "-reorder-functions=hfsort", "-split-functions",
                        "-split-all-cold", "-split-eh"], check=True)
    finally:
        # the ordinary binary again, whatever happened
        subprocess.run(["cargo", "build", "--release", "-p", "mesh-proxy"], check=True)
    print(f"{RELEASE}/mesh-proxy.bolt (from {binary}; profile {prof})")


if __name__ == "__main__":
    main()
