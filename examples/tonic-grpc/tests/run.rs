//! Runs the example as a user would and checks: each user's calls stay on one instance
//! (consistent hashing by the `x-user` metadata key), every call that failed once with
//! UNAVAILABLE was retried by the mesh and none failed, a deadline shorter than the method
//! ends the call with UNAVAILABLE (Envoy's gRPC local reply for a timeout), and Istio's
//! metrics carry `grpc_response_status` on both sides.

#[test]
fn hashing_retries_deadlines_and_grpc_metrics() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tonic-grpc"))
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: Vec<&str> = stdout.lines().filter(|l| l.starts_with("user ")).collect();
    assert_eq!(users.len(), 4, "{stdout}");
    for u in users {
        assert!(
            u.contains("10 calls, all to "),
            "one instance per user: {u}"
        );
    }
    assert!(
        stdout.contains("retries: 20 flaky calls, 20 UNAVAILABLE answers retried, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deadline: Unavailable upstream request timeout"),
        "{stdout}"
    );
    let metric = |reporter: &str, grpc: &str| {
        stdout
            .lines()
            .filter(|l| {
                l.starts_with(&format!("istio_requests_total{{reporter=\"{reporter}\""))
                    && l.contains(&format!("grpc_response_status=\"{grpc}\""))
            })
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    // the client's view: 60 answered calls (OK), one timed out (UNAVAILABLE, flag UT)
    assert_eq!(metric("source", "0"), 60, "{stdout}");
    assert_eq!(metric("source", "14"), 1, "{stdout}");
    // the servers': 60 OK, 20 first attempts UNAVAILABLE
    assert_eq!(metric("destination", "0"), 60, "{stdout}");
    assert!(metric("destination", "14") >= 20, "{stdout}");
}
