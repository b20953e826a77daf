#!/usr/bin/env python3
"""Instructions per proxied HTTP/1.1 request, counted by valgrind's callgrind.

Wall-clock CPU figures move by 5-10 % on a shared VM; callgrind counts the instructions the
proxy's process executes (user space, every thread), the same for the same binary and input
whatever else the machine does. For each target: start it under callgrind in front of the
origin (nginx answering "ok"), send WARMUP requests over one keep-alive connection, zero the
counters, send REQUESTS more on that connection, dump, and divide.

    python3 benches/load/callgrind.py [mesh] [haproxy]      # default: both, when installed

Knobs: REQUESTS=5000 WARMUP=500 HEADS=minimal (browser: compare.py's BROWSER_HEADERS on
every request) MESH_BIN=target/release/mesh-proxy MESH_CONFIG=<a config to
use instead of benches/load/templates/mesh.yaml, with the same placeholders> HAPROXY_CONFIG=<the
same for haproxy.cfg; templates/haproxy-telemetry.cfg: HAProxy doing the mesh's telemetry work>.

CONNS=50 sends the measured requests with `h2load --h1 -c CONNS` instead (REQUESTS in all,
CONNS connections at once): the count at a saturation-like concurrency, where a proxy handles
many connections' events per wake-up and the one-connection count's per-wake-up costs spread
out. CACHE=1 adds callgrind's cache and branch simulation and prints, per request, the
first-level instruction and data cache misses and the mispredicted conditional and indirect
branches: what separates two proxies' CPU time at equal instruction counts. LOCKS=1 dumps the
counts per instruction (`--dump-instr=yes`) and prints the locked read-modify-write
instructions (a `lock` prefix, or `xchg` with memory: atomic reference counts, counters,
compare-and-swap) executed per request in the proxy's binary and in libc, with the functions
that execute most of them (needs objdump, from binutils).

GRPC=1 (with CONNS > 1) sends each measured request as a unary gRPC call would go out: a
`POST` with `content-type: application/grpc`, `te: trailers` and a one-message body (5-byte
prefix and 16 bytes); the origin still answers "ok", which the proxy passes as the call's
answer. It measures what a gRPC call costs the proxy beyond a GET (its message counts, an
open call's report timer), not a real gRPC exchange.
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
GRPC = os.environ.get("GRPC", "") not in ("", "0")
if GRPC and CONNS <= 1:
    sys.exit("callgrind.py: GRPC=1 needs CONNS > 1 (the calls go out with h2load)")
LOCKS = os.environ.get("LOCKS", "") not in ("", "0")


def send(conn, n):
    for i in range(n):
        conn.request("GET", f"/r{i}", headers={"Host": compare.AUTHORITY, **dict(compare.extra_headers())})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"ok":
            sys.exit(f"callgrind.py: request {i} got {r.status} {body[:80]!r}")


def send_concurrently(port, n):
    """n requests over CONNS connections at once (h2load, HTTP/1.1), all answered 200."""
    grpc = []
    if GRPC:
        body = os.path.join(tempfile.gettempdir(), "mesh-callgrind-grpc.bin")
        with open(body, "wb") as f:
            f.write(b"\0\0\0\0\x10" + b"m" * 16)
        grpc = ["-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run([compare.which("h2load"), "--h1", "-n", str(n), "-c", str(CONNS), "-H",
                          f":authority: {compare.AUTHORITY}", *compare.header_args(), *grpc,
                          f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=1800).stdout
    if f"{n} succeeded" not in out or "status codes: " + str(n) + " 2xx" not in out:
        sys.exit(f"callgrind.py: h2load did not get {n} answers of 200:\n{out}")


def config(env, default, out, values):
    """The configuration file at `out`: the file the environment variable `env` names, else the
    template `default`, its placeholders filled from `values`."""
    path = os.environ.get(env)
    # (an absolute path: compare.render's join with its templates folder keeps it whole)
    return compare.render(os.path.abspath(path) if path else default, out, values)


def measure(name, run, up_port, up_h2_port):
    port, h2_port, admin_port = compare.free_ports(3)
    values = dict(RUN=run, PORT=port, H2_PORT=h2_port, ADMIN_PORT=admin_port, UP_PORT=up_port,
                  UP_H2_PORT=up_h2_port, WORKERS=1)
    if name == "mesh":
        prog = os.environ.get("MESH_BIN", "target/release/mesh-proxy")
        if not os.access(prog, os.X_OK):
            return None, f"mesh-proxy not found at {prog} (cargo build --release -p mesh-proxy)"
        argv = [prog, "run", "--config", config("MESH_CONFIG", "mesh.yaml", f"{run}/mesh.yaml", values)]
    elif name == "haproxy":
        prog = compare.which("haproxy")
        if not prog:
            return None, "haproxy not installed"
        argv = [prog, "-db", "-f", config("HAPROXY_CONFIG", "haproxy.cfg", f"{run}/haproxy.cfg", values)]
    else:
        return None, f"unknown target {name}"
    out = f"{run}/cg.{name}"
    log = open(f"{run}/{name}.callgrind.log", "w")
    sim = (["--cache-sim=yes", "--branch-sim=yes"] if CACHE else []) + (["--dump-instr=yes"] if LOCKS else [])
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
        if LOCKS and total:
            for d in dumps:
                locked_per_request(d, prog)
        return total / REQUESTS if total else None, None
    finally:
        vg.terminate()
        try:
            vg.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vg.kill()
        log.close()


def locked_addresses(binary):
    """The addresses of `binary`'s locked read-modify-write instructions (objdump)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True,
                         text=True).stdout
    found = set()
    for line in out.splitlines():
        p = line.split("\t")
        if len(p) < 2 or not p[0].strip().endswith(":"):
            continue
        ins = p[1].split()
        if not ins:
            continue
        if ins[0] == "lock" or (ins[0] == "xchg" and "(" in p[1]):
            found.add(int(p[0].strip().rstrip(":"), 16))
    return found


