//! The reference proxy's command line as docs/architecture.md describes it ("The proxy's
//! contracts"): `mesh-proxy demo` (in-process through `DemoMesh`, and as a process with
//! `--drive`), and `mesh-proxy run` as a real process: it logs where it listens, serves,
//! reloads on SIGHUP and when a file changes, and on SIGTERM drains and exits 0.
//!
//! The process tests run this crate's `mesh-proxy-e2e` binary, which is `mesh-proxy`'s own
//! `main` (`mesh_proxy::cli::main`), because Cargo exposes only the tested package's binaries
//! to its integration tests.

use crate::support;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_proxy::demo::{DemoMesh, PLACEHOLDER_PORTS, get, printed_config};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy-e2e");

/// The demo's contract (`mesh-proxy demo`): two versions behind a 90/10 canary, `x-user:
/// tester` pinned to v2. Over 300 unpinned requests v2's count is Binomial(300, 0.1): mean
/// 30, σ ≈ 5.2, so it is checked within [1, 61] (±6σ; zero has probability 0.9³⁰⁰ ≈ 2e-14).
#[test]
fn demo_mesh_serves_both_versions_and_pins_tester_to_v2() {
    let demo = DemoMesh::start(0, 0).unwrap();
    let out = demo.proxy.outbound_addr().unwrap();
    assert_ne!(out.port(), 0);
    assert!(demo.proxy.state().is_ready());
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..300 {
        let (status, body) = get(out, None).unwrap();
        assert_eq!(status, 200, "{body}");
        match body.as_str() {
            "reviews v1\n" => n1 += 1,
            "reviews v2\n" => n2 += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert!(
        (1..=61).contains(&n2),
        "v2 served {n2} of 300 (v1 {n1}); expected 30 ± 31 (6σ)"
    );
    for _ in 0..50 {
        assert_eq!(
            get(out, Some("tester")).unwrap(),
            (200, "reviews v2\n".to_string())
        );
    }
    assert_eq!(demo.v1.load(Ordering::Relaxed), n1);
    assert_eq!(demo.v2.load(Ordering::Relaxed), n2 + 50);
    demo.proxy.drain_blocking();
}

/// `mesh-proxy demo --drive 300 --port 0 --admin-port 0` as a process: it prints the split
/// and exits 0 when no request failed. Same bounds as above.
#[test]
fn demo_drive_as_a_process() {
    let out = Command::new(BIN)
        .args(["demo", "--drive", "300", "--port", "0", "--admin-port", "0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("drove 300 requests"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // "drove 300 requests: v1 served A, v2 served B, F failed" (the 1 and 2 of v1/v2 included)
    let [300, 1, a, 2, b, failed] = nums[..] else {
        panic!("{line}")
    };
    assert_eq!((a + b, failed), (300, 0), "{line}");
    assert!((1..=61).contains(&b), "{line}");
}

/// `demo --print-config` is what the demo runs: the same text line for line (comment lines
/// aside), except the two endpoint ports, which the demo picks at start-up; the printed
/// lines mark them as placeholders and the running ones carry v1's and v2's real ports.
#[test]
fn demo_print_config_is_the_running_configuration_with_marked_placeholders() {
    let demo = DemoMesh::start(0, 0).unwrap();
    let printed = printed_config(0, 0);
    let code = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(String::from)
            .collect()
    };
    let (printed_lines, running_lines) = (code(&printed), code(&demo.config));
    assert_eq!(printed_lines.len(), running_lines.len(), "{printed}");
    let differing: Vec<(&String, &String)> = printed_lines
        .iter()
        .zip(&running_lines)
        .filter(|(p, r)| p != r)
        .collect();
    let (p1, p2) = PLACEHOLDER_PORTS;
    let expected = [(p1, demo.v1_addr.port()), (p2, demo.v2_addr.port())];
    assert_eq!(differing.len(), 2, "{differing:?}");
    for ((printed, running), (placeholder, real)) in differing.into_iter().zip(expected) {
        assert!(
            printed.contains(&format!("{{http: {placeholder}}}  # placeholder")),
            "{printed}"
        );
        assert_eq!(running.trim(), format!("ports: {{http: {real}}}"));
    }
    // what it prints loads as it is
    mesh_core::config::load_str("printed.yaml", &printed).unwrap();
    demo.proxy.drain_blocking();

    // the command prints exactly that, for the ports it is given
    let out = Command::new(BIN)
        .args([
            "demo",
            "--print-config",
            "--port",
            "1234",
            "--admin-port",
            "1235",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        printed_config(1234, 1235)
    );
}

/// A demo port in use is refused with the option that moves it (`--port 0` picks a free
/// one), in-process and as a process.
#[test]
fn demo_refuses_a_port_in_use_naming_its_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let err = DemoMesh::start(port, 0).unwrap_err();
    assert!(
        err.contains(&format!(
            "outbound listener 127.0.0.1:{port}: address already in use"
        )),
        "{err}"
    );
    assert!(
        err.contains("--port 0") && !err.contains("--admin-port"),
        "{err}"
    );

    let err = DemoMesh::start(0, port).unwrap_err();
    assert!(
        err.contains(&format!(
            "admin listener 127.0.0.1:{port}: address already in use"
        )),
        "{err}"
    );
    assert!(err.contains("--admin-port 0"), "{err}");

    let out = Command::new(BIN)
        .args([
            "demo",
            "--drive",
            "1",
            "--port",
            &port.to_string(),
            "--admin-port",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    assert!(stderr.contains("--port 0"), "{stderr}");
}

// === mesh-proxy run ===

/// A child process, killed if the test ends before it exits; its stderr lines collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Standard output's lines, when captured ([`Proc::run_capturing_stdout`]).
    out: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    fn run(config: &Path) -> Proc {
        Proc::run_files(&[config])
    }

    /// `run` with one `--config` per file.
    fn run_files(configs: &[&Path]) -> Proc {
        Proc::spawn(configs, false)
    }

    /// `run`, keeping what it writes on its standard output (Istio's `envoy` access log
    /// provider's lines).
    fn run_capturing_stdout(config: &Path) -> Proc {
        Proc::spawn(&[config], true)
    }

    fn spawn(configs: &[&Path], stdout: bool) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |from: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(from).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let lines = read(Box::new(child.stderr.take().unwrap()));
        let out = match child.stdout.take() {
            Some(o) => read(Box::new(o)),
            None => Arc::default(),
        };
        Proc { child, lines, out }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The `addr=` of the first log line containing `what`, once it is logged.
    async fn logged_addr(&self, what: &str) -> SocketAddr {
        wait_for_line(&self.lines, what).await;
        let lines = self.lines.lock().unwrap();
        let line = lines.iter().find(|l| l.contains(what)).unwrap();
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next());
        addr.and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
    }

    fn count_logged(&self, what: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }
}

/// Waits until one of `lines` (a process's output, read by a thread) contains `what`.
async fn wait_for_line(lines: &Arc<Mutex<Vec<String>>>, what: &str) {
    eventually(&format!("a line with {what:?}"), || {
        let lines = lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l.contains(what)) }
    })
    .await;
}

fn run_config(v1: &Backend, v2: &Backend, to: &str) -> String {
    format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: {to}}}}}]
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[v1, v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    )
}

