//! The Docker attachment with the real engine: the shipped `examples/docker/compose.yaml`,
//! run with local images (built FROM scratch, nothing pulled) on an internal network with a
//! test upstream. Runs as root (CI always does).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The warden image (scripts/build-image) and a busybox sandbox image, built once.
fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let warden = "egress-warden:ci".to_owned();
        run(Command::new(Path::new(ROOT).join("scripts/build-image")).arg(&warden));
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ctx.path().join("bin")).unwrap();
        std::fs::create_dir_all(ctx.path().join("www")).unwrap();
        std::fs::copy("/bin/busybox", ctx.path().join("bin/busybox")).unwrap();
        for applet in [
            "sh", "wget", "nslookup", "nc", "httpd", "sleep", "cat", "echo", "head", "grep", "ps",
        ] {
            std::os::unix::fs::symlink("busybox", ctx.path().join("bin").join(applet)).unwrap();
        }
        std::fs::write(ctx.path().join("www/ok.txt"), "ok from upstream\n").unwrap();
        // What the README's default command fetches from deb.debian.org (an alias of upstream).
        std::fs::create_dir_all(ctx.path().join("www/debian")).unwrap();
        std::fs::write(
            ctx.path().join("www/debian/index.html"),
            "Debian archive, as served by the test upstream\n",
        )
        .unwrap();
        std::fs::copy(
            Path::new(ROOT).join("tests/docker/sandbox.Dockerfile"),
            ctx.path().join("Dockerfile"),
        )
        .unwrap();
        let sandbox = "egress-warden-sandbox:ci".to_owned();
        run(Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--quiet", "-t", &sandbox])
            .arg(ctx.path()));
        (warden, sandbox)
    })
}

/// One compose project (its own network), taken down on drop.
struct Project {
    name: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    out: PathBuf,
}

impl Project {
    fn new(tag: &str, sandbox_command: &str, extra: &[(&str, &str)]) -> Self {
        let (warden, sandbox) = images();
        let dir = tempfile::tempdir().unwrap();
        let allow = dir.path().join("allow");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&allow).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let pid = std::process::id();
        let subnet_base = format!(
            "10.{}.{}",
            200 + (pid % 50),
            (pid / 50 + tag.len() as u32 * 7) % 250
        );
        let subnet = format!("{subnet_base}.0/24");
        std::fs::write(
            allow.join("test.txt"),
            format!("upstream\ndeb.debian.org\n{subnet}\n"),
        )
        .unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("EGRESS_WARDEN_IMAGE".into(), warden.clone()),
            ("SANDBOX_IMAGE".into(), sandbox.clone()),
            ("SANDBOX_COMMAND".into(), sandbox_command.into()),
            ("ALLOWLIST_DIR".into(), allow.display().to_string()),
            ("OUT_DIR".into(), out.display().to_string()),
            ("RUN_ID".into(), format!("docker-{tag}")),
            ("SUBNET".into(), subnet),
            ("UPSTREAM_IP".into(), format!("{subnet_base}.200")),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self {
            name: format!("ew{tag}{pid}"),
            env,
            _dir: dir,
            out,
        }
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(Path::new(ROOT).join("examples/docker/compose.yaml"))
            .arg("-f")
            .arg(Path::new(ROOT).join("tests/docker/compose.test.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn state(&self, service: &str) -> (String, i64) {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.container(service),
        ]));
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (status, code) = text.split_once(' ').unwrap();
        (status.to_owned(), code.parse().unwrap())
    }

    fn logs(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.container(service)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The `docker-compose up` lines of examples/docker/README.md's first `sh` block, each with the
/// exit code its comment claims (`exit N`).
fn readme_commands() -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("examples/docker/README.md")).unwrap();
    let block = text
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .filter(|l| l.contains("docker-compose up"))
        .map(|l| {
            let (command, comment) = l.split_once('#').unwrap_or((l, ""));
            let code = comment
                .split("exit ")
                .nth(1)
                .and_then(|c| c.trim().split(|ch: char| !ch.is_ascii_digit()).next())
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no 'exit N' in the comment of {l:?}"));
            (command.trim().to_owned(), code)
        })
        .collect()
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]);
    }
}

