//! The README's layout table and the architecture document name every crate of the
//! workspace, so that neither goes stale when a crate joins.

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is in the repository")
}

/// The workspace members' directories, from the root manifest's `members` list.
fn members() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let start = manifest.find("members = [").expect("a members list");
    let end = start + manifest[start..].find(']').expect("the list ends");
    manifest[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_layout_and_the_architecture_name_every_crate() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let layout = &readme[readme.find("## Layout").expect("a layout section")..];
    let arch = std::fs::read_to_string(repo().join("docs/architecture.md")).expect("architecture");
    let members = members();
    assert!(members.len() >= 10, "{members:?}");
    for m in &members {
        // `examples/x` is listed under `examples/`; crates by their directory name.
        let name = m.strip_prefix("examples/").unwrap_or(m);
        assert!(
            layout.contains(&format!("`{name}`")) || layout.contains(&format!("`{name}/`")),
            "README layout names {m}"
        );
        assert!(
            arch.contains(&format!("`{name}`")) || arch.contains(&format!("`{m}`")),
            "docs/architecture.md names {m}"
        );
    }
}
