//! The `mesh-proxy` binary's contract: `validate` exit codes and messages (run on the whole
//! acceptance corpus), usage errors, and `ca`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
}

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-core/tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn validate_istio_accepts_every_valid_corpus_file() {
    // `--istio`: Istio's rules only, as `istioctl validate` (the run-mode outcome of each
    // file is checked in tests/corpus.rs)
    let files = corpus("valid");
    assert!(files.len() >= 40, "corpus has {} valid files", files.len());
    for f in files {
        let out = bin()
            .args(["validate", "--istio"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f.display(),
            text(&out)
        );
        assert!(text(&out).contains("validation succeeded"));
    }
}

#[test]
fn validate_rejects_every_invalid_corpus_file_with_its_message() {
    // (files whose error only the build finds say `# stage: build`; they are Istio-valid)
    let files = corpus("invalid");
    assert!(
        files.len() >= 40,
        "corpus has {} invalid files",
        files.len()
    );
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-error:"))
            .map(str::trim)
            .collect();
        assert!(
            !expected.is_empty(),
            "{} declares no expected error",
            f.display()
        );
        let out = bin().arg("validate").arg(&f).output().unwrap();
        let t = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: exit {:?}\n{t}",
            f.display(),
            out.status.code()
        );
        for e in expected {
            assert!(t.contains(e), "{}: expected {e:?} in\n{t}", f.display());
        }
        // every error names the file and a line
        let name = f.display().to_string();
        assert!(
            t.lines()
                .any(|l| l.starts_with("error: ") && l.contains(&format!("{name}:"))),
            "{t}"
        );
    }
}

#[test]
fn validate_points_at_file_line_resource_and_field() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config/bad-weight.yaml");
    let out = bin().arg("validate").arg(&f).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("bad-weight.yaml:15:"), "{t}");
    assert!(
        t.contains("VirtualService/default/reviews: spec.http[0].route[0].weight: weight -10 < 0"),
        "{t}"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        bin().arg("validate").output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(
        bin().arg("frobnicate").output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(bin().arg("run").output().unwrap().status.code(), Some(2));
}

#[test]
fn validate_reads_directories_and_stdin() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let vs = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n";
    std::fs::write(dir.path().join("a.yaml"), vs).unwrap();
    std::fs::write(dir.path().join("b.yml"), vs.replace("name: a}", "name: b}")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not: [yaml").unwrap();
    let out = bin().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("validation succeeded: 2 resource(s) in 2 file(s)"),
        "{}",
        text(&out)
    );
    let mut child = bin()
        .args(["validate", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}, weight: -1}]\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("error: <stdin>:7:"), "{}", text(&out));
}

#[test]
fn validate_warns_on_an_empty_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.yaml");
    std::fs::write(&f, "# nothing yet\n").unwrap();
    let out = bin().arg("validate").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "warning: {}: empty configuration: no resources",
            f.display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
fn validate_refuses_what_this_version_cannot_enforce_and_istio_mode_accepts_it() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-core/tests/corpus/valid/ra-openid-discovery-mesh-wide.yaml");
    let out = bin().arg("validate").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // a JWT rule whose keys need OpenID discovery (not enforced yet), with file and line
    assert!(
        text(&out).contains(
            "ra-openid-discovery-mesh-wide.yaml:10:5: RequestAuthentication/istio-system/discovery: spec.jwtRules[0]: neither jwks nor jwksUri"
        ),
        "{}",
        text(&out)
    );
    let out = bin()
        .args(["validate", "--istio"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("not enforced"), "{}", text(&out));
}

#[test]
fn missing_file_is_invalid_not_a_crash() {
    let out = bin()
        .args(["validate", "/nonexistent/mesh.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot read file"));
}

#[test]
fn run_refuses_to_start_on_an_invalid_config() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config/bad-weight.yaml");
    let out = bin().arg("run").arg("--config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("spec.http[0].route[0].weight"),
        "{}",
        text(&out)
    );
}

/// `run --help` says `--config` repeats (the usage line and the option's help), with the
/// option's names and value name unchanged.
#[test]
fn run_help_shows_that_config_repeats() {
    let out = bin().args(["run", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Usage: mesh-proxy run --config FILE [--config FILE …]"),
        "{help}"
    );
    let option = help
        .lines()
        .find(|l| l.trim_start().starts_with("-c, --config <FILE>"))
        .unwrap_or_else(|| panic!("no `-c, --config <FILE>` line in\n{help}"));
    assert!(
        option.contains("(repeatable: documents from all files are merged)"),
        "{option}"
    );
    // the usage error names it the same way
    let out = bin().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("[--config FILE …]"), "{}", text(&out));
}

