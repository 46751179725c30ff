//! The README documents what the code does: every metric the exporter serves and every
//! `OOM_GUARD_*` variable the guard and the CLI read.

use std::collections::BTreeSet;

use oomguard_cli::exporter::METRIC_NAMES;
use oomguard_tests::workspace_root;

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `OOM_GUARD_*` names quoted in a source file.
fn variables_in(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .filter(|piece| {
            piece.starts_with("OOM_GUARD_")
                && piece.len() > "OOM_GUARD_".len()
                && piece.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_is_in_the_readme() {
    let readme = read("README.md");
    let missing: Vec<&&str> = METRIC_NAMES
        .iter()
        .filter(|name| !readme.contains(&format!("`{name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from README.md: {missing:?}"
    );
}

#[test]
fn every_variable_is_in_the_readme() {
    let readme = read("README.md");
    let mut variables = variables_in(&read("oomguard/src/settings.rs"));
    assert!(
        variables.len() >= 8,
        "the guard reads its settings: {variables:?}"
    );
    for file in ["oomguard-cli/src/main.rs", "oomguard-cli/src/run.rs"] {
        variables.extend(variables_in(&read(file)));
    }
    let missing: Vec<&String> = variables
        .iter()
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "variables missing from README.md: {missing:?}"
    );
}