#[test]
fn the_compose_example_polices_a_sandbox_container() {
    let p = Project::new(
        "ok",
        "wget -qO- http://upstream/ok.txt; echo wget=$?; kill -TERM 1; echo kill=$?; nslookup evil.test 2>&1 | grep REFUSED; wget -qO- http://upstream:8080/ 2>&1 | head -n1",
        &[("ON_VIOLATION", "deny")],
    );
    let up = p.compose(&["up", "--exit-code-from", "sandbox"]);
    let text = String::from_utf8_lossy(&up.stdout);
    assert_eq!(
        up.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let sandbox = p.logs("sandbox");
    assert!(
        sandbox.contains("ok from upstream") && sandbox.contains("wget=0"),
        "{sandbox}"
    );
    assert!(sandbox.contains("REFUSED"), "{sandbox}");
    // The sandbox (uid 65534, no capabilities) cannot signal the warden it shares a PID
    // namespace with.
    assert!(sandbox.contains("kill=1"), "{sandbox}");
    assert!(sandbox.contains("403 Forbidden"), "{sandbox}");
    let audit = p.logs("warden");
    assert!(
        audit.contains("\"listener\":\"transparent\"") && audit.contains("\"host\":\"upstream\""),
        "{audit}"
    );
    assert!(audit.contains("\"reason\":\"port_not_allowed\""), "{audit}");
    assert!(
        audit.contains("\"listener\":\"dns\"") && audit.contains("\"host\":\"evil.test\""),
        "{audit}"
    );
}

#[test]
fn a_violation_kills_the_sandbox_container_and_the_warden_exits_77() {
    let p = Project::new(
        "kill",
        "sleep 300 & wget -qO- http://upstream:8080/; sleep 300",
        &[("ON_VIOLATION", "terminate"), ("TERMINATION_DRAIN", "20s")],
    );
    let up = p.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The warden kills the sandbox processes itself, while it is still draining (not because
    // the PID namespace's init exited).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sandbox, _) = p.state("sandbox");
        if sandbox == "exited" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox container is still {sandbox}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.state("sandbox").1, 137, "killed by SIGKILL");
    assert_eq!(
        p.state("warden").0,
        "running",
        "the warden was still draining"
    );
    let wait = run(Command::new("docker").args(["wait", &p.container("warden")]));
    assert_eq!(String::from_utf8_lossy(&wait.stdout).trim(), "77");
    let audit = p.logs("warden");
    assert!(
        audit.contains("\"outcome\":\"terminated\"")
            && audit.contains("\"termination_reason\":\"port_not_allowed\""),
        "{audit}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["outcome"], "terminated");
    assert_eq!(summary["run_id"], "docker-kill");
}

#[test]
fn the_image_holds_only_the_binary_runs_as_non_root_and_is_small() {
    let (warden, _) = images();
    let out = run(Command::new("docker").args(["run", "--rm", warden, "--version"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("egress-warden {}", env!("CARGO_PKG_VERSION"))
    );
    let inspect = run(Command::new("docker").args([
        "image",
        "inspect",
        "-f",
        "{{.Size}}|{{.Config.User}}|{{json .Config.Entrypoint}}|{{index .Config.Labels \"org.opencontainers.image.version\"}}",
        warden,
    ]));
    let text = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let parts: Vec<&str> = text.split('|').collect();
    let size: u64 = parts[0].parse().unwrap();
    assert!(size < 15 << 20, "image is {size} bytes");
    assert_eq!(parts[1], "65532:65532", "non-root by default");
    assert_eq!(parts[2], "[\"/egress-warden\"]");
    assert_eq!(parts[3], env!("CARGO_PKG_VERSION"));
    // FROM scratch: there is no shell to run.
    let shell = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            warden,
            "-c",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!shell.status.success(), "the image has a shell");
    eprintln!("image {warden}: {size} bytes");
}

#[test]
fn the_readmes_compose_commands_exit_as_it_says() {
    let commands = readme_commands();
    assert_eq!(commands.len(), 3, "allow, deny and kill: {commands:?}");
    let p = Project::new("readme", "", &[]);
    let compose_file = format!(
        "compose.yaml:{}",
        Path::new(ROOT)
            .join("tests/docker/compose.test.yaml")
            .display()
    );
    for (i, (command, want)) in commands.iter().enumerate() {
        // As a user types it, in examples/docker; only the images and the allowlist directory
        // come from the environment (COMPOSE_FILE adds the test network and upstream).
        let out = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(Path::new(ROOT).join("examples/docker"))
            .envs(
                p.env
                    .iter()
                    .filter(|(k, _)| k != "SANDBOX_COMMAND" && k != "ON_VIOLATION")
                    .map(|(k, v)| (k, v)),
            )
            .env("COMPOSE_PROJECT_NAME", &p.name)
            .env("COMPOSE_FILE", &compose_file)
            .output()
            .unwrap();
        let logs = format!("{}\n{}", p.logs("sandbox"), p.logs("warden"));
        assert_eq!(out.status.code(), Some(*want), "{command}: {logs}");
        match i {
            0 => assert!(logs.contains("HTTP/1.1 200"), "{logs}"),
            1 => assert!(
                logs.contains("403") && logs.contains("\"reason\":\"ip_not_allowed\""),
                "{logs}"
            ),
            _ => {
                assert!(logs.contains("\"outcome\":\"terminated\""), "{logs}");
                assert_eq!(p.state("sandbox").1, 137, "the sandbox was killed");
            }
        }
    }
}
