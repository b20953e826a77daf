#!/usr/bin/env python3
"""mesh-proxy's production build: optimized with a profile of the traffic it serves (PGO).

    python3 benches/load/pgo.py        # writes target/pgo/mesh-proxy (about 12 minutes here)

`cargo build --release` inlines and lays out the code from the compiler's guesses; this
build does it from counts of what a proxy under load runs (rustc's `-Cprofile-generate` and
`-Cprofile-use`, the rustc book's "Profile-guided Optimization"). Same source, same
dependencies: the profile only decides what is inlined and where each block goes, so the
request path takes fewer instructions and fewer cache lines. (The test suite runs on the
ordinary build; this one is checked by step 4's pass.) The measurements are in
docs/performance.md (2026-12-06 13:30, "the profile-guided production build").

Steps, each build in a target directory of its own under target/pgo (the flags differ, so
nothing is shared with target/release):

1. an instrumented build (`-Cprofile-generate=DIR`), for this machine's target triple named
   explicitly so that build scripts and proc-macros are not instrumented;
2. training: the instrumented proxy serves the load harness's traffic for SECS seconds per
   kind (below), each proxy stopped with SIGTERM so that it writes its counts;
3. `llvm-profdata merge` of the counts, with rustc's own llvm-profdata (the rustup component
   `llvm-tools`, added when missing);
4. the optimized build (`-Cprofile-use=FILE`), which serves every kind of the training's
   traffic again for a second each (every answer 2xx, the mTLS pair included) before it is
   copied to target/pgo/mesh-proxy.

The training traffic: the default outbound sidecar (benches/load/templates/mesh.yaml) with
HTTP/1.1 requests (the authority only, and a browser's head), h2c, and unary gRPC calls over
h2c; HTTP/1.1 with the access log on (mesh-accesslog-text.yaml), with the resilience stack
(mesh-resilience.yaml) and on the inbound side (mesh-inbound.yaml); a pair of proxies over
mTLS (mtls.py's configuration), keep-alive and with a handshake per request. Traffic it does
not cover (TCP routes, a gateway's TLS termination, HTTP/2 upstreams, the JSON access log)
works the same, laid out without the profile's help.

Needs python3, cargo and rustup, wrk, h2load (nghttp2-client), nginx and taskset. Knobs:
SECS=3 (per kind of traffic), PGO_OUT=$CARGO_TARGET_DIR/pgo (target/pgo),
LLVM_PROFDATA=<path> (else the llvm-tools component's), and compare.py's (CONNS, PROXY_CPU,
LOAD_CPU: by default the first two CPUs this process may run on, or both the one there is).
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

# compare.py pins the proxy to PROXY_CPU and the load to LOAD_CPU (0 and 1 by default): here
# they default to the first two CPUs this process may run on (both to the one there is, on
# a machine or container with one)
_cpus = sorted(os.sched_getaffinity(0))
os.environ.setdefault("PROXY_CPU", str(_cpus[0]))
os.environ.setdefault("LOAD_CPU", str(_cpus[min(1, len(_cpus) - 1)]))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402  (ports, templates, the origin, wrk)
import mtls  # noqa: E402  (the mTLS pair's configuration)

SECS = int(os.environ.get("SECS", "3"))
OUT = os.path.abspath(os.environ.get("PGO_OUT") or
                      os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "pgo"))
# the templates served with HTTP/1.1 load only, beside mesh.yaml's full set
TEMPLATES = ["mesh-accesslog-text.yaml", "mesh-resilience.yaml", "mesh-inbound.yaml"]


class Failed(Exception):
    """A step that failed: the processes started are stopped before it is reported."""


def log(msg):
    c.log(f"pgo: {msg}")


def host_triple():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("host:"))


def llvm_profdata(triple):
    """rustc's own llvm-profdata (a profile's format follows the LLVM that wrote it)."""
    if os.environ.get("LLVM_PROFDATA"):
        return os.environ["LLVM_PROFDATA"]
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    path = f"{sysroot}/lib/rustlib/{triple}/bin/llvm-profdata"
    if not os.access(path, os.X_OK) and shutil.which("rustup"):
        log("llvm-profdata missing: rustup component add llvm-tools")
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=False)
    if not os.access(path, os.X_OK):
        raise Failed(f"no llvm-profdata at {path} (rustup component add llvm-tools, or set "
                     "LLVM_PROFDATA to one from rustc's LLVM version: rustc -vV)")
    return path


def build(triple, target_dir, flag):
    """`cargo build --release -p mesh-proxy` with `flag` added to the rustc flags of the
    environment (passed as CARGO_ENCODED_RUSTFLAGS: a path with a space stays one flag);
    the binary's path."""
    env = dict(os.environ)
    if "CARGO_ENCODED_RUSTFLAGS" in env:
        flags = [f for f in env["CARGO_ENCODED_RUSTFLAGS"].split("\x1f") if f]
    else:
        flags = env.get("RUSTFLAGS", "").split()
    env.pop("RUSTFLAGS", None)
    env["CARGO_ENCODED_RUSTFLAGS"] = "\x1f".join(flags + [flag])
    log(f"cargo build --release -p mesh-proxy --target {triple} --target-dir {target_dir} "
        f"(rustc flags: {' '.join(flags + [flag])})")
    done = subprocess.run(["cargo", "build", "--release", "--locked", "-p", "mesh-proxy",
                           "--target", triple, "--target-dir", target_dir], env=env)
    if done.returncode != 0:
        raise Failed(f"cargo build failed ({done.returncode})")
    return f"{target_dir}/{triple}/release/mesh-proxy"


