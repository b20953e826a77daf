#!/usr/bin/env python3
"""TCP proxying: mesh-proxy's `outboundPorts` listener beside HAProxy (`mode tcp`) and Envoy
(`tcp_proxy`), in one run, against the same origin over loopback.

For each target, ROUNDS rounds (the order reversed every other round), medians reported:

- bulk throughput: CONNS connections each send BULK_MB MiB through the proxy to a sink that
  counts and answers `ok` at the client's FIN: MB/s, and the proxy's CPU seconds per GB
  (utime + stime of its process tree, /proc);
- short connections: SHORT connections (SHORT_PAR in parallel), each sends 64 bytes,
  half-closes and reads the echo to EOF: connections/s and the proxy's CPU milliseconds per
  1000 connections;
- RSS: idle (after start-up) and the high-water mark (VmHWM) at the end.

The proxy runs on PROXY_CPU; the clients and the origin (Python threads, large buffers) on
LOAD_CPU. Quote results as ratios between targets of one run, never as absolute figures.

    python3 benches/load/tcp.py [TARGET ...]    # default: haproxy envoy mesh

Knobs (environment): ROUNDS=3 CONNS=4 BULK_MB=256 SHORT=2000 SHORT_PAR=8 PROXY_CPU=0
LOAD_CPU=1 MESH_BIN=target/release/mesh-proxy ENVOY_BIN=<path>.
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (its /proc helpers, envoy_bin, which)

ENV = os.environ
ROUNDS = int(ENV.get("ROUNDS", 3))
CONNS = int(ENV.get("CONNS", 4))
BULK_MB = int(ENV.get("BULK_MB", 256))
SHORT = int(ENV.get("SHORT", 2000))
SHORT_PAR = int(ENV.get("SHORT_PAR", 8))
PROXY_CPU = ENV.get("PROXY_CPU", "0")
LOAD_CPU = ENV.get("LOAD_CPU", "1")
MESH_BIN = ENV.get("MESH_BIN", "target/release/mesh-proxy")
CHUNK = b"x" * (1 << 20)


def log(msg):
    print(f"[tcp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# === the origin: a sink (counts, answers ok at EOF) and an echo server ===


def serve(port_holder, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    port_holder.append(s.getsockname()[1])

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def sink(c):
    buf = bytearray(1 << 20)
    with c:
        while c.recv_into(buf):
            pass
        c.sendall(b"ok")


def echo(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)


# === the proxies ===


def port_pair():
    """Two adjacent free ports below the kernel's ephemeral range (ports taken from that
    range can be handed to the benchmark's own outgoing connections before the proxy binds
    them)."""
    import random

    while True:
        p = random.randrange(20000, 32000)
        socks = []
        try:
            for q in (p, p + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def start(name, run, listen, bulk_port, echo_port):
    """Starts `name` proxying `listen` → bulk origin and `listen+1` → echo origin."""
    if name == "haproxy":
        prog = compare.which("haproxy")
        if not prog:
            return None
        cfg = f"{run}/haproxy.cfg"
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen bulk
    bind 127.0.0.1:{listen}
    server o 127.0.0.1:{bulk_port}
listen short
    bind 127.0.0.1:{listen + 1}
    server o 127.0.0.1:{echo_port}
""")
        argv = [prog, "-db", "-f", cfg]
    elif name == "envoy":
        prog = compare.envoy_bin()
        if not prog:
            return None
        cfg = f"{run}/envoy.yaml"

        def listener(n, port, cluster):
            return f"""  - name: {n}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {n}
          cluster: {cluster}
"""

        def cluster(n, port):
            return f"""  - name: {n}
    connect_timeout: 5s
    load_assignment:
      cluster_name: {n}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""

        with open(cfg, "w") as f:
            f.write("static_resources:\n  listeners:\n")
            f.write(listener("bulk", listen, "bulk"))
            f.write(listener("short", listen + 1, "short"))
            f.write("  clusters:\n")
            f.write(cluster("bulk", bulk_port))
            f.write(cluster("short", echo_port))
        argv = [prog, "-c", cfg, "--concurrency", "1", "--log-level", "error"]
    elif name == "mesh":
        if not os.path.exists(MESH_BIN):
            return None
        cfg = f"{run}/mesh.yaml"
        admin = compare.free_ports(1)[0]
        with open(cfg, "w") as f:
            f.write(f"""apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: bench}}
