"""Shared by the *_callgrind.py scripts: a criterion bench binary run under callgrind, and
the inclusive cost and calls of each function in the callgrind file it writes."""

import glob
import os
import re
import subprocess
import sys

CPU = os.environ.get("CPU", "1")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def bench_binary(bench, script):
    """The newest release binary of `cargo bench --bench BENCH` (BINARY= overrides)."""
    if os.environ.get("BINARY"):
        return os.environ["BINARY"]
    bins = [
        b
        for b in glob.glob(os.path.join(ROOT, f"target/release/deps/{bench}-*"))
        if os.access(b, os.X_OK) and not b.endswith(".d")
    ]
    if not bins:
        sys.exit(f"{script}: build the bench first (cargo bench -p mesh-benches --bench {bench} --no-run)")
    return max(bins, key=os.path.getmtime)


def profile(exe, bench_filter, out, seconds):
    """Runs the benchmarks matching `bench_filter` under callgrind, pinned to CPU, into `out`."""
    subprocess.run(
        ["taskset", "-c", CPU, "valgrind", "--tool=callgrind",
         f"--callgrind-out-file={out}", exe, "--bench", bench_filter,
         "--profile-time", seconds],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def calls_of(path):
    """Inclusive cost and calls per callee name, summed over every call site."""
    names, callee, calls, out = {}, None, None, {}
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
                cost, n = out.get(callee, (0, 0))
                out[callee] = (cost + int(line.split()[1]), n + calls)
                calls = None
    return out


def per_request(path, matches, script):
    """Inclusive instructions of the calls to the functions `matches(name)` accepts, and
    how many calls there were."""
    cost = n = 0
    for name, (c, k) in calls_of(path).items():
        if name is not None and matches(name):
            cost, n = cost + c, n + k
    if n == 0:
        sys.exit(f"{script}: no calls of the measured function in {path}")
    return cost, n
