#!/usr/bin/env python3
"""In-process against sidecar, on the same workload, in one run (issue 16).

One client program (`target/release/inproc-load`, benches/src/bin/inproc-load.rs) sends the
same small workload, one request at a time over one pooled HTTP/1.1 connection (hyper_util's
client), to the same origin (nginx answering "ok" from memory) three ways:

- direct:  the client alone, to the origin (the floor);
- inproc:  the client inside mesh-stack's client stack, built from the sidecar's own
           configuration file (routing, balancing, Istio's default retries, metrics);
- sidecar: the client alone, to mesh-proxy's outbound listener (Host: bench.local), which
           routes the request to the origin with the same configuration.

For each, ROUNDS rounds (the order rotated each round), medians: latency p50/p99/p99.9 of
the client, the client's CPU per request, and for the sidecar the proxy's CPU per request
(utime + stime of its process, /proc). "added" is over direct: what the mesh costs per
request in each shape, and what the sidecar hop costs beyond in-process.

    cargo build --release -p mesh-proxy -p mesh-benches --bin mesh-proxy --bin inproc-load
    python3 benches/load/inproc.py

Knobs (environment): ROUNDS=3 REQUESTS=20000 WARMUP=2000 PROXY_CPU=0 LOAD_CPU=1,
MESH_BIN (default target/release/mesh-proxy), LOAD_BIN (default target/release/inproc-load),
OUT (a directory for the configuration and logs; default a new one under /tmp).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the load comparison's helpers: ports, /proc, nginx, templates)

ENV = os.environ
ROUNDS = int(ENV.get("ROUNDS", 3))
REQUESTS = int(ENV.get("REQUESTS", 20000))
WARMUP = int(ENV.get("WARMUP", 2000))
PROXY_CPU = ENV.get("PROXY_CPU", "0")
LOAD_CPU = ENV.get("LOAD_CPU", "1")
MESH_BIN = ENV.get("MESH_BIN", "target/release/mesh-proxy")
LOAD_BIN = ENV.get("LOAD_BIN", "target/release/inproc-load")
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[inproc] {msg}", file=sys.stderr, flush=True)


def client(argv):
    out = subprocess.run(compare.pinned(LOAD_CPU, [LOAD_BIN] + argv + [str(REQUESTS), str(WARMUP)]),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"inproc.py: {' '.join(argv)} failed: {out.stderr}")
    return json.loads(out.stdout)


def main():
    for prog in (MESH_BIN, LOAD_BIN):
        if not os.access(prog, os.X_OK):
            sys.exit(f"inproc.py: {prog} missing (cargo build --release -p mesh-proxy -p mesh-benches "
                     "--bin mesh-proxy --bin inproc-load)")
    for tool in ("nginx", "taskset"):
        if not compare.which(tool):
            sys.exit(f"inproc.py: missing {tool}")
    run = ENV.get("OUT") or tempfile.mkdtemp(prefix="inproc-")
    os.makedirs(run, exist_ok=True)
    procs = []
    try:
        up_port, up_h2_port, port, admin_port = compare.free_ports(4)
        conf = compare.render("upstream-nginx.conf", f"{run}/upstream.conf",
                              dict(RUN=run, UP_PORT=up_port, UP_H2_PORT=up_h2_port))
        up = subprocess.Popen(compare.pinned(LOAD_CPU, [compare.which("nginx"), "-e", f"{run}/upstream.err",
                                                        "-p", run + "/", "-c", conf]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        if not compare.wait_ok(up_port, up):
            sys.exit("inproc.py: the origin nginx did not start")
        # one configuration for both shapes: the sidecar runs it, the in-process client loads it
        mesh_yaml = compare.render("mesh.yaml", f"{run}/mesh.yaml",
                                   dict(RUN=run, PORT=port, ADMIN_PORT=admin_port, UP_PORT=up_port,
                                        WORKERS=1))
        logf = open(f"{run}/mesh-proxy.log", "w")
        proxy = subprocess.Popen(compare.pinned(PROXY_CPU, [MESH_BIN, "run", "--config", mesh_yaml]),
                                 stdout=logf, stderr=subprocess.STDOUT)
        procs.append(proxy)
        if not compare.wait_ok(port, proxy):
            sys.exit(f"inproc.py: mesh-proxy did not answer (see {run}/mesh-proxy.log)")

        modes = {
            "direct": ["direct", f"http://127.0.0.1:{up_port}/"],
            "inproc": ["inproc", mesh_yaml, f"http://{compare.AUTHORITY}/"],
            "sidecar": ["sidecar", f"http://127.0.0.1:{port}/", compare.AUTHORITY],
        }
        order = list(modes)
        rows = {m: [] for m in modes}
        for r in range(ROUNDS):
            for m in order[r % 3:] + order[:r % 3]:
                before = compare.cpu_ticks(proxy.pid)
                res = client(modes[m])
                proxy_s = (compare.cpu_ticks(proxy.pid) - before) / TICKS
                # the proxy worked on the warm-up requests too
                res["proxy_us_per_req"] = proxy_s * 1e6 / (REQUESTS + WARMUP) if m == "sidecar" else 0.0
                res["client_us_per_req"] = res["cpu_s"] * 1e6 / REQUESTS
                rows[m].append(res)
                log(f"round {r + 1} {m}: {res}")
        report(rows)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def report(rows):
    def med(m, k):
        return statistics.median(r[k] for r in rows[m])

    print(f"{REQUESTS} requests per round after {WARMUP} warm-up, one at a time over one "
          f"HTTP/1.1 connection; medians of {ROUNDS} round(s)\n")
    print("| shape | p50 µs | p99 µs | p99.9 µs | added p50 / p99 µs | client CPU µs/req "
          "| sidecar CPU µs/req | total CPU µs/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        total = med(m, "client_us_per_req") + med(m, "proxy_us_per_req")
        added = f"{med(m, 'p50_us') - med('direct', 'p50_us'):+.1f} / {med(m, 'p99_us') - med('direct', 'p99_us'):+.1f}"
        print(f"| {m} | {med(m, 'p50_us'):.1f} | {med(m, 'p99_us'):.1f} | {med(m, 'p999_us'):.1f} | {added} "
              f"| {med(m, 'client_us_per_req'):.1f} | {med(m, 'proxy_us_per_req'):.1f} | {total:.1f} "
              f"| {sum(r['errors'] for r in rows[m])} |")
    hop_p50 = med("sidecar", "p50_us") - med("inproc", "p50_us")
    hop_p99 = med("sidecar", "p99_us") - med("inproc", "p99_us")
    hop_cpu = (med("sidecar", "client_us_per_req") + med("sidecar", "proxy_us_per_req")
               - med("inproc", "client_us_per_req"))
    print(f"\nThe sidecar hop beyond in-process: {hop_p50:+.1f} µs p50, {hop_p99:+.1f} µs p99, "
          f"{hop_cpu:+.1f} µs CPU per request (in-process saves these).")


if __name__ == "__main__":
    main()
