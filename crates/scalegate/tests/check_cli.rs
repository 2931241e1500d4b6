//! `scalegate check`: every shipped example passes; bad files fail with FILE:LINE:COL.

mod common;

use std::process::Command;

use common::BIN;

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed check:\n{}{}",
            path.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("ok:") && stdout.contains("listener"),
            "{stdout}"
        );
        n += 1;
    }
    assert!(n >= 3, "expected the example configs in {}", dir.display());
}

#[test]
fn a_bad_config_fails_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n\n[[routes]]\nmatch = { path_prefix = \"/\" }\nupstream = \"nope\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:7:12: unknown upstream \"nope\"", path.display());
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn version_and_help_work() {
    let out = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("version");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("scalegate "));
    for sub in ["run", "check", "demo"] {
        let out = Command::new(BIN)
            .args([sub, "--help"])
            .output()
            .expect("help");
        assert!(out.status.success(), "{sub} --help");
    }
}
