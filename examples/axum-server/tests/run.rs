//! Runs the example as a user would and checks what each client got: `productpage` with a
//! token is served (and the app sees both identities), without a token or as `ratings` it
//! is denied by the AuthorizationPolicy, plaintext is refused by STRICT mTLS, and the
//! metrics on the app's own router count each answer (`reporter="destination"`).

#[test]
fn mtls_jwt_and_the_policy_protect_the_app_and_the_metrics_count_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_axum-server"))
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix:?} in:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(
        line("productpage with a token: "),
        "productpage with a token: 200 review 7 for cluster.local/ns/default/sa/productpage \
         as example@mesh.invalid/alice"
    );
    assert!(line("productpage without a token: ").ends_with("403 RBAC: access denied"));
    assert!(line("ratings with a token: ").ends_with("403 RBAC: access denied"));
    assert!(line("plaintext: ").starts_with("plaintext: refused"));
    let metrics: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{reporter=\"destination\""))
        .collect();
    let ok = metrics
        .iter()
        .find(|l| l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        ok.contains("connection_security_policy=\"mutual_tls\""),
        "{ok}"
    );
    assert!(ok.ends_with("} 1"), "{ok}");
    let denied: u32 = metrics
        .iter()
        .filter(|l| l.contains("response_code=\"403\"") && l.contains("response_flags=\"RBAC\""))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(denied, 2, "{stdout}");
}
