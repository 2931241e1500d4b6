//! Real Python client libraries for tests (asyncpg, psycopg …): one virtualenv under
//! `target/pyenv`, made on first use with `python3 -m venv` and filled from the package index
//! with pip. Creation and installs hold an exclusive `flock` on `target/pyenv.lock`, so test
//! processes running at once neither race nor see a half-made environment.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared virtualenv's directory.
pub fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv")
}

/// The virtualenv's python with every one of `packages` importable (pip names; the import
/// name is the pip name with `-` as `_` unless given as `pip-name:module`). Panics with pip's
/// output when an install fails.
pub fn python_with(packages: &[&str]) -> PathBuf {
    let dir = venv_dir();
    let python = dir.join("bin/python");
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).expect("create target dir");
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.with_extension("lock"))
        .expect("open the venv lock");
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock on the venv lock");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .output()
            .expect("run python3 -m venv");
        assert!(
            made.status.success(),
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| {
            let (_, module) = names(p);
            !Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|p| names(p).0)
        .collect();
    if !missing.is_empty() {
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing)
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip install {missing:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    python
}

/// (pip name, module name) of a `pip-name[:module]` spec.
fn names(spec: &str) -> (&str, String) {
    match spec.split_once(':') {
        Some((pip, module)) => (pip, module.to_string()),
        None => (spec, spec.replace('-', "_")),
    }
}

/// Runs `script` with the virtualenv's python and `args`; returns stdout, or panics with
/// both streams when it exits non-zero.
pub fn run(python: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
