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

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgbench  # noqa: E402  (the bench binary under callgrind, the file's costs)

PROFILE_TIME = os.environ.get("PROFILE_TIME", "5")
FUTURE = "client_stack::send::{{closure}}"


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else cgbench.bench_binary("client_stack", "client_stack_callgrind.py")
    out_dir = os.environ.get("KEEP") or tempfile.mkdtemp(prefix="client-stack-cg-")
    os.makedirs(out_dir, exist_ok=True)
    result = {}
    for name in ["bare", "mesh"]:
        out = os.path.join(out_dir, f"callgrind.{name}.out")
        cgbench.profile(exe, f"client_stack/in_memory/{name}", out, PROFILE_TIME)
        cost, n = cgbench.per_request(out, lambda f: f == FUTURE, "client_stack_callgrind.py")
        result[name] = cost / n
        print(f"in_memory/{name}: {cost / n:,.0f} Ir per request ({n:,} requests)")
    print(f"added by the mesh client stack: {result['mesh'] - result['bare']:,.0f} Ir per request")
    if os.environ.get("KEEP"):
        print(f"callgrind files in {out_dir}")


if __name__ == "__main__":
    main()