/// Replaces `path` atomically with `text` (the watcher never reads a half-written file).
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Replaces `path` atomically with `text`, keeping its modification time: a change only
/// SIGHUP can notice (the file watcher compares modification time and length).
fn replace_unnoticed(path: &Path, text: &str) {
    let old = std::fs::metadata(path).unwrap();
    assert_eq!(
        old.len(),
        text.len() as u64,
        "same length, so the watcher cannot see the change"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for_backend(out: SocketAddr, name: &str) {
    eventually(&format!("traffic reaches {name}"), || async move {
        get_once(out, "reviews", &[]).await.backend() == name
    })
    .await;
}

/// `mesh-proxy run` as Istio's sidecar lifecycle expects of Envoy: it serves on the ports it
/// logs, SIGHUP reloads the configuration (Envoy's hot restart / xDS push), a changed file is
/// picked up by the watcher, and SIGTERM drains and exits 0 within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_on_sighup_and_file_change_and_exits_0_on_sigterm() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, run_config(&v1, &v2, "v1")).unwrap();
    let proc = Proc::run(&file);
    let out = proc.logged_addr("outbound listener up").await;
    let admin = proc.logged_addr("admin listener up").await;
    eventually("/ready answers 200", || async move {
        matches!(admin_get_opt(admin, "/ready").await, Some((200, _)))
    })
    .await;
    for _ in 0..5 {
        let r = get_once(out, "reviews", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "v1"),
            "{r:?}\n{}",
            proc.log()
        );
    }

    // SIGHUP: a change the file watcher cannot see
    replace_unnoticed(&file, &run_config(&v1, &v2, "v2"));
    proc.signal("-HUP");
    wait_for_backend(out, "v2").await;
    // the log is read by a thread of its own: the line may come after the traffic moved
    wait_for_line(&proc.lines, "SIGHUP: reloading").await;
    assert_eq!(proc.count_logged("SIGHUP: reloading"), 1, "{}", proc.log());
    assert_eq!(
        proc.count_logged("configuration files changed"),
        0,
        "{}",
        proc.log()
    );
    for _ in 0..5 {
        assert_eq!(get_once(out, "reviews", &[]).await.backend(), "v2");
    }

    // the watcher: a visible edit, no signal
    replace_atomically(&file, &format!("# edited\n{}", run_config(&v1, &v2, "v1")));
    wait_for_backend(out, "v1").await;
    wait_for_line(&proc.lines, "configuration files changed").await;
    assert_eq!(
        proc.count_logged("configuration files changed"),
        1,
        "{}",
        proc.log()
    );

    // SIGTERM: drain, exit 0
    let mut proc = proc;
    proc.signal("-TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling the exit status
    };
    assert_eq!(status.code(), Some(0), "{}", proc.log());
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "the listener is closed"
    );
    wait_for_line(&proc.lines, "drained; exiting").await;
    assert_eq!(proc.count_logged("SIGTERM: draining"), 1, "{}", proc.log());
}