spec:
  concurrency: 1
  admin: {{address: 127.0.0.1, port: {admin}}}
  outboundPorts:
    "bulk.bench.local:9000": {listen}
    "short.bench.local:9000": {listen + 1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bulk}}
spec:
  hosts: [bulk.bench.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {bulk_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: short}}
spec:
  hosts: [short.bench.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {echo_port}}}}}]
""")
        argv = [MESH_BIN, "run", "--config", cfg]
    else:
        return None
    proc = subprocess.Popen(
        compare.pinned(PROXY_CPU, argv),
        stdout=subprocess.DEVNULL,
        stderr=open(f"{run}/{name}-{listen}.log", "w"),
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            return None
        try:
            if short_one(listen + 1):
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    return None


# === the clients ===


def short_one(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"y" * 64)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
        return got == b"y" * 64


def bulk(port):
    per_conn = BULK_MB * (1 << 20) // CONNS
    errors = []

    def one():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                left = per_conn
                while left > 0:
                    n = min(left, len(CHUNK))
                    s.sendall(CHUNK[:n])
                    left -= n
                s.shutdown(socket.SHUT_WR)
                if s.recv(2) != b"ok":
                    errors.append("no ok")
        except OSError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(CONNS)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - t0, len(errors)


def shorts(port):
    errors = []
    per = SHORT // SHORT_PAR

    def run():
        for _ in range(per):
            try:
                if not short_one(port):
                    errors.append("bad echo")
            except OSError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=run) for _ in range(SHORT_PAR)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - t0, len(errors), per * SHORT_PAR


def main(targets):
    targets = targets or ["haproxy", "envoy", "mesh"]
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    bulk_port, echo_port = [], []
    serve(bulk_port, sink)
    serve(echo_port, echo)
    results = {t: {"mbps": [], "cpu_gb": [], "cps": [], "cpu_kconn": [], "err": 0} for t in targets}
    rss = {}
    run = tempfile.mkdtemp(prefix="tcp-bench-")
    for r in range(ROUNDS):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for name in order:
            listen = port_pair()
            proc = start(name, run, listen, bulk_port[0], echo_port[0])
            if proc is None:
                log(f"{name}: not started (missing, or not answering)")
                continue
            idle = compare.mem_kb(proc.pid, "VmRSS")
            c0 = compare.cpu_ticks(proc.pid)
            secs, err = bulk(listen)
            c1 = compare.cpu_ticks(proc.pid)
            gb = BULK_MB / 1024
            results[name]["mbps"].append(BULK_MB / secs)
            results[name]["cpu_gb"].append((c1 - c0) / compare.CLK_TCK / gb)
            results[name]["err"] += err
            s_secs, s_err, n = shorts(listen + 1)
            c2 = compare.cpu_ticks(proc.pid)
            results[name]["cps"].append(n / s_secs)
            results[name]["cpu_kconn"].append((c2 - c1) / compare.CLK_TCK * 1000 / (n / 1000))
            results[name]["err"] += s_err
            hwm = compare.mem_kb(proc.pid, "VmHWM")
            rss[name] = (idle, hwm)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log(f"round {r + 1} {name}: {BULK_MB / secs:.0f} MB/s, {n / s_secs:.0f} conn/s")
    print(f"TCP proxying, {ROUNDS} rounds (medians); bulk: {CONNS} × {BULK_MB // CONNS} MiB; "
          f"short: {SHORT} connections, {SHORT_PAR} in parallel")
    print("| target | bulk MB/s | CPU s / GB | short conn/s | CPU ms / 1000 conns | RSS idle MB | RSS peak MB | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for t in targets:
        m = results[t]
        if not m["mbps"]:
            continue
        med = statistics.median
        idle, hwm = rss.get(t, (0, 0))
        print(f"| {t} | {med(m['mbps']):.0f} | {med(m['cpu_gb']):.2f} | {med(m['cps']):.0f} | "
              f"{med(m['cpu_kconn']):.0f} | {idle / 1024:.1f} | {hwm / 1024:.1f} | {m['err']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
