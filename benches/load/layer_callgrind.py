#!/usr/bin/env python3
"""Instructions per request a resilience layer adds, counted by callgrind.

Runs a criterion layer bench (benches/benches/{retry,breaker,outlier,ratelimit,timeout,
fault}.rs) under `valgrind --tool=callgrind` once per benchmark with `--profile-time
SECONDS`, and reads the callgrind file: the inclusive instructions of
`mesh_benches::layer::send` (poll_ready, call, the one poll of the future, the answer
dropped; the request is built outside it), or of the timeout bench's `send_polled_twice`
(the same, the future polled twice), divided by the
times it was called. The first benchmark named is the baseline (the bench's no-op inner
service alone); each other's figure minus it is what the layer adds per request, the same for
the same binary whatever else the machine does (criterion's nanoseconds move by ±50 ns on a
shared machine).

    cargo bench -p mesh-benches --bench retry --no-run
    python3 benches/load/layer_callgrind.py retry noop_inner retries_off \\
        istio_default istio_default_heads_handed_back

Without arguments: one figure per layer, each layer's heaviest case as mesh-proxy runs it
(the 200 ns goal of issue 12 is about 1,000-1,300 instructions here): the retry layer under
Istio's default policy with the head handed back (`retry`), the circuit breaker with the
retry layer's shared hosts list (`breaker`), the local rate limit with `x-ratelimit-*`
headers (`ratelimit`), the route timeout armed in the runtime's timer wheel and cancelled by
the answer (`timeout`, over an inner service answering at the second poll), the fault filter
drawing its delay and abort and injecting neither (`fault`); build the five benches first:

    cargo bench -p mesh-benches --bench retry --bench breaker --bench ratelimit \\
        --bench timeout --bench fault --no-run
    python3 benches/load/layer_callgrind.py

Knobs: PROFILE_TIME=2 (seconds per benchmark, under valgrind), CPU=1 (taskset), KEEP=<dir>
to keep the callgrind files (for callgrind_annotate), BINARY=<the bench binary>.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgbench  # noqa: E402  (the bench binary under callgrind, the file's costs)

PROFILE_TIME = os.environ.get("PROFILE_TIME", "2")
# the harness's driver, and the timeout bench's for an answer at the second poll
SENDS = ("mesh_benches::layer::send", "timeout::send_polled_twice")


# the no-argument run: (bench, baseline, the layer's case)
LAYERS = [
    ("retry", "noop_inner", "istio_default_heads_handed_back"),
    ("breaker", "noop_inner", "admit_with_previous_hosts"),
    ("ratelimit", "noop_inner", "route_admitted_x_ratelimit"),
    ("timeout", "pending_once_inner", "route_timeout_armed"),
    ("fault", "noop_inner", "drawn_not_injected"),
]


def main():
    if len(sys.argv) == 1:
        for bench, *ids in LAYERS:
            run(bench, ids)
        return
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run(sys.argv[1], sys.argv[2:])


def run(bench, ids):
    """Profiles benchmarks `ids` of `bench`, the first the baseline."""
    exe = cgbench.bench_binary(bench, "layer_callgrind.py")
    out_dir = os.environ.get("KEEP") or tempfile.mkdtemp(prefix=f"{bench}-cg-")
    os.makedirs(out_dir, exist_ok=True)
    base = None
    for name in ids:
        out = os.path.join(out_dir, f"callgrind.{bench}.{name}.out")
        cgbench.profile(exe, f"^{bench}/{name}$", out, PROFILE_TIME)
        cost, n = cgbench.per_request(out, lambda f: f.startswith(SENDS), "layer_callgrind.py")
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
