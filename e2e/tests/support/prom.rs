//! `promtool check metrics` (Debian's `prometheus` package; `PROMTOOL` overrides) on an
//! exposition, shared by the scrape tests.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `text`: the exposition must parse, and lint clean but
/// for Istio's own metric name in milliseconds (which Istio's sidecars expose as well).
pub fn promtool_check(text: &str) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
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
