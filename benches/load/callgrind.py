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


def send(conn, n):
    for i in range(n):
        conn.request("GET", f"/r{i}", headers={"Host": compare.AUTHORITY})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"ok":
            sys.exit(f"callgrind.py: request {i} got {r.status} {body[:80]!r}")


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
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + argv,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        if not compare.wait_ok(port, vg, secs=120):
            return None, f"{name} did not start under valgrind (see {run}/{name}.callgrind.log)"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        send(conn, WARMUP)
        subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, capture_output=True)
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
        for d in dumps:
            with open(d) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total += int(line.split()[1])
                        break
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
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not compare.which(tool):
            sys.exit(f"callgrind.py: missing {tool} (apt-get install valgrind nginx-light)")
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
            print(f"{name}: {per / 1000:.1f}k instructions per proxied HTTP/1.1 request "
                  f"({REQUESTS} requests on one keep-alive connection, after {WARMUP})")
    finally:
        up.terminate()
        up.wait(timeout=10)
    if "mesh" in results and "haproxy" in results:
        print(f"mesh / haproxy: {results['mesh'] / results['haproxy']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
