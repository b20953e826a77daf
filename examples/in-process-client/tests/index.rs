//! `examples/README.md` indexes the examples: every crate under `examples/` is listed with
//! its package and is a workspace member (built and tested in CI), every directory under
//! `examples/` is listed, and every example the index lists exists (tonic-grpc included).

use std::path::Path;

/// The directories the index links to, in its order (`[`name/`](name/)`).
fn listed(index: &str) -> Vec<String> {
    index
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let start = l.find("[`")? + 2;
            let end = start + l[start..].find("/`]")?;
            Some(l[start..end].to_owned())
        })
        .collect()
}

/// The package a crate's manifest names.
fn package(manifest: &str) -> Option<&str> {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
}

#[test]
fn the_examples_index_lists_every_example_and_its_package() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let index = std::fs::read_to_string(examples.join("README.md")).expect("examples/README.md");
    let workspace =
        std::fs::read_to_string(examples.join("../Cargo.toml")).expect("the workspace manifest");
    let listed = listed(&index);
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let entry = entry.expect("entry");
        if !entry.file_type().expect("file type").is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(listed.contains(&name), "examples/README.md lists {name}/");
        if let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) {
            let package =
                package(&manifest).unwrap_or_else(|| panic!("{name}/Cargo.toml names its package"));
            assert!(
                index.contains(&format!("`{package}`")),
                "examples/README.md names {package}"
            );
            assert!(
                workspace.contains(&format!("\"examples/{name}\"")),
                "examples/{name} is a workspace member"
            );
            crates.push(name);
        }
    }
    for name in &listed {
        assert!(
            examples.join(name).is_dir(),
            "examples/README.md lists {name}/, which does not exist"
        );
    }
    for name in [
        "in-process-client",
        "axum-server",
        "tonic-grpc",
        "custom-proxy",
        "sidecar",
    ] {
        assert!(
            crates.iter().any(|c| c == name),
            "the example {name} is a crate"
        );
    }
}

#[test]
fn the_link_parser_reads_the_index_s_rows() {
    let rows =
        "| 1 | [`a/`](a/) | `example-a` | x |\n| | [`b/`](b/) | (YAML) | y |\ntext [`c`](c)\n";
    assert_eq!(listed(rows), ["a", "b"]);
    assert_eq!(
        package("[package]\nname = \"example-a\"\n"),
        Some("example-a")
    );
}
