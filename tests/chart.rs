//! The Helm chart: `helm lint --strict`, `helm template` of every `ci/*-values.yaml`, strict
//! validation of the rendered manifests for Kubernetes 1.29 and the newest version
//! kubernetes-validate bundles, template assertions (tests/chart/check_rendered.py), bad values
//! refused by the schema, and the chart's copies of the allowlists and alert rules kept equal to
//! the originals. helm is the static v4 binary from PyPI (scripts/install-test-deps).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart() -> PathBuf {
    Path::new(ROOT).join("charts/egress-warden")
}

fn helm() -> Command {
    let local = Path::new(ROOT).join(".tools/bin/helm");
    Command::new(if local.exists() {
        local.into_os_string()
    } else {
        "helm".into()
    })
}

fn ok(out: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

fn render(values: &Path, dir: &Path) -> PathBuf {
    let out = helm()
        .args(["template", "t"])
        .arg(chart())
        .arg("-f")
        .arg(values)
        .output()
        .unwrap();
    let text = ok(out, &format!("helm template -f {}", values.display()));
    let path = dir.join(values.file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_chart_lints_renders_and_validates_for_1_29_and_the_newest_kubernetes() {
    ok(
        helm()
            .args(["lint", "--strict"])
            .arg(chart())
            .output()
            .unwrap(),
        "helm lint --strict",
    );
    for values in ci_values() {
        ok(
            helm()
                .args(["lint", "--strict"])
                .arg(chart())
                .arg("-f")
                .arg(&values)
                .output()
                .unwrap(),
            "helm lint -f",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let rendered: Vec<PathBuf> = ci_values().iter().map(|v| render(v, dir.path())).collect();
    for file in &rendered {
        for version in [Some("1.29.0"), None] {
            let mut cmd = Command::new("kubernetes-validate");
            cmd.args(["--strict", "--quiet"]);
            if let Some(v) = version {
                cmd.args(["-k", v]);
            }
            ok(
                cmd.arg(file).output().unwrap(),
                &format!("kubernetes-validate {version:?} {}", file.display()),
            );
        }
    }
    let report = ok(
        Command::new("python3")
            .arg(Path::new(ROOT).join("tests/chart/check_rendered.py"))
            .args(&rendered)
            .output()
            .unwrap(),
        "template assertions",
    );
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        rendered.len(),
        "{report}"
    );
    assert!(
        report.contains("Job"),
        "no variant renders the example Job: {report}"
    );
}

#[test]
fn the_template_assertions_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let good = render(&chart().join("ci/example-job-values.yaml"), dir.path());
    let text = std::fs::read_to_string(&good).unwrap();
    let mutations = [
        // The sidecar marks its sockets differently from what the rules exempt.
        (
            "--mark=0x6577\n            - --allowlist",
            "--mark=0x1\n            - --allowlist",
        ),
        // The sandbox gains a capability.
        (
            "runAsNonRoot: true\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [ALL]",
            "runAsNonRoot: true\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              add: [NET_RAW]\n              drop: [ALL]",
        ),
        // The warden stops being a native sidecar.
        ("restartPolicy: Always\n", ""),
    ];
    for (from, to) in mutations {
        assert!(
            text.contains(from),
            "mutation anchor {from:?} not in the rendering"
        );
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let out = Command::new("python3")
            .arg(Path::new(ROOT).join("tests/chart/check_rendered.py"))
            .arg(&bad)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "mutation {to:?} passed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_parents_global_values_are_accepted() {
    // A parent chart's `global:` reaches every subchart; the strict schema must not refuse it.
    ok(
        helm()
            .args(["template", "t"])
            .arg(chart())
            .args(["--set", "global.imageRegistry=registry.example"])
            .output()
            .unwrap(),
        "helm template --set global.…",
    );
}

#[test]
fn bad_values_are_refused_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "onViolation=explode"], "onViolation"),
        (&["--set", "surprise=1"], "surprise"),
        (&["--set", "allowlists.bundled={nope}"], "bundled"),
        (&["--set", "capture.mark=zero"], "mark"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "exampleJob.runAsUser=0"], "runAsUser"),
        (&["--set", "ports.admin=15001"], "must all differ"),
        (
            &["--set", "termination.killSandbox=false"],
            "onViolation: terminate needs termination.killSandbox: true",
        ),
        (
            &["--set", "allowlists.bundled=null"],
            "an empty policy denies everything",
        ),
    ];
    for (args, want) in cases {
        let out = helm()
            .args(["template", "t"])
            .arg(chart())
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} rendered");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn the_charts_copies_match_the_originals_and_its_lists_load() {
    let originals = Path::new(ROOT).join("allowlists");
    let copies = chart().join("files/allowlists");
    let mut names: Vec<_> = std::fs::read_dir(&originals)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 7);
    let mut copy_names: Vec<_> = std::fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    copy_names.sort();
    assert_eq!(
        names, copy_names,
        "charts/egress-warden/files/allowlists must mirror allowlists/"
    );
    for name in &names {
        assert_eq!(
            std::fs::read(originals.join(name)).unwrap(),
            std::fs::read(copies.join(name)).unwrap(),
            "{name:?} differs"
        );
    }
    assert_eq!(
        std::fs::read(Path::new(ROOT).join("deploy/prometheus/alerts.yaml")).unwrap(),
        std::fs::read(chart().join("files/prometheus-alerts.yaml")).unwrap(),
        "files/prometheus-alerts.yaml must equal deploy/prometheus/alerts.yaml"
    );
    // The allowlists ConfigMap the chart renders loads in the warden itself.
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&chart().join("ci/example-job-values.yaml"), dir.path());
    let script = "import sys, yaml, pathlib\n\
        out = pathlib.Path(sys.argv[2])\n\
        for d in yaml.safe_load_all(open(sys.argv[1])):\n\
        \x20   if d and d['kind'] == 'ConfigMap':\n\
        \x20       for k, v in d['data'].items(): (out / k).write_text(v)\n";
    let lists = dir.path().join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&rendered)
            .arg(&lists)
            .output()
            .unwrap(),
        "extract ConfigMap",
    );
    let check = ok(
        Command::new(support::BIN)
            .arg("check")
            .arg(&lists)
            .output()
            .unwrap(),
        "egress-warden check",
    );
    assert!(
        check.contains("internal.example.com:8443") && check.contains("files.pythonhosted.org"),
        "{check}"
    );
    // Chart and crate versions move together.
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "{chart_yaml}"
    );
}

#[test]
fn every_value_is_documented_and_the_readme_table_is_current() {
    ok(
        Command::new("python3")
            .arg(chart().join("values_table.py"))
            .arg("--check")
            .output()
            .unwrap(),
        "python3 charts/egress-warden/values_table.py --check",
    );
}