/// `--config` (and `-c`) repeat: the documents of every file are loaded together, so the
/// errors of both files are reported, each naming its file.
#[test]
fn run_loads_every_repeated_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |name: &str| {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n      weight: -1\n"
            ),
        )
        .unwrap();
        f
    };
    let (first, second) = (bad("first"), bad("second"));
    for flag in ["--config", "-c"] {
        let out = bin()
            .arg("run")
            .arg(flag)
            .arg(&first)
            .arg(flag)
            .arg(&second)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        for f in [&first, &second] {
            assert!(t.contains(&format!("{}:9:", f.display())), "{t}");
        }
    }
}

#[test]
fn ca_init_then_issue_writes_a_chain_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = bin().args(["ca", "init", "--out", d]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = bin()
        .args([
            "ca",
            "issue",
            "--ca",
            d,
            "--namespace",
            "shop",
            "--service-account",
            "cart",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("spiffe://cluster.local/ns/shop/sa/cart"));
    let chain = std::fs::read_to_string(dir.path().join("cart.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        std::fs::read_to_string(dir.path().join("cart.key"))
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // a missing CA is an error, not a panic
    let out = bin()
        .args([
            "ca",
            "issue",
            "--ca",
            "/nonexistent",
            "--service-account",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

fn ca(args: &[&str]) -> Output {
    bin().arg("ca").args(args).output().unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn ca_private_keys_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(ca(&["init", "--out", d]).status.success());
    assert!(
        ca(&["issue", "--ca", d, "--service-account", "cart"])
            .status
            .success()
    );
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("cart.key")), 0o600);
    assert_eq!(mode(&dir.path().join("ca.pem")), 0o644);
    // no temporary file left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn ca_init_refuses_to_replace_a_ca_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(ca(&["init", "--out", d]).status.success());
    let before = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let out = ca(&["init", "--out", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert!(text(&out).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        before,
        "the CA is untouched"
    );
    assert!(ca(&["init", "--out", d, "--force"]).status.success());
    assert_ne!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        before
    );
}

#[test]
fn ca_issue_takes_the_trust_domain_of_the_ca_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(
        ca(&["init", "--out", d, "--trust-domain", "corp.example"])
            .status
            .success()
    );
    let out = ca(&["issue", "--ca", d, "--service-account", "cart"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("spiffe://corp.example/ns/default/sa/cart"),
        "{}",
        text(&out)
    );
    let out = ca(&[
        "issue",
        "--ca",
        d,
        "--service-account",
        "cart",
        "--trust-domain",
        "cluster.local",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("issues for trust domain corp.example, not cluster.local"),
        "{}",
        text(&out)
    );
}

#[test]
fn ca_intermediate_issues_chains_that_verify_against_the_root_and_rotate_keeps_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let east = dir.path().join("east");
    let (r, e) = (root.to_str().unwrap(), east.to_str().unwrap());
    assert!(ca(&["init", "--out", r]).status.success());
    let out = ca(&["intermediate", "--ca", r, "--name", "east", "--out", e]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ca(&["issue", "--ca", e, "--service-account", "reviews"]);
    assert!(out.status.success(), "{}", text(&out));
    let chain = std::fs::read_to_string(east.join("reviews.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 3);
    let bundle = std::fs::read_to_string(east.join("root.pem")).unwrap();
    assert_eq!(
        bundle,
        std::fs::read_to_string(root.join("ca.pem")).unwrap(),
        "the bundle is the root"
    );
    let key = std::fs::read_to_string(east.join("reviews.key")).unwrap();
    let m = mesh_tls::config::TlsMaterial::from_pem(&chain, &key, &bundle).unwrap();
    assert_eq!(
        m.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
    // rotate: same identity, new certificate and key, still a valid pair
    let cert_path = east.join("reviews.pem");
    let out = ca(&["rotate", "--ca", e, "--cert", cert_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let chain2 = std::fs::read_to_string(&cert_path).unwrap();
    let key2 = std::fs::read_to_string(east.join("reviews.key")).unwrap();
    assert_ne!(chain2, chain);
    assert_ne!(key2, key);
    let m2 = mesh_tls::config::TlsMaterial::from_pem(&chain2, &key2, &bundle).unwrap();
    assert_eq!(m2.identity(), m.identity());
    // an intermediate over an existing one is refused without --force
    let out = ca(&["intermediate", "--ca", r, "--name", "east", "--out", e]);
    assert_eq!(out.status.code(), Some(1));
}