/// A second `mesh-proxy run` on the outbound port of a running one refuses to start (exit 1,
/// naming the listener and the address, announcing no listener) instead of taking a share of
/// the port's connections through `SO_REUSEPORT`; the first keeps serving all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_the_outbound_port_of_a_running_proxy() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let first_file = dir.path().join("first.yaml");
    std::fs::write(&first_file, run_config(&v1, &v2, "v1")).unwrap();
    let first = Proc::run(&first_file);
    let out = first.logged_addr("outbound listener up").await;

    let port_zero = "outbound: {address: 127.0.0.1, port: 0}";
    let text = run_config(&v1, &v2, "v2");
    assert!(text.contains(port_zero), "{text}");
    let second_file = dir.path().join("second.yaml");
    std::fs::write(
        &second_file,
        text.replace(
            port_zero,
            &format!("outbound: {{address: 127.0.0.1, port: {}}}", out.port()),
        ),
    )
    .unwrap();
    let mut second = Proc::run(&second_file);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "the second proxy is still running\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling the exit status
    };
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let lines = second.lines.clone();
    let expected = format!("outbound listener {out}: address already in use");
    eventually("the second proxy's error is read", || {
        let (lines, expected) = (lines.clone(), expected.clone());
        async move { lines.lock().unwrap().iter().any(|l| l.contains(&expected)) }
    })
    .await;
    assert_eq!(second.count_logged("listener up"), 0, "{}", second.log());

    for _ in 0..20 {
        let r = get_once(out, "reviews", &[]).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "v1"), "{r:?}");
    }
}