def stop(proc, name):
    """SIGTERM, and the exit awaited (the instrumented proxy writes its counts on the way
    out); a proxy that does not exit in 30 s is killed. The failure's text, or None."""
    if proc.poll() is not None:
        return f"{name} exited early ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"{name} did not exit on SIGTERM: its counts are lost"
    return f"{name} exited with {code} on SIGTERM" if code != 0 else None


def stopped(procs):
    """Stops every (process, name) of `procs`, the last first; raises the first failure."""
    errors = [e for p, name in reversed(procs) if (e := stop(p, name))]
    if errors:
        raise Failed("; ".join(errors))


def load(cmd, secs, name):
    """One load generator's run on LOAD_CPU; fails unless every request was answered 2xx."""
    try:
        done = subprocess.run(c.pinned(c.LOAD_CPU, cmd), capture_output=True, text=True,
                              timeout=secs + 60)
    except subprocess.TimeoutExpired:
        raise Failed(f"{name}: {cmd[0]} did not finish") from None
    out = done.stdout
    if cmd[0] == "wrk":
        n = re.search(r"(\d+) requests in", out)
        bad = not n or int(n.group(1)) == 0 or "Non-2xx" in out or "Socket errors" in out
    else:
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        bad = not codes or int(codes.group(1)) == 0 or any(int(x) for x in codes.groups()[1:]) \
            or not re.search(r"\b0 errored", out)
    if bad or done.returncode != 0:
        raise Failed(f"{name}: the traffic failed ({cmd[0]} exited {done.returncode}):\n"
                     f"{out}{done.stderr}")


def wrk(port, secs, heads=()):
    return ["wrk", "-t1", f"-c{c.CONNS}", f"-d{secs}s", "-H", f"Host: {c.AUTHORITY}",
            *[a for n, v in heads for a in ("-H", f"{n}: {v}")], f"http://127.0.0.1:{port}/"]


def h2load(port, secs, extra=()):
    return ["h2load", "-t1", "-c10", "-m10", "-D", str(secs), "-H",
            f":authority: {c.AUTHORITY}", *extra, f"http://127.0.0.1:{port}/"]


def serve_templates(binary, secs, run, up_port, up_h2_port):
    """`binary` serves each template's traffic for `secs` seconds per kind, every answer 2xx."""
    grpc_body = f"{run}/grpc.bin"
    with open(grpc_body, "wb") as f:
        f.write(b"\0\0\0\0\x10" + b"m" * 16)  # one gRPC message of 16 bytes
    for template in ["mesh.yaml"] + TEMPLATES:
        name = template.removesuffix(".yaml")
        logs = []
        try:
            t, why = c.start(f"{name}={binary},{template}", run, up_port, up_h2_port, logs)
        finally:
            for f in logs:
                f.close()
        if t is None:
            raise Failed(why)
        try:
            log(f"{template}: {secs} s of each kind of traffic")
            load(wrk(t.port, secs), secs, f"{template}, HTTP/1.1")
            if template == "mesh.yaml":
                load(wrk(t.port, secs, c.BROWSER_HEADERS), secs, f"{template}, a browser's head")
                load(h2load(t.port, secs), secs, f"{template}, h2c")
                load(h2load(t.port, secs, ["-d", grpc_body, "-H", "content-type: application/grpc",
                                           "-H", "te: trailers"]), secs, f"{template}, gRPC")
        finally:
            stopped([(t.proc, name)])


