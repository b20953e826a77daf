//! Runs the example as a user would (`cargo run -p example-in-process-client`) and checks
//! what it prints: the canary split is 90/10 within statistical bounds, and each signed-in
//! user stays on one v1 instance; v2's 503s are retried (the client sees none) and Istio's
//! `istio_requests_total` counts every request.

use std::process::Command;

fn run(requests: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_in-process-client"))
        .args(["--requests", &requests.to_string()])
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `label ` in `line` (`"v1 361 (90.2%…"` → 361).
fn number_after(line: &str, label: &str) -> usize {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {line:?}"))
        + label.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {label:?} in {line:?}"))
}

#[test]
fn the_canary_splits_90_10_and_users_stick_to_one_v1_instance() {
    let requests = 400;
    let out = run(requests);
    let canary = out
        .lines()
        .find(|l| l.starts_with("canary: "))
        .unwrap_or_else(|| panic!("a canary line in:\n{out}"));
    assert_eq!(number_after(canary, "canary: "), requests, "{canary}");
    let (v1, v2) = (number_after(canary, " v1 "), number_after(canary, " v2 "));
    assert_eq!(
        v1 + v2,
        requests,
        "every request reached an upstream: {canary}"
    );
    // 400 draws at p = 0.9: σ = 1.5 points; the bounds are 4σ.
    let share = v1 as f64 / requests as f64;
    assert!((0.84..=0.96).contains(&share), "v1 share {share}: {canary}");
    // Both v1 instances serve anonymous traffic (round robin within the subset would be
    // ~even; the hash policy spreads the empty key as the balancer does).
    let (a, b) = (number_after(canary, "v1-a "), number_after(canary, "v1-b "));
    assert_eq!(a + b, v1, "{canary}");

    let users: Vec<&str> = out.lines().filter(|l| l.starts_with("user ")).collect();
    assert_eq!(users.len(), 4, "{out}");
    for line in users {
        assert!(
            line.ends_with("all to v1-a") || line.ends_with("all to v1-b"),
            "a signed-in user goes to one v1 instance: {line}"
        );
    }

    // v2 answered 503 to every 4th request it got: some were retried, none reached the client
    let retries = out
        .lines()
        .find(|l| l.starts_with("retries: "))
        .unwrap_or_else(|| panic!("a retries line in:\n{out}"));
    assert!(number_after(retries, "503 to ") >= 1, "{retries}");
    assert!(retries.ends_with("the client saw none"), "{retries}");
    // the metrics count every request the client made (the retried ones once), as 200s
    let total: usize = out
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
        .map(|l| {
            assert!(l.contains("source_workload=\"productpage-v1\""), "{l}");
            assert!(l.contains("response_code=\"200\""), "{l}");
            number_after(l, "} ")
        })
        .sum();
    assert_eq!(total, requests + 4 * 20, "{out}");
}

#[test]
fn a_bad_config_is_refused_with_its_field() {
    let dir = std::env::temp_dir().join(format!("in-process-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.yaml");
    let bad = include_str!("../mesh.yaml").replace("weight: 10", "weight: -10");
    std::fs::write(&file, bad).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_in-process-client"))
        .args(["--requests", "1", "--config"])
        .arg(&file)
        .output()
        .expect("the example runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a negative weight is refused");
    assert!(
        stderr.contains("VirtualService") && stderr.contains("weight"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
