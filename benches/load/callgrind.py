#!/usr/bin/env python3
"""Instructions per proxied HTTP/1.1 request, counted by valgrind's callgrind.

Wall-clock CPU figures move by 5-10 % on a shared VM; callgrind counts the instructions the
proxy's process executes (user space, every thread), the same for the same binary and input
whatever else the machine does. For each target: start it under callgrind in front of the
origin (nginx answering "ok"), send WARMUP requests over one keep-alive connection, zero the
counters, send REQUESTS more on that connection, dump, and divide.

    python3 benches/load/callgrind.py [mesh] [haproxy]      # default: both, when installed

Knobs: REQUESTS=5000 WARMUP=500 MESH_BIN=target/release/mesh-proxy MESH_CONFIG=<a config to
use instead of benches/load/templates/mesh.yaml, with the same placeholders>.

CONNS=50 sends the measured requests with `h2load --h1 -c CONNS` instead (REQUESTS in all,
CONNS connections at once): the count at a saturation-like concurrency, where a proxy handles
many connections' events per wake-up and the one-connection count's per-wake-up costs spread
out. CACHE=1 adds callgrind's cache and branch simulation and prints, per request, the
first-level instruction and data cache misses and the mispredicted conditional and indirect
branches: what separates two proxies' CPU time at equal instruction counts.
"""

import glob
import http.client
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the shared helpers: ports, templates, the origin)

REQUESTS = int(os.environ.get("REQUESTS", 5000))
WARMUP = int(os.environ.get("WARMUP", 500))
CONNS = int(os.environ.get("CONNS", 1))
CACHE = os.environ.get("CACHE", "") not in ("", "0")


def send(conn, n):
    for i in range(n):
        conn.request("GET", f"/r{i}", headers={"Host": compare.AUTHORITY})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"ok":
            sys.exit(f"callgrind.py: request {i} got {r.status} {body[:80]!r}")


def send_concurrently(port, n):
    """n requests over CONNS connections at once (h2load, HTTP/1.1), all answered 200."""
    out = subprocess.run([compare.which("h2load"), "--h1", "-n", str(n), "-c", str(CONNS), "-H",
                          f":authority: {compare.AUTHORITY}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=1800).stdout
    if f"{n} succeeded" not in out or "status codes: " + str(n) + " 2xx" not in out:
        sys.exit(f"callgrind.py: h2load did not get {n} answers of 200:\n{out}")


def measure(name, run, up_port, up_h2_port):
    port, h2_port, admin_port = compare.free_ports(3)
    values = dict(RUN=run, PORT=port, H2_PORT=h2_port, ADMIN_PORT=admin_port, UP_PORT=up_port,
                  UP_H2_PORT=up_h2_port, WORKERS=1)
    if name == "mesh":
        prog = os.environ.get("MESH_BIN", "target/release/mesh-proxy")
        if not os.access(prog, os.X_OK):
            return None, f"mesh-proxy not found at {prog} (cargo build --release -p mesh-proxy)"
        template = os.environ.get("MESH_CONFIG")
        if template:
            with open(template) as f:
                text = f.read()
            for k, v in values.items():
                text = text.replace("{" + k + "}", str(v))
            conf = f"{run}/mesh.yaml"
            with open(conf, "w") as f:
                f.write(text)
        else:
            conf = compare.render("mesh.yaml", f"{run}/mesh.yaml", values)
        argv = [prog, "run", "--config", conf]
    elif name == "haproxy":
        prog = compare.which("haproxy")
        if not prog:
            return None, "haproxy not installed"
        argv = [prog, "-db", "-f", compare.render("haproxy.cfg", f"{run}/haproxy.cfg", values)]
    else:
        return None, f"unknown target {name}"
    out = f"{run}/cg.{name}"
    log = open(f"{run}/{name}.callgrind.log", "w")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if CACHE else []
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + sim + argv,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        if not compare.wait_ok(port, vg, secs=120):
            return None, f"{name} did not start under valgrind (see {run}/{name}.callgrind.log)"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        send(conn, WARMUP)
        subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, capture_output=True)
        if CONNS > 1:
            send_concurrently(port, REQUESTS)
        else:
            send(conn, REQUESTS)
        before = set(glob.glob(f"{out}.{vg.pid}*"))
        subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, capture_output=True)
        deadline = time.time() + 30
        dumps = []
        while time.time() < deadline and not dumps:
            dumps = sorted(set(glob.glob(f"{out}.{vg.pid}*")) - before)
            time.sleep(0.2)
        conn.close()
        total = 0
        sums = {}
        for d in dumps:
            with open(d) as f:
                events = []
                for line in f:
                    if line.startswith("events:"):
                        events = line.split()[1:]
                    if line.startswith(("summary:", "totals:")):
                        counts = [int(x) for x in line.split()[1:]]
                        total += counts[0]
                        for e, c in zip(events, counts):
                            sums[e] = sums.get(e, 0) + c
                        break
        if CACHE and total:
            per = {e: c / REQUESTS for e, c in sums.items()}
            print(f"{name}: per request, L1 instruction misses {per.get('I1mr', 0):.0f}, L1 data "
                  f"misses {per.get('D1mr', 0) + per.get('D1mw', 0):.0f} (reads "
                  f"{per.get('D1mr', 0):.0f}), mispredicted branches: conditional "
                  f"{per.get('Bcm', 0):.1f} of {per.get('Bc', 0):.0f}, indirect "
                  f"{per.get('Bim', 0):.1f} of {per.get('Bi', 0):.0f}")
        return total / REQUESTS if total else None, None
    finally:
        vg.terminate()
        try:
            vg.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vg.kill()
        log.close()


def main(argv):
    names = argv or ["mesh", "haproxy"]
    for tool in ("valgrind", "callgrind_control", "nginx") + (("h2load",) if CONNS > 1 else ()):
        if not compare.which(tool):
            sys.exit(f"callgrind.py: missing {tool} (apt-get install valgrind nginx-light "
                     "nghttp2-client)")
    run = tempfile.mkdtemp(prefix="mesh-callgrind.")
    os.chmod(run, 0o755)
    up_port, up_h2_port = compare.free_ports(2)
    conf = compare.render("upstream-nginx.conf", f"{run}/upstream.conf",
                          dict(RUN=run, UP_PORT=up_port, UP_H2_PORT=up_h2_port))
    up = subprocess.Popen([compare.which("nginx"), "-e", f"{run}/upstream.err", "-p", run + "/", "-c", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        if not compare.wait_ok(up_port, up):
            sys.exit("callgrind.py: the origin nginx did not start")
        for name in names:
            per, why = measure(name, run, up_port, up_h2_port)
            if per is None:
                print(f"{name}: skipped ({why})", file=sys.stderr)
                continue
            results[name] = per
            how = (f"{REQUESTS} requests over {CONNS} connections at once" if CONNS > 1
                   else f"{REQUESTS} requests on one keep-alive connection")
            print(f"{name}: {per / 1000:.1f}k instructions per proxied HTTP/1.1 request "
                  f"({how}, after {WARMUP})")
    finally:
        up.terminate()
        up.wait(timeout=10)
    if "mesh" in results and "haproxy" in results:
        print(f"mesh / haproxy: {results['mesh'] / results['haproxy']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
