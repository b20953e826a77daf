#!/usr/bin/env python3
"""Instructions per request of the telemetry bench's `all_on` over `routed_inner` and
`noop_inner`, by callgrind.

Runs the criterion bench binary (benches/benches/telemetry.rs) under
`valgrind --tool=callgrind` once per benchmark (`telemetry/noop_inner`, `telemetry/routed_inner`,
then `telemetry/all_on`) with `--profile-time SECONDS`, and reads the callgrind file: the
instructions of the bench's `timed` function, inclusive (one request through the service and
its response dropped: trace propagation, the record layer, the router's and balancer's records,
the sinks at the end), divided by its calls. The difference is what the whole telemetry of a
sidecar with the access log on adds per request, in instructions: over `routed_inner` (the
router's write of its decision into the request's `RequestSlots`, which mesh-proxy's router
makes with or without telemetry) as in mesh-proxy, over `noop_inner` for the telemetry
alone (the access log writer thread's work is not in it: it is another thread's; nor are
the clock reads, system calls under valgrind). Also printed, per request of `all_on`:
the inclusive cost of the record layer's parts (its `call`, its response future's `poll`
which runs the sinks, and each sink).

    cargo bench -p mesh-benches --bench telemetry --no-run    # prints the binary
    python3 benches/load/telemetry_callgrind.py [BINARY]

Knobs: PROFILE_TIME=2 (seconds per benchmark, under valgrind), CPU=1 (taskset), KEEP=<dir>
to keep the callgrind files (for callgrind_annotate).
"""

import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgbench  # noqa: E402  (the bench binary under callgrind, the file's costs)

PROFILE_TIME = os.environ.get("PROFILE_TIME", "2")
TIMED = "telemetry::timed"
PARTS = [
    ("record layer call (and the inner service)", r"mesh_telemetry::record::Record<S> as tower_service::Service<.*>>::call$"),
    ("inner service (router and balancer records)", r"<telemetry::Routed as tower_service::Service<.*>>::call$"),
    ("record response future poll (the sinks)", r"<mesh_telemetry::record::ResponseFuture<F> as core::future::future::Future>::poll$"),
    ("metrics sink", r"<mesh_telemetry::metrics::MetricsSink as mesh_telemetry::record::Sink>::complete$"),
    ("span sink (no exporter)", r"<mesh_telemetry::sinks::SpanRecorder as mesh_telemetry::record::Sink>::complete$"),
    ("access log sink (TEXT)", r"<mesh_telemetry::sinks::AccessLogRecorder as mesh_telemetry::record::Sink>::complete$"),
]


def run(exe, name, out_dir):
    out = os.path.join(out_dir, f"callgrind.{name}.out")
    cgbench.profile(exe, f"^telemetry/{name}$", out, PROFILE_TIME)
    calls = cgbench.calls_of(out)
    cost, n = calls.get(TIMED, (0, 0))
    if n == 0:
        sys.exit(f"telemetry_callgrind.py: no calls of {TIMED} in {out}")
    return cost / n, n, calls


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else cgbench.bench_binary("telemetry", "telemetry_callgrind.py")
    out_dir = os.environ.get("KEEP") or tempfile.mkdtemp(prefix="telemetry-cg-")
    os.makedirs(out_dir, exist_ok=True)
    base, n, _ = run(exe, "noop_inner", out_dir)
    print(f"telemetry/noop_inner: {base:,.0f} Ir per request ({n:,} requests)")
    routed, n, _ = run(exe, "routed_inner", out_dir)
    print(f"telemetry/routed_inner: {routed:,.0f} Ir per request ({n:,} requests)")
    all_on, n, calls = run(exe, "all_on", out_dir)
    print(f"telemetry/all_on: {all_on:,.0f} Ir per request ({n:,} requests)")
    print(f"added by the telemetry in mesh-proxy (all_on - routed_inner): {all_on - routed:,.0f} Ir per request")
    print(f"added by the telemetry alone (all_on - noop_inner): {all_on - base:,.0f} Ir per request")
    for label, pattern in PARTS:
        cost = sum(c for name, (c, _) in calls.items() if name and re.search(pattern, name))
        print(f"  {label}: {cost / n:,.0f}")
    if os.environ.get("KEEP"):
        print(f"callgrind files in {out_dir}")


if __name__ == "__main__":
    main()