def serve_mtls(binary, secs, run, up_port):
    """A pair of `binary`s over mTLS serves `secs` seconds of keep-alive traffic, then as many
    of a new mTLS connection per request, every answer 2xx."""
    os.makedirs(run, exist_ok=True)
    certs = f"{run}/certs"
    for argv in ([binary, "ca", "init", "--out", certs, "--trust-domain", mtls.TD],
                 *([binary, "ca", "issue", "--ca", certs, "--service-account", sa]
                   for sa in ("bench-server", "bench-client"))):
        if subprocess.run(argv).returncode != 0:
            raise Failed(f"{' '.join(argv)} failed")
    for handshake in (False, True):
        name = "mtls-handshake" if handshake else "mtls"
        client_port, server_port, a1, a2 = c.free_ports(4)
        server, client = mtls.mesh_configs(certs, client_port, server_port, up_port, (a1, a2),
                                           handshake)
        procs = []
        try:
            for side, text in (("server", server), ("client", client)):
                path = f"{run}/{name}-{side}.yaml"
                with open(path, "w") as f:
                    f.write(text)
                with open(f"{run}/{name}-{side}.log", "w") as out:
                    argv = c.pinned(c.PROXY_CPU, [binary, "run", "--config", path])
                    procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT),
                                  f"{name}-{side}"))
            if not c.wait_ok(client_port, procs[-1][0], secs=30):
                raise Failed(f"the {name} pair did not answer (see {run}/{name}-*.log)")
            kind = "a handshake per request" if handshake else "keep-alive"
            log(f"the mTLS pair ({kind}): {secs} s")
            load(wrk(client_port, secs), secs, name)
        finally:
            stopped(procs)


def serve_all(binary, secs, run):
    """`binary` serves every kind of traffic for `secs` seconds each, in front of an origin of
    its own."""
    os.makedirs(run, exist_ok=True)
    os.chmod(run, 0o755)  # nginx's workers read their files as another user
    up, up_port, up_h2_port = c.start_origin(run)
    try:
        serve_templates(binary, secs, run, up_port, up_h2_port)
        serve_mtls(binary, secs, f"{run}/mtls", up_port)
    finally:
        c.stop_all([up])


def main():
    for tool in ("wrk", "h2load", "nginx", "taskset"):
        if not c.which(tool):
            raise Failed(f"missing {tool} (apt-get install wrk nghttp2-client nginx-light "
                         "util-linux; see benches/load/README.md)")
    triple = host_triple()
    profdata = llvm_profdata(triple)
    profiles = f"{OUT}/profiles"
    shutil.rmtree(profiles, ignore_errors=True)
    os.makedirs(profiles)
    instrumented = build(triple, f"{OUT}/gen", f"-Cprofile-generate={profiles}")

    run = tempfile.mkdtemp(prefix="mesh-pgo.")
    os.chmod(run, 0o755)
    try:
        serve_all(instrumented, SECS, f"{run}/training")
        raw = glob.glob(f"{profiles}/*.profraw")
        if not raw:
            raise Failed(f"the instrumented proxy wrote no counts in {profiles}")
        merged = f"{OUT}/mesh-proxy.profdata"
        if subprocess.run([profdata, "merge", "-o", merged, *raw]).returncode != 0:
            raise Failed("llvm-profdata merge failed")
        log(f"{len(raw)} count files merged into {merged}")

        optimized = build(triple, f"{OUT}/use", f"-Cprofile-use={merged}")
        # the optimized build serves every kind of traffic once more, briefly, before it is kept
        serve_all(optimized, 1, f"{run}/check")
    except Failed:
        log(f"configurations and logs kept in {run}")
        raise
    shutil.rmtree(run, ignore_errors=True)
    shutil.copy2(optimized, f"{OUT}/mesh-proxy")
    log(f"wrote {OUT}/mesh-proxy (beside the ordinary build: python3 benches/load/compare.py "
        f"haproxy mesh pgo={OUT}/mesh-proxy)")


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(f"pgo.py: {e}")
