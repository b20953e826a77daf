//! `examples/README.md` indexes every example directory and names each crate's package.

#[test]
fn the_examples_index_lists_every_example_and_its_package() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let index = std::fs::read_to_string(examples.join("README.md")).expect("examples/README.md");
    let mut dirs = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let entry = entry.expect("entry");
        if !entry.file_type().expect("file type").is_dir() {
            continue;
        }
        dirs += 1;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            index.contains(&format!("[`{name}/`]({name}/)")),
            "examples/README.md lists {name}/"
        );
        if let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) {
            let package = manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{name}/Cargo.toml names its package"));
            assert!(
                index.contains(&format!("`{package}`")),
                "examples/README.md names {package}"
            );
        }
    }
    assert!(dirs >= 3, "found {dirs} example directories");
}
