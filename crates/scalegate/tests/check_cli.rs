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

#[test]
fn the_kubernetes_configmap_holds_a_valid_config_and_plan_reads_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let yaml = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).expect("configmap");
    // The block scalar under `scalegate.toml: |`, indented by four spaces.
    let toml: String = yaml
        .lines()
        .skip_while(|l| l.trim() != "scalegate.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(toml.contains("[[listeners]]"), "{toml}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scalegate.toml");
    std::fs::write(&path, toml).expect("write");
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // hpa.yaml holds what the plan prints for this config at the peak its comment names.
    let plan = Command::new(BIN)
        .args(["plan", "--peak-rps", "100000", "--zones", "3", "--config"])
        .arg(&path)
        .output()
        .expect("run plan");
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{text}");
    let hpa = std::fs::read_to_string(root.join("deploy/k8s/hpa.yaml")).expect("hpa");
    assert!(hpa.contains("--peak-rps 100000 --zones 3"), "{hpa}");
    let value = |after: &str| -> String {
        let rest = &hpa[hpa
            .find(after)
            .unwrap_or_else(|| panic!("{after} in hpa.yaml"))
            + after.len()..];
        rest.trim_start_matches([' ', '"'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect()
    };
    let (min, max) = (value("minReplicas:"), value("maxReplicas:"));
    let (cpu, rate) = (value("averageUtilization:"), value("averageValue:"));
    // A probe's finding (session 24): the in-flight target (500) was in no plan's output, and
    // at the planned count the HPA would have wanted about 20 pods.
    let in_flight =
        value("scalegate_http_in_flight }\n        target: { type: AverageValue, averageValue:");
    for want in [
        format!("minReplicas {min}, maxReplicas {max}"),
        format!("averageValue): {rate} req/s"),
        format!("in-flight target (scalegate_http_in_flight averageValue): {in_flight} ="),
        format!("CPU target (averageUtilization): {cpu}%"),
    ] {
        assert!(text.contains(&want), "the plan says {want:?}? {text}");
    }
    // A probe's finding (session 24): the config's upstream is found through DNS, and the plan
    // divided as if it had one endpoint ("0 endpoint(s) … TOO LOW").
    assert!(!text.contains("TOO LOW"), "{text}");
    assert!(text.contains("endpoints from DNS"), "{text}");
}

/// A probe's finding (session 20): `plan` took a peak beyond its arithmetic ("run 0
/// instance(s)", "maxReplicas 0", "~inf per instance") and an instance capacity of 0, and
/// exited 0. Both are refused with what is expected.
#[test]
fn plan_refuses_rates_it_cannot_plan_for() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/basic.toml");
    for args in [
        ["--peak-rps", "103079215104000"],
        ["--peak-rps", "0"],
        ["--instance-rps", "0"],
    ] {
        let mut all = vec!["plan", "--config", config];
        if args[0] != "--peak-rps" {
            all.extend(["--peak-rps", "1000"]);
        }
        all.extend(args);
        let out = Command::new(BIN).args(&all).output().expect("run plan");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains("expected requests per second"), "{stderr}");
    }
}

/// Two outside probes typed `scalegate check FILE` (the file by itself, as `nginx -t -c` users
/// and `haproxy -c -f` users might guess from `--help`) and got a usage error.
#[test]
fn the_config_file_can_be_named_without_the_flag() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/basic.toml");
    let out = Command::new(BIN)
        .arg("check")
        .arg(&example)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok:"), "{stdout}");
    // Neither, or both: a usage error that names the flag.
    for args in [vec!["check"], vec!["check", "a.toml", "--config", "b.toml"]] {
        let out = Command::new(BIN).args(&args).output().expect("run check");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--config"), "{args:?}: {stderr}");
    }
}
