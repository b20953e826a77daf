#!/usr/bin/env python3
"""Instructions per request of the client_stack bench's in-memory pair, counted by callgrind.

Runs the criterion bench binary (benches/benches/client_stack.rs) under
`valgrind --tool=callgrind` once per benchmark (`client_stack/in_memory/bare`, then
`client_stack/in_memory/mesh`) with `--profile-time SECONDS`, and reads the callgrind file:
the instructions of `client_stack::send`'s future, inclusive (everything one request costs,
from the stack's `poll_ready` to the answer's body read to the end), divided by the times it
was polled (once per request: the innermost client answers at once). The difference of the
two is what mesh-stack's client stack adds per request, in instructions, the same for the
same binary whatever else the machine does.

    cargo bench -p mesh-benches --bench client_stack --no-run    # prints the binary
    python3 benches/load/client_stack_callgrind.py [BINARY]

Knobs: PROFILE_TIME=5 (seconds per benchmark, under valgrind), CPU=1 (taskset), KEEP=<dir>
to keep the callgrind files (for callgrind_annotate).
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

PROFILE_TIME = os.environ.get("PROFILE_TIME", "5")
CPU = os.environ.get("CPU", "1")
FUTURE = "client_stack::send::{{closure}}"


def binary():
    if len(sys.argv) > 1:
        return sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    bins = [
        b
        for b in glob.glob(os.path.join(root, "target/release/deps/client_stack-*"))
        if os.access(b, os.X_OK) and not b.endswith(".d")
    ]
    if not bins:
        sys.exit("client_stack_callgrind.py: build the bench first (see the docstring)")
    return max(bins, key=os.path.getmtime)


def per_request(path):
    """Inclusive instructions of the calls to FUTURE and how many calls there were."""
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
                if callee == FUTURE:
                    cost += int(line.split()[1])
                    total_calls += calls
                calls = None
    if total_calls == 0:
        sys.exit(f"client_stack_callgrind.py: no calls of {FUTURE} in {path}")
    return cost, total_calls


def main():
    exe = binary()
    out_dir = os.environ.get("KEEP") or tempfile.mkdtemp(prefix="client-stack-cg-")
    result = {}
    for name in ["bare", "mesh"]:
        out = os.path.join(out_dir, f"callgrind.{name}.out")
        subprocess.run(
            ["taskset", "-c", CPU, "valgrind", "--tool=callgrind",
             f"--callgrind-out-file={out}", exe, "--bench",
             f"client_stack/in_memory/{name}", "--profile-time", PROFILE_TIME],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cost, n = per_request(out)
        result[name] = cost / n
        print(f"in_memory/{name}: {cost / n:,.0f} Ir per request ({n:,} requests)")
    print(f"added by the mesh client stack: {result['mesh'] - result['bare']:,.0f} Ir per request")
    if os.environ.get("KEEP"):
        print(f"callgrind files in {out_dir}")


if __name__ == "__main__":
    main()
