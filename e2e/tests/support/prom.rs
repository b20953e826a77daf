//! `promtool check metrics` (Debian's `prometheus` package; `PROMTOOL` overrides) on an
//! exposition, shared by the scrape tests.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// The `promtool` to run: `PROMTOOL`, else `promtool` on the `PATH`.
fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Fails the test, saying how to install it, unless `promtool` runs (`promtool --version`).
pub fn require_promtool() {
    let promtool = promtool();
    match Command::new(&promtool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        other => panic!(
            "cannot run {promtool} ({other:?}): install Debian's `prometheus` package \
             (`sudo apt-get install -y prometheus`, as .ci/run does) or set PROMTOOL"
        ),
    }
}

/// Scrapes the admin listener's `/stats/prometheus` until every `(sample, value)` holds
/// (`sample` is a metric's name with its labels, as printed; the proxy records a request
/// when its response body has ended, which the client may see first); polls, bounded by
/// [`LIMIT`](super::LIMIT). Returns the last exposition.
pub async fn scraped_samples(admin: std::net::SocketAddr, wants: &[(&str, f64)]) -> String {
    let deadline = std::time::Instant::now() + super::LIMIT;
    loop {
        let (status, text) = super::admin_get(admin, "/stats/prometheus").await;
        assert_eq!(status, 200);
        let value = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        };
        if wants.iter().all(|(name, want)| value(name) == Some(*want)) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all of {wants:?} in\n{text}"
        );
        // polling interval, not a synchronisation
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs `promtool check metrics` on `text`: the exposition must parse, and lint clean but
/// for Istio's own metric name in milliseconds (which Istio's sidecars expose as well).
pub fn promtool_check(text: &str) {
    let promtool = promtool();
    let mut child = match Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {promtool} ({e}): install Debian's `prometheus` package \
             (`sudo apt-get install -y prometheus`, as .ci/run does) or set PROMTOOL"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            *l != r#"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#
        })
        .collect();
    assert!(
        problems.is_empty(),
        "promtool check metrics: {problems:?}\n--- exposition ---\n{text}"
    );
    // a parse error is reported on its own, with a failing status: never the lint line only
    assert!(
        out.status.success() || report.contains("use base unit"),
        "promtool failed: {report}"
    );
}
