//! Transparent capture, for real: network namespaces the tests make, the ruleset installed by
//! the binary over netlink, and sandbox processes (as root, as the warden's own uid, and as
//! nobody) that try every way around the warden. Runs as root (CI always does).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::Warden;
use support::dns::FakeDns;
use support::netns::{METADATA_V4, Netns, PRIVATE_V4, PUBLIC_V4, PUBLIC_V6, RESOLVER, World};
use support::upstream::{HttpUpstream, TlsUpstream};

/// Output of a command run in a namespace.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn sh(ns: &Netns, user: Option<u32>, script: &str) -> Out {
    let mut c = match user {
        Some(uid) => {
            let mut c = ns.command("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "sh".into(),
            ]);
            c
        }
        None => ns.command("sh"),
    };
    // A clean environment: no proxy variables, no CA bundle or pip settings of the host.
    let out = c
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/tmp")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("LANG", "C.UTF-8")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Small client programs the sandbox runs (plain Python, no packages).
const UDP_SEND: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
# A QUIC-shaped long-header Initial packet, then some bytes.
for payload in (b"\xc3\x00\x00\x00\x01" + b"\x00" * 1200, b"exfil"):
    try:
        s.sendto(payload, (host, port))
    except OSError as e:
        print("send refused:", e)
print("sent")
"#;

const PING: &str = r#"
import socket, struct, sys
host = sys.argv[1]
if ":" in host:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    echo = struct.pack("!BBHHH", 128, 0, 0, 1, 1)  # the kernel fills in the checksum
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    echo = struct.pack("!BBHHH", 8, 0, 0xf7fd, 1, 1)
s.settimeout(1.0)
try:
    s.sendto(echo, (host, 0))
    s.recv(100)
    print("reply")
except OSError as e:
    print("no reply:", e)
"#;

/// Sends `n` datagrams of junk (no valid DNS message among them) to `server`:53.
const DNS_JUNK: &str = r#"
import socket, sys
server, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(i.to_bytes(2, "big") + b"\xff" * 30, (server, 53))
print("sent")
"#;

/// Sends a ClientHello naming allowed.test to `host`:443, with an encrypted_client_hello
/// extension when the second argument is `ech`; prints how the connection ended.
const HELLO: &str = r#"
import socket, struct, sys
host, ech = sys.argv[1], sys.argv[2] == "ech"
def ext(kind, data):
    return struct.pack("!HH", kind, len(data)) + data
name = b"allowed.test"
sni = struct.pack("!BH", 0, len(name)) + name
exts = ext(0, struct.pack("!H", len(sni)) + sni)
if ech:
    exts += ext(0xFE0D, b"\x00\x00\x01\x00\x01\x07" + b"\x00" * 8)
body = b"\x03\x03" + b"\x07" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
body += struct.pack("!H", len(exts)) + exts
hs = b"\x01" + len(body).to_bytes(3, "big") + body
first = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
if sys.argv[2] == "big":
    # A hello announcing 16,000 bytes, sent in 100-byte records: never complete in 16 KiB.
    head = b"\x01" + (16000).to_bytes(3, "big") + b"\x03\x03"
    first = b"\x16\x03\x01" + struct.pack("!H", len(head)) + head
    first += (b"\x16\x03\x01" + struct.pack("!H", 100) + b"\x07" * 100) * 200
s = socket.create_connection((host, 443), timeout=5)
try:
    s.sendall(first)
except OSError:
    pass
try:
    r = s.recv(100)
    # 15: a TLS alert (the warden's refusal); 16: a handshake from a server.
    print(r[:1].hex() if r else "closed")
except OSError as e:
    print("reset")
"#;

const DNS_QUERY: &str = r#"
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
qtype = int(sys.argv[3]) if len(sys.argv) > 3 else 1
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in name.split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack("!HH", qtype, 1)
s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (server, 53))
r = s.recv(4096)
rcode = r[3] & 0x0f
answers = struct.unpack("!H", r[6:8])[0]
print(f"rcode={rcode} answers={answers}")
"#;