def locked_per_request(dump, binary):
    """Locked instructions per request in `binary` and in libc, from an instruction-level
    dump (callgrind writes each instruction's address relative to its object)."""
    names, counts, fn_of = {}, {}, {}
    ob = fn = None
    skip = False
    last = 0

    def name(kind, text):
        num, _, rest = text.partition(")")
        key = (kind, num)
        if rest.strip():
            names[key] = rest.strip()
        return names.get(key, "?")

    with open(dump) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                ob = name("ob", line[3:])
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith(("cfn=", "cob=")):
                name("fn" if line[1] == "f" else "ob", line[4:])
            elif line.startswith("calls="):
                skip = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                p = line.split()
                tok = p[0]
                last = (int(tok, 16) if tok.startswith("0x") else last if tok == "*"
                        else last + int(tok) if tok[0] in "+-" else int(tok))
                if skip:
                    skip = False
                elif len(p) >= 3:
                    counts[(ob, last)] = counts.get((ob, last), 0) + int(p[2])
                    fn_of[(ob, last)] = fn
    libc = next((o for o, _ in counts if o and "/libc.so" in o), None)
    own = os.path.realpath(binary)
    for label, obj in (("its binary", own), ("libc", libc)):
        if not obj:
            continue
        locked = locked_addresses(obj)
        by_fn = {}
        for (o, a), k in counts.items():
            if o and os.path.realpath(o) == os.path.realpath(obj) and a in locked:
                by_fn[fn_of[(o, a)]] = by_fn.get(fn_of[(o, a)], 0) + k
        total = sum(by_fn.values()) / REQUESTS
        top = sorted(by_fn.items(), key=lambda kv: -kv[1])[:8]
        print(f"  locked instructions per request in {label}: {total:.1f} ("
              + "; ".join(f"{(f or '?')[:70]} {k / REQUESTS:.1f}" for f, k in top) + ")")


def main(argv):
    names = argv or ["mesh", "haproxy"]
    for tool in (("valgrind", "callgrind_control", "nginx") + (("h2load",) if CONNS > 1 else ())
                 + (("objdump",) if LOCKS else ())):
        if not compare.which(tool):
            sys.exit(f"callgrind.py: missing {tool} (apt-get install valgrind nginx-light "
                     "nghttp2-client binutils)")
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
