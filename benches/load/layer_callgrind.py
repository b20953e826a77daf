#!/usr/bin/env python3
"""Instructions per request a resilience layer adds, counted by callgrind.

Runs a criterion layer bench (benches/benches/{retry,breaker,outlier,ratelimit}.rs) under
`valgrind --tool=callgrind` once per benchmark with `--profile-time SECONDS`, and reads the
callgrind file: the inclusive instructions of `mesh_benches::layer::send` (poll_ready, call,
the one poll of the future, the answer dropped; the request is built outside it), divided by
the times it was called. The first benchmark named is the baseline (the bench's no-op inner
service alone); each other's figure minus it is what the layer adds per request, the same for
the same binary whatever else the machine does (criterion's nanoseconds move by ±50 ns on a
shared machine).

    cargo bench -p mesh-benches --bench retry --no-run
    python3 benches/load/layer_callgrind.py retry noop_inner retries_off \\
        istio_default istio_default_heads_handed_back

Knobs: PROFILE_TIME=2 (seconds per benchmark, under valgrind), CPU=1 (taskset), KEEP=<dir>
to keep the callgrind files (for callgrind_annotate), BINARY=<the bench binary>.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

PROFILE_TIME = os.environ.get("PROFILE_TIME", "2")
CPU = os.environ.get("CPU", "1")
SEND = "mesh_benches::layer::send"


def binary(bench):
    if os.environ.get("BINARY"):
        return os.environ["BINARY"]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    bins = [
        b
        for b in glob.glob(os.path.join(root, f"target/release/deps/{bench}-*"))
        if os.access(b, os.X_OK) and not b.endswith(".d")
    ]
    if not bins:
        sys.exit(f"layer_callgrind.py: build the bench first (cargo bench -p mesh-benches --bench {bench} --no-run)")
    return max(bins, key=os.path.getmtime)


def per_request(path):
    """Inclusive instructions of the calls to SEND and how many calls there were."""
    names, callee, calls, cost, total_calls = {}, None, None, 0, 0
    with open(path) as f:
        for line in f:
            m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3).strip()
                if m.group(1) == "cfn":
                    callee = names.get(m.group(2))
                continue
            if line.startswith("calls="):
                calls = int(line.split()[0][len("calls="):])
                continue
            if calls is not None:
                # the line after calls=: position and the call's inclusive cost
                if callee is not None and callee.startswith(SEND):
                    cost += int(line.split()[1])
                    total_calls += calls
                calls = None
    if total_calls == 0:
        sys.exit(f"layer_callgrind.py: no calls of {SEND} in {path}")
    return cost, total_calls


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bench, ids = sys.argv[1], sys.argv[2:]
    exe = binary(bench)
    out_dir = os.environ.get("KEEP") or tempfile.mkdtemp(prefix=f"{bench}-cg-")
    base = None
    for name in ids:
        out = os.path.join(out_dir, f"callgrind.{name}.out")
        subprocess.run(
            ["taskset", "-c", CPU, "valgrind", "--tool=callgrind",
             f"--callgrind-out-file={out}", exe, "--bench", f"^{bench}/{name}$",
             "--profile-time", PROFILE_TIME],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cost, n = per_request(out)
        ir = cost / n
        if base is None:
            base = ir
            print(f"{bench}/{name}: {ir:,.0f} Ir per request ({n:,} requests; the baseline)")
        else:
            print(f"{bench}/{name}: {ir:,.0f} Ir per request ({n:,} requests), +{ir - base:,.0f} over the baseline")
    if os.environ.get("KEEP"):
        print(f"callgrind files in {out_dir}")


if __name__ == "__main__":
    main()