struct Scene {
    world: World,
    dns: FakeDns,
    web: TlsUpstream,
    /// Serves allowed.test over IPv6 (the warden may dial either checked address).
    _web6: TlsUpstream,
    plain: HttpUpstream,
    private: HttpUpstream,
    private_tls: TlsUpstream,
    metadata: HttpUpstream,
    udp: std::net::UdpSocket,
    dir: tempfile::TempDir,
}

impl Scene {
    /// The world with its servers: `allowed.test` (HTTPS on the public v4 and v6 addresses, and
    /// HTTP on v4), and private/metadata servers that must never see a connection.
    async fn new() -> Self {
        let world = World::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = dir.path().join("www");
        std::fs::create_dir_all(&files).unwrap();
        let a = |ip, port| World::addr(ip, port);
        let dns = FakeDns::start_std(
            &[
                ("allowed.test", &[PUBLIC_V4, PUBLIC_V6]),
                ("evil.test", &[PUBLIC_V4]),
            ],
            world.inet.udp(a(RESOLVER, 53)),
            world.inet.tcp(a(RESOLVER, 53)),
        );
        let web = TlsUpstream::start_std(
            world.inet.tcp(a(PUBLIC_V4, 443)),
            &["allowed.test"],
            Some(files.clone()),
        );
        let web6 = TlsUpstream::start_std(
            world.inet.tcp(a(PUBLIC_V6, 443)),
            &["allowed.test"],
            Some(files.clone()),
        );
        let plain = HttpUpstream::start_std(world.inet.tcp(a(PUBLIC_V4, 80)));
        let private = HttpUpstream::start_std(world.inet.tcp(a(PRIVATE_V4, 80)));
        // A private server that would happily serve allowed.test: it must still never be reached.
        let private_tls =
            TlsUpstream::start_std(world.inet.tcp(a(PRIVATE_V4, 443)), &["allowed.test"], None);
        let metadata = HttpUpstream::start_std(world.inet.tcp(a(METADATA_V4, 80)));
        let udp = world.inet.udp(a(PUBLIC_V4, 443));
        udp.set_nonblocking(true).unwrap();
        std::fs::write(files.join("hello.txt"), "hello from allowed.test\n").unwrap();
        for (name, body) in [
            ("udp_send.py", UDP_SEND),
            ("ping.py", PING),
            ("dns_query.py", DNS_QUERY),
            ("dns_junk.py", DNS_JUNK),
            ("hello.py", HELLO),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        // Both TLS servers' CAs, in one bundle the sandbox trusts.
        let bundle = format!(
            "{}{}",
            std::fs::read_to_string(&web.ca_file).unwrap(),
            std::fs::read_to_string(&web6.ca_file).unwrap()
        );
        std::fs::write(dir.path().join("ca.pem"), bundle).unwrap();
        Self {
            world,
            dns,
            web,
            _web6: web6,
            plain,
            private,
            private_tls,
            metadata,
            udp,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Runs `dns_query.py ARGS` (name, server, optional type) in the sandbox as `user`.
    async fn dns_query(&self, user: Option<u32>, args: &str) -> Out {
        let script = self.path("dns_query.py");
        sh(&self.world.host, user, &format!("python3 {script} {args}")).await
    }

    /// Datagrams that reached the world's UDP port 443.
    fn udp_received(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while self.udp.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    /// A warden sharing the sandbox's namespace, with capture installed at start-up.
    async fn warden(&self, action: &'static str) -> Warden {
        self.warden_with(action, &[]).await
    }

    /// [`Scene::warden`] with more arguments.
    async fn warden_with(&self, action: &'static str, args: &[&str]) -> Warden {
        let mut b = Warden::builder();
        for arg in args {
            b = b.arg(*arg);
        }
        b.netns(&self.world.host)
            .allow("allowed.test")
            .dns(World::addr(RESOLVER, 53))
            .action(action)
            .arg("--capture")
            .arg("install")
            // Server-first connections are decided by IP once this passes: keep tests quick.
            .arg("--sniff-timeout")
            .arg("1s")
            .admin_from(&self.world.inet, "10.77.0.2")
            .spawn()
            .await
    }
}

fn git(args: &[&str], cwd: &Path) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository served over "dumb" HTTP(S), and a tiny wheel in a PEP 503 simple index.
fn publish_repo_and_package(www: &Path) {
    let work = www.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "captured\n").unwrap();
    git(&["add", "README"], &work);
    git(
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "one",
        ],
        &work,
    );
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            www.join("repo.git").to_str().unwrap(),
        ],
        www,
    );
    git(&["update-server-info"], &www.join("repo.git"));
    let pkg = www.join("simple").join("tinypkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let wheel = "tinypkg-1.0-py3-none-any.whl";
    let script = format!(
        r#"
import zipfile, base64, hashlib
files = {{
  "tinypkg/__init__.py": b"VALUE = 1\n",
  "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
  "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}}
record = ""
with zipfile.ZipFile("{path}", "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{{name}},sha256={{digest}},{{len(data)}}\n"
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    z.writestr("tinypkg-1.0.dist-info/RECORD", record)
"#,
        path = pkg.join(wheel).display()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        pkg.join("index.html"),
        format!("<html><body><a href=\"{wheel}\">{wheel}</a></body></html>\n"),
    )
    .unwrap();
    std::fs::write(
        www.join("simple").join("index.html"),
        "<html><body><a href=\"tinypkg/\">tinypkg</a></body></html>\n",
    )
    .unwrap();
}

#[test]
fn init_installs_exactly_what_print_shows_and_remove_undoes_it() {
    let ns = Netns::new("init");
    let exec = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bin = support::BIN;
    let (code, _, err) = exec(&[
        bin,
        "init",
        "--admin-port",
        "9191",
        "--transparent-port",
        "16001",
        "--dns-port",
        "16053",
    ]);
    assert_eq!(code, 0, "{err}");
    let ours = exec(&["nft", "list", "ruleset"]).1;
    assert!(
        ours.contains("meta l4proto tcp redirect to :16001")
            && ours.contains("tcp dport 9191 drop"),
        "{ours}"
    );
    // Idempotent: a second init replaces the table, leaving the same ruleset.
    assert_eq!(
        exec(&[
            bin,
            "init",
            "--admin-port",
            "9191",
            "--transparent-port",
            "16001",
            "--dns-port",
            "16053"
        ])
        .0,
        0
    );
    assert_eq!(exec(&["nft", "list", "ruleset"]).1, ours);
    // The printed ruleset, loaded by nft itself, lists identically.
    let (_, printed, _) = exec(&[
        bin,
        "init",
        "--print",
        "--admin-port",
        "9191",
        "--transparent-port",
        "16001",
        "--dns-port",
        "16053",
    ]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &printed).unwrap();
    assert_eq!(
        exec(&["nft", "delete", "table", "inet", "egress_warden"]).0,
        0
    );
    let (code, _, err) = exec(&["nft", "-f", file.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exec(&["nft", "list", "ruleset"]).1, ours);
    // Remove, twice.
    assert_eq!(exec(&[bin, "init", "--remove"]).0, 0);
    assert_eq!(exec(&["nft", "list", "ruleset"]).1.trim(), "");
    assert_eq!(exec(&[bin, "init", "--remove"]).0, 0);
}

#[tokio::test]
async fn serve_refuses_to_run_open_when_capture_is_missing() {
    let ns = Netns::new("miss");
    let dir = tempfile::tempdir().unwrap();
    let out = ns
        .command(support::BIN)
        .args([
            "serve",
            "--capture",
            "verify",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--audit-log",
        ])
        .arg(dir.path().join("a.jsonl"))
        .arg("--ready-file")
        .arg(dir.path().join("ready.json"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("transparent capture could not be established") && err.contains("missing"),
        "{err}"
    );
    assert!(
        !dir.path().join("ready.json").exists(),
        "announced ready without capture"
    );
}

#[tokio::test]
async fn allowed_names_work_through_capture_with_curl_git_and_pip() {
    let scene = Scene::new().await;
    publish_repo_and_package(&scene.www());
    let w = scene.warden("deny").await;
    let ca = scene.path("ca.pem");
    // curl over IPv4 and IPv6, resolving through the captured DNS.
    for family in ["-4", "-6"] {
        let out = sh(
            &scene.world.host,
            None,
            &format!("curl -sS {family} --cacert {ca} https://allowed.test/repo.git/HEAD"),
        )
        .await;
        assert_eq!(
            out.stdout, "ref: refs/heads/main\n",
            "{family}: {}",
            out.stderr
        );
    }
    // The IPv6 client was captured too (the warden dials whichever checked address answers).
    w.decision(|l| {
        l["listener"] == "transparent"
            && l["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("[fd77::2]"))
    })
    .await;
    // git clone over HTTPS.
    let clone = scene.path("clone");
    let out = sh(&scene.world.host, None, &format!("GIT_SSL_CAINFO={ca} git clone -q https://allowed.test/repo.git {clone} && cat {clone}/README")).await;
    assert_eq!(out.stdout, "captured\n", "{}", out.stderr);
    // pip download from a package index.
    let dl = scene.path("dl");
    let out = sh(
        &scene.world.host,
        None,
        &format!("python3 -m pip download --no-deps --disable-pip-version-check --no-cache-dir --cert {ca} --index-url https://allowed.test/simple/ -d {dl} tinypkg"),
    )
    .await;
    assert!(
        Path::new(&dl).join("tinypkg-1.0-py3-none-any.whl").exists(),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // Plain HTTP, captured by Host.
    let out = sh(
        &scene.world.host,
        None,
        "curl -sS -4 http://allowed.test/plain",
    )
    .await;
    assert!(
        out.stdout.starts_with("plain GET /plain host=allowed.test"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(scene.plain.seen.requests(), 1);
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["verdict"] == "allow")
        .await;
    assert_eq!(line["host"], "allowed.test");
    // A URL inside an origin-form target is data: the request is named by its Host.
    let out = sh(
        &scene.world.host,
        None,
        "curl -sS -4 'http://allowed.test/login?next=https://evil.test/x'",
    )
    .await;
    assert!(
        out.stdout
            .starts_with("plain GET /login?next=https://evil.test/x host=allowed.test"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(scene.plain.seen.requests(), 2);
    assert!(
        !w.audit_lines().iter().any(|l| l["host"] == "evil.test"),
        "no record names a host that was never contacted"
    );
    assert!(
        w.audit_lines().iter().any(|l| l["listener"] == "dns"
            && l["host"] == "allowed.test"
            && l["verdict"] == "allow")
    );
    assert_eq!(
        scene.private_tls.seen.connections() + scene.private.seen.connections(),
        0
    );
}

#[tokio::test]
async fn direct_connections_to_denied_addresses_never_arrive() {
    let scene = Scene::new().await;
    let w = scene.warden("deny").await;
    let (udp, ping) = (scene.path("udp_send.py"), scene.path("ping.py"));
    // As root (the warden's own uid here) and as nobody.
    for user in [None, Some(65534)] {
        for url in [
            format!("http://{PRIVATE_V4}/"),
            format!("http://{METADATA_V4}/latest/meta-data/"),
            format!("http://{PUBLIC_V4}:8080/"),
            format!("http://[{PUBLIC_V6}]:8080/"),
        ] {
            let out = sh(
                &scene.world.host,
                user,
                &format!("curl -sS -m 10 -o /dev/null -w '%{{http_code}}' '{url}'"),
            )
            .await;
            assert_eq!(out.stdout, "403", "{user:?} {url}: {}", out.stderr);
        }
        // TCP that is not HTTP (a server-first protocol) to a denied address: cut, never connected.
        let out = sh(&scene.world.host, user, &format!("python3 -c \"import socket; s=socket.create_connection(('{PRIVATE_V4}', 22), 5); s.settimeout(8); print(repr(s.recv(10)))\"")).await;
        assert!(
            out.stdout.trim() == "b''" || out.stderr.contains("reset"),
            "{user:?}: {}{}",
            out.stdout,
            out.stderr
        );
        // UDP, including a QUIC-shaped Initial to port 443.
        let out = sh(
            &scene.world.host,
            user,
            &format!("python3 {udp} {PUBLIC_V4} 443; python3 {udp} {PUBLIC_V6} 443"),
        )
        .await;
        assert!(out.stdout.contains("sent"), "{}", out.stderr);
        // DNS to the world's resolver directly: answered by the warden, which refuses evil.test.
        let out = scene
            .dns_query(user, &format!("evil.test {RESOLVER}"))
            .await;
        assert_eq!(out.stdout.trim(), "rcode=5 answers=0", "{}", out.stderr);
        let out = scene.dns_query(user, "allowed.test 198.51.100.53").await;
        assert_eq!(
            out.stdout.trim(),
            "rcode=0 answers=1",
            "any resolver address is captured: {}",
            out.stderr
        );
        // The same over IPv6, to the world's resolver address there.
        let out = scene.dns_query(user, "evil.test fd77::1").await;
        assert_eq!(out.stdout.trim(), "rcode=5 answers=0", "{}", out.stderr);
    }
    // ICMP and ICMPv6 echo, with raw sockets (root).
    for target in [PUBLIC_V4, PUBLIC_V6] {
        let out = sh(&scene.world.host, None, &format!("python3 {ping} {target}")).await;
        assert!(
            out.stdout.starts_with("no reply"),
            "{target}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(
        scene.private.seen.connections() + scene.metadata.seen.connections(),
        0
    );
    assert_eq!(scene.udp_received(), 0, "a UDP datagram left the sandbox");
    assert!(
        !scene.dns.questions().contains(&"evil.test".to_owned()),
        "{:?}",
        scene.dns.questions()
    );
    // The drop counters are refreshed every few seconds: wait for them.
    let dropped = |text: &str, class| {
        support::sample(
            text,
            "egress_warden_capture_dropped_packets_total",
            &[("class", class)],
        )
        .unwrap_or(0.0)
    };
    // Every datagram sent above: two users × IPv4 and IPv6 × two payloads, and one echo for
    // each family (so a family whose drops went uncounted fails here).
    support::eventually("drop counters", async || {
        let text = w.metrics().await;
        (dropped(&text, "udp") >= 8.0 && dropped(&text, "icmp") >= 2.0).then_some(())
    })
    .await;
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["host"] == METADATA_V4)
        .await;
    assert_eq!(line["reason"], "special_address");
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["port"] == 22)
        .await;
    assert_eq!(line["reason"], "special_address");
    assert!(
        line["detail"].as_str().unwrap().contains("decided by IP"),
        "{line}"
    );
}

#[tokio::test]
async fn an_allowed_sni_aimed_at_a_denied_address_reaches_the_allowed_name_only() {
    let scene = Scene::new().await;
    let w = scene.warden("deny").await;
    let ca = scene.path("ca.pem");
    let out = sh(&scene.world.host, None, &format!("curl -sS -4 --cacert {ca} --resolve allowed.test:443:{PRIVATE_V4} https://allowed.test/repo.git/HEAD -o /dev/null -w '%{{http_code}}'")).await;
    // The private server holds a valid certificate for allowed.test; the warden dialled the
    // real allowed.test instead (which has no such file: 404).
    assert_eq!(out.stdout, "404", "{}", out.stderr);
    assert_eq!(
        scene.private_tls.seen.connections(),
        0,
        "the sandbox reached the address it chose"
    );
    assert!(scene.web.seen.requests() >= 1);
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["verdict"] == "allow")
        .await;
    assert_eq!(line["ip"], PUBLIC_V4);
}

#[tokio::test]
async fn capture_is_proven_before_ready_and_its_loss_ends_the_run() {
    let scene = Scene::new().await;
    let mut w = scene.warden("deny").await;
    let (status, body) = w.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let text = w.metrics().await;
    assert_eq!(
        support::sample(&text, "egress_warden_enforcement_active", &[]),
        Some(1.0),
        "{text}"
    );
    let start = support::eventually("the start line", async || {
        w.audit_lines().into_iter().find(|l| l["event"] == "start")
    })
    .await;
    assert!(
        start["capture"]
            .as_str()
            .unwrap()
            .contains("redirect to :15001")
    );
    // After start-up no thread holds more than CAP_NET_ADMIN (bit 12), bounding set included,
    // and the warden's threads still hold it.
    let threads = support::thread_capabilities(w.pid);
    for (eff, bnd) in &threads {
        assert_eq!(
            (eff & !(1 << 12), bnd & !(1 << 12)),
            (0, 0),
            "a thread kept more than CAP_NET_ADMIN: {threads:x?}"
        );
    }
    assert!(
        threads.iter().filter(|(eff, _)| *eff == 1 << 12).count() > 1,
        "{threads:x?}"
    );
    // The sandbox cannot reach the admin port over loopback.
    let out = sh(
        &scene.world.host,
        Some(65534),
        &format!("curl -sS -m 3 http://127.0.0.1:{}/metrics", w.admin.port()),
    )
    .await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    // Someone with CAP_NET_ADMIN removes the rules: the run ends instead of running open.
    let out = sh(
        &scene.world.host,
        None,
        "nft delete table inet egress_warden",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.exit().await.code(), Some(1));
    assert!(
        w.stderr_text()
            .contains("capture ruleset changed or was removed"),
        "{}",
        w.stderr_text()
    );
    assert_eq!(w.audit_lines().last().unwrap()["outcome"], "failed");
}

#[tokio::test]
async fn an_isolated_run_reaches_allowed_names_and_nothing_else() {
    let scene = Scene::new().await;
    let ca = scene.path("ca.pem");
    let (udp, dnsq) = (scene.path("udp_send.py"), scene.path("dns_query.py"));
    let report = scene.path("report");
    let script = format!(
        "curl -sS --cacert {ca} https://allowed.test/hello.txt -o /dev/null -w 'https=%{{http_code}}\\n' >> {report}; \
         curl -sS --noproxy '*' -m 10 http://{PRIVATE_V4}/ -o /dev/null -w 'private=%{{http_code}}\\n' >> {report}; \
         python3 {udp} {PUBLIC_V4} 443 >> {report} 2>&1; \
         python3 {dnsq} evil.test {RESOLVER} >> {report} 2>&1; \
         nft list ruleset >/dev/null 2>&1; echo nft=$? >> {report}; \
         nsenter --net=/proc/1/ns/net true 2>/dev/null; echo nsenter=$? >> {report}; \
         id -u >> {report}"
    );
    let mut w = Warden::builder()
        .netns(&scene.world.host)
        .allow("allowed.test")
        .dns(World::addr(RESOLVER, 53))
        .admin_from(&scene.world.inet, "10.77.0.2")
        .run(&["sh", "-c", &script])
        .arg("--isolate")
        .spawn()
        .await;
    assert_eq!(w.exit().await.code(), Some(0), "{}", w.stderr_text());
    let report = std::fs::read_to_string(&report).unwrap();
    for want in [
        "https=200",
        "private=403",
        "sent",
        "rcode=5 answers=0",
        "nft=1",
        "nsenter=1",
        "0\n",
    ] {
        assert!(report.contains(want), "missing {want:?} in:\n{report}");
    }
    assert_eq!(scene.private.seen.connections(), 0);
    assert_eq!(scene.udp_received(), 0);
    assert_eq!(w.audit_lines()[0]["mode"], "run --isolate");
}

#[tokio::test]
async fn an_isolated_violation_kills_the_sandbox_and_exits_77() {
    let scene = Scene::new().await;
    let pid_file = scene.path("bg");
    let script = format!(
        "sleep 1000 & echo $! > {pid_file}; curl -s --noproxy '*' -m 10 http://{PRIVATE_V4}/; sleep 1000"
    );
    let mut w = Warden::builder()
        .netns(&scene.world.host)
        .dns(World::addr(RESOLVER, 53))
        .action("terminate")
        .run(&["sh", "-c", &script])
        .arg("--isolate")
        .spawn()
        .await;
    assert_eq!(w.exit().await.code(), Some(77), "{}", w.stderr_text());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    });
    assert!(!alive, "sandbox process {pid} survived");
    let end = w.audit_lines().pop().unwrap();
    assert_eq!(end["termination_reason"], "special_address");
    assert_eq!(scene.private.seen.connections(), 0);
}

#[tokio::test]
async fn a_dns_flood_costs_a_line_per_interval_not_one_per_datagram() {
    let scene = Scene::new().await;
    let w = scene.warden_with("deny", &["--dns-rate", "10"]).await;
    let junk = scene.path("dns_junk.py");
    let sent = 3000;
    let out = sh(
        &scene.world.host,
        None,
        &format!("python3 {junk} {RESOLVER} {sent}"),
    )
    .await;
    assert_eq!(out.stdout, "sent\n", "{}", out.stderr);
    // Every rate-limited query is counted once: in a decision line of its own (the first of
    // each interval) or in a summary line.
    let limited = support::eventually("the flood summarised", async || {
        let metrics = w.metrics().await;
        let limited = support::sample(
            &metrics,
            "egress_warden_dns_rate_limited_queries_total",
            &[],
        )?;
        let lines = w.audit_lines();
        let single = lines
            .iter()
            .filter(|l| l["event"] == "decision" && l["reason"] == "dns_rate_limited")
            .count() as f64;
        let summarised: f64 = lines
            .iter()
            .filter(|l| l["event"] == "dns_rate_limited")
            .map(|l| l["queries"].as_f64().unwrap())
            .sum();
        (limited > 0.0 && single + summarised == limited).then_some(limited)
    })
    .await;
    let lines = w.audit_lines();
    let dns_lines = lines.iter().filter(|l| l["listener"] == "dns").count();
    // A burst of 20 (twice the rate) is recorded one by one; the rest costs a few lines a second.
    assert!(
        dns_lines < 60,
        "{dns_lines} DNS lines for {limited} rate-limited of {sent} datagrams"
    );
    // Datagrams past the socket buffer are dropped by the kernel; hundreds still arrive.
    assert!(
        limited >= 200.0,
        "only {limited} of {sent} were rate limited"
    );
    let summary = lines
        .iter()
        .find(|l| l["event"] == "dns_rate_limited")
        .expect("a summary line");
    assert_eq!(summary["reason"], "dns_rate_limited");
    assert_eq!(summary["verdict"], "deny");
    assert!(summary["since"].is_string() && summary["bytes_up"].as_u64().unwrap() > 0);
    // The run goes on.
    assert_eq!(w.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn an_encrypted_client_hello_is_decided_by_address_never_by_its_outer_sni() {
    let scene = Scene::new().await;
    let w = scene.warden("deny").await;
    let hello = scene.path("hello.py");
    // The outer SNI names an allowed host, but with ECH the real name is hidden: only IP rules
    // can allow it, and none covers the address.
    let out = sh(
        &scene.world.host,
        None,
        &format!("python3 {hello} {PUBLIC_V4} ech"),
    )
    .await;
    assert_eq!(out.stdout, "15\n", "the warden's TLS alert: {}", out.stderr);
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["verdict"] == "deny")
        .await;
    assert_eq!(line["reason"], "no_hostname", "{line}");
    assert_eq!(line["host"], PUBLIC_V4);
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains("encrypted client hello")),
        "{line}"
    );
    assert_eq!(line["violation"], true);
    assert_eq!(
        scene.web.seen.connections(),
        0,
        "the server was never dialled"
    );
    // The same hello without ECH is named by its SNI and reaches the server.
    sh(
        &scene.world.host,
        None,
        &format!("python3 {hello} {PUBLIC_V4} plain"),
    )
    .await;
    let line = w
        .decision(|l| l["listener"] == "transparent" && l["verdict"] == "allow")
        .await;
    assert_eq!(line["host"], "allowed.test");
    assert_eq!(scene.web.seen.connections(), 1);
    // A first flight past the 16 KiB the warden reads has no name either.
    sh(
        &scene.world.host,
        None,
        &format!("python3 {hello} {PUBLIC_V4} big"),
    )
    .await;
    let line = w
        .decision(|l| {
            l["listener"] == "transparent"
                && l["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("first flight too large"))
        })
        .await;
    assert_eq!(line["reason"], "no_hostname", "{line}");
    assert_eq!(scene.web.seen.connections(), 1, "never dialled");
}

#[tokio::test]
async fn txt_ptr_and_any_are_refused_by_the_dns_listener_and_never_forwarded() {
    let scene = Scene::new().await;
    let w = scene.warden("terminate").await;
    // TXT, PTR and ANY for an allowed name: refused (a channel for data, not for dialling).
    for (qtype, name) in [(16, "TXT"), (12, "PTR"), (255, "ANY")] {
        let out = scene
            .dns_query(None, &format!("allowed.test {RESOLVER} {qtype}"))
            .await;
        assert_eq!(
            out.stdout.trim(),
            "rcode=5 answers=0",
            "{name}: {}",
            out.stderr
        );
        let line = w
            .decision(|l| {
                l["listener"] == "dns" && l["detail"].as_str().is_some_and(|d| d.contains(name))
            })
            .await;
        assert_eq!(line["reason"], "dns_type_not_allowed", "{line}");
        assert_eq!(
            line["violation"], false,
            "not a violation by default: {line}"
        );
    }
    // A refused name is not a violation by default either: the run goes on.
    let out = scene
        .dns_query(None, &format!("evil.test {RESOLVER}"))
        .await;
    assert_eq!(out.stdout.trim(), "rcode=5 answers=0", "{}", out.stderr);
    assert_eq!(w.admin_get("/readyz").await.0, 200);
    assert!(
        scene.dns.questions().is_empty(),
        "nothing refused was forwarded: {:?}",
        scene.dns.questions()
    );
    // An allowed query the upstream fails is recorded with the upstream's answer code.
    scene.dns.fail("allowed.test", 2);
    let out = scene
        .dns_query(None, &format!("allowed.test {RESOLVER}"))
        .await;
    assert_eq!(out.stdout.trim(), "rcode=2 answers=0", "{}", out.stderr);
    let line = w
        .decision(|l| l["listener"] == "dns" && l["error"] == "dns_upstream_error")
        .await;
    assert_eq!(line["verdict"], "allow");
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains("upstream rcode=Server Failure")),
        "{line}"
    );
    // DNS is counted apart from connections in the summary.
    let mut w = w;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    let summary = w.summary_json();
    let host = &summary["hosts"]["allowed.test"];
    assert_eq!(host["dns_queries"], 4, "{summary:#}");
    assert_eq!(host["dns_refused"], 3, "{summary:#}");
    assert_eq!(host["connections"], 0, "{summary:#}");
}

#[tokio::test]
async fn with_dns_denial_is_violation_a_refused_query_ends_the_run() {
    let scene = Scene::new().await;
    let mut w = scene
        .warden_with("terminate", &["--dns-denial-is-violation"])
        .await;
    let out = scene
        .dns_query(None, &format!("evil.test {RESOLVER}"))
        .await;
    assert_eq!(out.stdout.trim(), "rcode=5 answers=0", "{}", out.stderr);
    assert_eq!(w.exit().await.code(), Some(77));
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["listener"] == "dns" && l["host"] == "evil.test")
        .unwrap();
    assert_eq!(line["reason"], "domain_not_allowed");
    assert_eq!(line["violation"], true);
    assert_eq!(
        w.audit_lines().last().unwrap()["termination_reason"],
        "domain_not_allowed"
    );
}