/// `--config` repeats (`run --config FILE [--config FILE …]`): the bootstrap in one file, the
/// mesh in another, merged into one configuration that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_merges_the_documents_of_every_config_file() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let (boot, mesh) = (dir.path().join("boot.yaml"), dir.path().join("mesh.yaml"));
    std::fs::write(&boot, bootstrap(1, "")).unwrap();
    let whole = run_config(&v1, &v2, "v2");
    let rest = whole.strip_prefix(&bootstrap(1, "")).unwrap();
    assert!(!rest.contains("ProxyBootstrap"), "{rest}");
    std::fs::write(&mesh, rest).unwrap();
    let proc = Proc::run_files(&[&boot, &mesh]);
    let out = proc.logged_addr("outbound listener up").await;
    for _ in 0..5 {
        let r = get_once(out, "reviews", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "v2"),
            "{r:?}\n{}",
            proc.log()
        );
    }
}

/// The access log as logrotate drives Envoy's: the file is moved away, SIGUSR1 makes the
/// proxy reopen its path, and later lines go to the new file (`ProxyBootstrap.accessLog`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let v1 = backend("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let (file, log, rotated) = (
        dir.path().join("mesh.yaml"),
        dir.path().join("access.log"),
        dir.path().join("access.log.1"),
    );
    let config = format!(
        "{}{}",
        bootstrap(1, &format!("  accessLog: {{path: {}}}\n", log.display())),
        service_entry("reviews", 9080, "HTTP", &[&v1]),
    );
    std::fs::write(&file, config).unwrap();
    let proc = Proc::run(&file);
    let out = proc.logged_addr("outbound listener up").await;
    let r = get_once(out, "reviews", &[("x-request-id", "before-rotation")]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    // the writer thread writes within its interval
    let l = log.clone();
    eventually("the first line is written", || {
        let l = l.clone();
        async move { std::fs::read_to_string(&l).is_ok_and(|t| t.contains("\"before-rotation\"")) }
    })
    .await;

    std::fs::rename(&log, &rotated).unwrap();
    proc.signal("-USR1");
    let lines = proc.lines.clone();
    eventually("the reopen is logged", || {
        let lines = lines.clone();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("SIGUSR1: reopening the access log"))
        }
    })
    .await;
    let r = get_once(out, "reviews", &[("x-request-id", "after-rotation")]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let l = log.clone();
    eventually("the new file gets the next line", || {
        let l = l.clone();
        async move { std::fs::read_to_string(&l).is_ok_and(|t| t.contains("\"after-rotation\"")) }
    })
    .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"before-rotation\""), "{old}");
    assert!(!old.contains("after-rotation"), "{old}");
}

/// Istio's access-log task with a filter (istio.io/latest/docs/tasks/observability/logs/
/// access-log, "Using Telemetry API" with `filter.expression`): the `envoy` provider's lines
/// go to the proxy's standard output, only for the requests the CEL expression lets
/// through, here the failures and the requests with a debug header (read from the request's
/// headers, which the filter asks the record layer to keep).
#[tokio::test]
async fn a_telemetrys_envoy_provider_logs_to_stdout_what_its_cel_filter_lets_through() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let config = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /fail}}}}]
    directResponse: {{status: 503}}
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging:
  - providers: [{{name: envoy}}]
    filter:
      expression: \"response.code >= 400 || request.headers['x-debug'] == 'yes'\"
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    );
    std::fs::write(&file, config).unwrap();
    let proc = Proc::run_capturing_stdout(&file);
    let out = proc.logged_addr("outbound listener up").await;
    let mut c = H1::connect(out).await;
    let get = |path: &str, debug: bool| {
        let mut b = http::Request::builder().uri(path).header("host", "reviews");
        if debug {
            b = b.header("x-debug", "yes");
        }
        b.body(full("")).unwrap()
    };
    assert_eq!(c.send(get("/quiet", false)).await.status.as_u16(), 200);
    assert_eq!(c.send(get("/debugged", true)).await.status.as_u16(), 200);
    assert_eq!(c.send(get("/fail", false)).await.status.as_u16(), 503);
    // the lines are queued in order: once the last request's is out, the others' are too
    wait_for_line(&proc.out, "GET /fail ").await;
    let lines = proc.out.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:#?}\n{}", proc.log());
    assert!(
        lines[0].contains("\"GET /debugged HTTP/1.1\" 200 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"GET /fail HTTP/1.1\" 503 "),
        "{}",
        lines[1]
    );
}
