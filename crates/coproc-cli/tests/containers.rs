//! Container domains (docs/daemon.md, "Containers"): a peer's domain is its
//! uid *and* its container, read from its cgroup at connect time; each
//! container has its own quota, and root inside a container is no admin
//! unless a rule says so.
//!
//! Two tests, both with real processes of uid 0 against a private daemon:
//! - `cgroup_domains_*` puts client processes into cgroups of its own (a
//!   directory in the cgroup v2 hierarchy, the client's pid written to its
//!   `cgroup.procs` before it execs), so it tests the identity logic
//!   wherever root can make cgroups, with or without a container runtime
//!   (and that a cgroup owned by a user is no container);
//! - `podman_containers_*` runs the clients in real podman containers (a
//!   rootfs built here from the test binary and its libraries: no image is
//!   pulled) with the daemon's socket mounted.
//!
//! The client is this test binary itself, running the ignored test
//! `container_client`, which prints what it saw as `coproc-test: key=value`
//! lines.

mod common;

use common::{need_root, Daemon};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The client's report: `key=value` lines it printed.
type Report = HashMap<String, String>;

/// In a container (or cgroup): say who the daemon thinks we are, open
/// vcoprocs on `mcu0` until the quota refuses, try an admin verb, and with
/// `COPROC_TEST_HOLD=1` keep the vcoprocs until stdin closes.
#[test]
#[ignore = "run by the container tests inside their containers"]
fn container_client() {
    let socket: PathBuf = std::env::var_os("COPROC_TEST_SOCKET")
        .expect("COPROC_TEST_SOCKET")
        .into();
    let say = |k: &str, v: &str| {
        println!("coproc-test: {k}={v}");
        std::io::stdout().flush().unwrap();
    };
    let mut c = coproc_client::Client::connect_to(&socket).unwrap();
    let id = c.identity().clone();
    say("uid", &id.uid.to_string());
    say("domain", &id.domain.to_string());
    say("admin", &id.admin.to_string());
    say("container", id.container.as_deref().unwrap_or("-"));
    let mut opened = 0;
    let refused = loop {
        match c.open("mcu0") {
            Ok(_) => opened += 1,
            Err(e) => break e,
        }
        assert!(opened <= 64, "no quota stopped us");
    };
    say("opened", &opened.to_string());
    say("refused", &code(&refused));
    let sched = c.sched_set("mcu0", "rr", &[("slice_us".into(), "5000".into())]);
    say(
        "sched_set",
        &sched.map_or_else(|e| code(&e), |()| "ok".into()),
    );
    let domains = c.list_domains().unwrap();
    say("domains_seen", &domains.len().to_string());
    if std::env::var("COPROC_TEST_HOLD").is_ok_and(|v| v == "1") {
        say("held", "yes");
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }
    drop(c);
}

/// The wire error code of a refused request (`Quota`, `PermissionDenied`).
fn code(e: &coproc_client::ClientError) -> String {
    match e {
        coproc_client::ClientError::Refused(w) => format!("{:?}", w.code),
        other => format!("error: {other}"),
    }
}

/// Read a client's `coproc-test:` lines until `until` is reported (or its
/// output ends).
fn read_report(out: &mut impl BufRead, until: &str) -> Report {
    let mut r = Report::new();
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            return r;
        }
        if let Some((k, v)) = line
            .trim_end()
            .strip_prefix("coproc-test: ")
            .and_then(|kv| kv.split_once('='))
        {
            r.insert(k.to_string(), v.to_string());
            if k == until {
                return r;
            }
        }
    }
}

/// A client process and its output.
struct Client {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Client {
    /// Spawn `cmd` (a client: its stdin and stdout are piped).
    fn spawn(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Client { child, out }
    }

    /// Its report up to `until`.
    fn report(&mut self, until: &str) -> Report {
        let r = read_report(&mut self.out, until);
        assert!(
            r.contains_key(until),
            "the client ended before {until:?} (its stderr is above): {r:?}"
        );
        r
    }

    /// Close its stdin (a holding client lets go) and check it passed.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let st = self.child.wait().unwrap();
        assert!(st.success(), "client failed: {st}\n{rest}");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The config: one mcu pcoproc; `rules` first, then everyone else with 8
/// vcoprocs.
fn config(rules: &str, metrics: &Path) -> String {
    let metrics = metrics.display();
    format!(
        r#"
[daemon]
metrics_socket = "{metrics}"

[[pcoproc]]
name = "mcu0"
class = "mcu"

{rules}

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 8
"#
    )
}

/// The Prometheus text of the daemon's metrics socket.
fn scrape(sock: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .expect("an HTTP answer")
        .1
        .to_string()
}

/// Check what the daemon's owner (root outside containers, an admin) sees:
/// each container domain in `domain-list` with its container and its
/// vcoprocs, and in the metrics with a `container` label.
fn host_sees(d: &Daemon, metrics: &Path, containers: &[(&Report, u32)]) {
    let mut host = d.client();
    let me = host.identity().clone();
    assert!(me.admin, "root outside containers is an admin: {me:?}");
    assert_eq!(me.container, None);
    assert_eq!(me.domain, 0, "outside containers the domain is the uid");
    let domains = host.list_domains().unwrap();
    for (r, vcoprocs) in containers {
        let dom: u32 = r["domain"].parse().unwrap();
        let listed = domains
            .iter()
            .find(|x| x.domain == dom)
            .unwrap_or_else(|| panic!("domain {dom} not in {domains:?}"));
        assert_eq!(listed.container.as_deref(), Some(r["container"].as_str()));
        assert_eq!(listed.uid, 0);
        assert_eq!(listed.vcoprocs, *vcoprocs, "{listed:?}");
        // `coproc domain-list` shows the same, in its table and its JSON.
        let (ok, table, err) = d.cli(&["domain-list"]);
        assert!(ok, "{err}");
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(dom.to_string().as_str()))
            .unwrap_or_else(|| panic!("domain {dom} not in\n{table}"));
        assert!(row.contains(r["container"].as_str()), "{row}");
        let (ok, json, err) = d.cli(&["domain-list", "-o", "json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let entry = v
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domain"] == dom)
            .unwrap_or_else(|| panic!("domain {dom} not in {json}"));
        assert_eq!(entry["container"], r["container"].as_str());
        assert_eq!(entry["vcoprocs"], *vcoprocs);
        let body = scrape(metrics);
        let line = body
            .lines()
            .find(|l| {
                l.starts_with("coproc_domain_sessions{") && l.contains(&format!("domain=\"{dom}\""))
            })
            .unwrap_or_else(|| panic!("no sessions series of domain {dom}:\n{body}"));
        assert!(
            line.contains(&format!("container=\"{}\"", r["container"])),
            "{line}"
        );
    }
    // The host's own quota (8) is its own: the containers' vcoprocs do
    // not count against it. (Sessions of domain 0 that ended, as the
    // delegated cgroup's client's, are gone once the daemon has seen them
    // close.)
    common::wait_for("domain 0's ended sessions to be cleaned up", || {
        host.list_domains()
            .unwrap()
            .iter()
            .all(|x| x.domain != 0 || x.vcoprocs == 0)
    });
    for _ in 0..8 {
        host.open("mcu0").unwrap();
    }
    assert!(host.open("mcu0").is_err());
}

/// Check one container client's report: a separate, non-admin domain of
/// uid 0 that got exactly `quota` vcoprocs.
fn check_contained(r: &Report, quota: u32, container: &str) {
    check_contained_as(r, 0, quota, container);
}

/// [`check_contained`] for host uid `uid`.
fn check_contained_as(r: &Report, uid: u32, quota: u32, container: &str) {
    assert_eq!(r["uid"], uid.to_string(), "{r:?}");
    assert_eq!(r["container"], container, "{r:?}");
    assert_eq!(
        r["admin"], "false",
        "root in a container is no admin: {r:?}"
    );
    let dom: u32 = r["domain"].parse().unwrap();
    assert!(dom >= 0x8000_0000, "a container domain's number: {r:?}");
    assert_eq!(r["opened"], quota.to_string(), "{r:?}");
    assert_eq!(r["refused"], "Quota", "{r:?}");
    assert_eq!(r["sched_set"], "PermissionDenied", "{r:?}");
    assert_eq!(r["domains_seen"], "1", "a domain sees only itself: {r:?}");
}

/// The mount point of the cgroup v2 hierarchy, if there is one.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// Cgroups this test made, removed on drop (after their processes left).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// A command that runs this binary's `container_client` in cgroup `cg`
/// (its shell writes its own pid into the cgroup, then execs the client).
fn client_in_cgroup(cg: &Path, socket: &Path, hold: bool) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$0" --exact container_client --ignored --nocapture"#)
        .arg(std::env::current_exe().unwrap())
        .arg(cg)
        .env("COPROC_TEST_SOCKET", socket)
        .env("COPROC_TEST_HOLD", if hold { "1" } else { "0" });
    c
}

#[test]
fn cgroup_domains_have_their_own_quotas_and_no_admin() {
    if !need_root("make cgroups and move processes into them") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        if std::env::var("COPROC_SKIP_CONTAINERS").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED (COPROC_SKIP_CONTAINERS=1): no cgroup v2 hierarchy is mounted");
            return;
        }
        panic!("no cgroup v2 hierarchy is mounted (set COPROC_SKIP_CONTAINERS=1 to skip)");
    };
    let top = format!("coproc-test-{}", std::process::id());
    let base = root.join(&top);
    let mut cgs = Cgroups(vec![base.clone()]);
    if let Err(e) = std::fs::create_dir(&base) {
        if std::env::var("COPROC_SKIP_CONTAINERS").is_ok_and(|v| v == "1") {
            eprintln!(
                "SKIPPED (COPROC_SKIP_CONTAINERS=1): cannot make a cgroup under {}: {e}",
                root.display()
            );
            return;
        }
        panic!(
            "cannot make a cgroup under {}: {e} (set COPROC_SKIP_CONTAINERS=1 to skip)",
            root.display()
        );
    }
    for n in ["a", "b", "trusted"] {
        std::fs::create_dir(base.join(n)).unwrap();
        cgs.0.push(base.join(n));
    }
    // Containers a (1 vcoproc) and b (2: every other container under the
    // test's cgroup), `trusted` (3, admins stay admins).
    let rules = format!(
        r#"
[[domain]]
cgroup = "/{top}/a"
pcoprocs = ["mcu0"]
max_vcoprocs = 1

[[domain]]
cgroup = "/{top}/trusted"
pcoprocs = ["mcu0"]
max_vcoprocs = 3
admin = true

[[domain]]
cgroup = "/{top}/*"
pcoprocs = ["mcu0"]
max_vcoprocs = 2
"#
    );
    let dir = std::env::temp_dir().join(format!("coproc-cg-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("metrics.sock");
    let d = Daemon::start("cgroups", &config(&rules, &metrics));

    // a holds its one vcoproc while b takes its two: separate quotas.
    let mut a = Client::spawn(client_in_cgroup(&base.join("a"), &d.socket, true));
    let ra = a.report("held");
    check_contained(&ra, 1, &format!("/{top}/a"));
    let mut b = Client::spawn(client_in_cgroup(&base.join("b"), &d.socket, true));
    let rb = b.report("held");
    check_contained(&rb, 2, &format!("/{top}/b"));
    assert_ne!(ra["domain"], rb["domain"], "two containers, two domains");

    // A second session in b is the same domain: its quota is spent.
    let mut b2 = Client::spawn(client_in_cgroup(&base.join("b"), &d.socket, false));
    let rb2 = b2.report("domains_seen");
    assert_eq!(rb2["domain"], rb["domain"]);
    assert_eq!(rb2["opened"], "0", "{rb2:?}");
    b2.finish();

    // A rule with admin = true keeps root an admin in its container.
    let mut t = Client::spawn(client_in_cgroup(&base.join("trusted"), &d.socket, false));
    let rt = t.report("domains_seen");
    assert_eq!(rt["admin"], "true", "{rt:?}");
    assert_eq!(rt["opened"], "3", "{rt:?}");
    assert_eq!(rt["sched_set"], "ok", "{rt:?}");
    t.finish();

    // A cgroup delegated to a user (owned by it: systemd's user@.service,
    // rootless podman) is no container, though a pattern matches it: that
    // user could make any number of them. Root in it is root outside
    // containers: domain 0, an admin.
    let delegated = base.join("delegated");
    std::fs::create_dir(&delegated).unwrap();
    cgs.0.push(delegated.clone());
    std::os::unix::fs::chown(&delegated, Some(65534), None).unwrap();
    let mut u = Client::spawn(client_in_cgroup(&delegated, &d.socket, false));
    let ru = u.report("domains_seen");
    assert_eq!(
        (
            ru["container"].as_str(),
            ru["domain"].as_str(),
            ru["admin"].as_str()
        ),
        ("-", "0", "true"),
        "{ru:?}"
    );
    u.finish();

    host_sees(&d, &metrics, &[(&ra, 1), (&rb, 2)]);
    a.finish();
    b.finish();
    drop(d);

    // A daemon that itself runs in container b: b's peers are where it is,
    // not in a container to it (root there is an admin); a's still are.
    let procs = std::ffi::CString::new(
        base.join("b/cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let inner = Daemon::start_with(
        "cgroups-inner",
        &config(&rules, &dir.join("inner.sock")),
        |c| {
            // SAFETY: only system calls (open, write) between fork and exec,
            // on a path made before the fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(c, move || {
                    let fd = rustix::fs::open(
                        procs.as_c_str(),
                        rustix::fs::OFlags::WRONLY,
                        rustix::fs::Mode::empty(),
                    )?;
                    // "0": the writing process itself.
                    rustix::io::write(&fd, b"0")?;
                    Ok(())
                });
            }
        },
    );
    let mut same = Client::spawn(client_in_cgroup(&base.join("b"), &inner.socket, false));
    let rs = same.report("domains_seen");
    assert_eq!(
        (
            rs["container"].as_str(),
            rs["domain"].as_str(),
            rs["admin"].as_str()
        ),
        ("-", "0", "true"),
        "{rs:?}"
    );
    same.finish();
    let mut other = Client::spawn(client_in_cgroup(&base.join("a"), &inner.socket, false));
    let ro = other.report("domains_seen");
    check_contained(&ro, 1, &format!("/{top}/a"));
    other.finish();
    drop(inner);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OCI runtime podman can run a container with here: its default
/// (crun), else runc (crun refuses a cgroup v1/v2 hybrid that leaves a
/// controller in v2; runc does not). `None`, after saying why loudly, when
/// none can and `COPROC_SKIP_CONTAINERS=1`; a failure otherwise.
fn podman_runtime(rootfs: &Path) -> Option<Runtime> {
    let mut why = Vec::new();
    for runtime in [Runtime(None), Runtime(Some("runc"))] {
        let mut c = podman(runtime, &["--rootfs"]);
        c.arg(rootfs).args(["/client", "--list"]);
        match c.output() {
            Err(e) => {
                why.push(format!(
                    "podman is not installed ({e}); scripts/setup.sh installs it"
                ));
                break;
            }
            Ok(o) if o.status.success() => {
                if let Runtime(Some(r)) = runtime {
                    eprintln!(
                        "podman's default runtime cannot run a container here ({}); using {r}",
                        why.join("; ")
                    );
                }
                return Some(runtime);
            }
            Ok(o) => why.push(format!(
                "podman (runtime {}) cannot run a container here: {}",
                runtime.0.unwrap_or("default"),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        }
    }
    let why = why.join("; ");
    if std::env::var("COPROC_SKIP_CONTAINERS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED (COPROC_SKIP_CONTAINERS=1): {why}");
        return None;
    }
    panic!("{why}\n(set COPROC_SKIP_CONTAINERS=1 to skip this test)");
}

/// The OCI runtime podman is told to use (`None`: its default).
#[derive(Debug, Clone, Copy)]
struct Runtime(Option<&'static str>);

/// `podman [--runtime R] run --rm` with what runs anywhere root can: no
/// network, limits lowered rather than raised (raising needs
/// CAP_SYS_RESOURCE), then `extra`.
fn podman(runtime: Runtime, extra: &[&str]) -> Command {
    let mut c = Command::new("podman");
    if let Runtime(Some(r)) = runtime {
        c.args(["--runtime", r]);
    }
    c.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ])
    .args(extra);
    c
}

/// A rootfs holding this test binary as `/client` and the libraries it
/// loads (from `ldd`), built in `dir`.
fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("run/coproc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let me = std::env::current_exe().unwrap();
    common::copy_executable(&me, &root.join("client"));
    let ldd = Command::new("ldd").arg(&me).output().unwrap();
    assert!(ldd.status.success(), "ldd {}", me.display());
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let to = root.join(p.strip_prefix("/").unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            // -L: the library, not a link to it.
            let st = Command::new("cp")
                .arg("-L")
                .arg(&p)
                .arg(&to)
                .status()
                .unwrap();
            assert!(st.success(), "cp {}", p.display());
        }
    }
    root
}

/// A container started by this test, removed on drop whatever happened.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `container_client` in a podman container named `name` with the
/// daemon's socket directory mounted at /run/coproc.
fn client_in_podman(
    d: &Daemon,
    runtime: Runtime,
    rootfs: &Path,
    name: &str,
    hold: bool,
    extra: &[&str],
) -> (Client, Container) {
    let mount = format!("{}:/run/coproc", d.dir.display());
    let mut c = podman(
        runtime,
        &[
            "-i",
            "--name",
            name,
            "-v",
            &mount,
            "-e",
            "COPROC_TEST_SOCKET=/run/coproc/coprocd.sock",
            "-e",
            if hold {
                "COPROC_TEST_HOLD=1"
            } else {
                "COPROC_TEST_HOLD=0"
            },
        ],
    );
    c.args(extra).arg("--rootfs").arg(rootfs).args([
        "/client",
        "--exact",
        "container_client",
        "--ignored",
        "--nocapture",
    ]);
    (Client::spawn(c), Container(name.to_string()))
}

#[test]
fn podman_containers_are_separate_domains_and_root_in_them_is_no_admin() {
    if !need_root("run containers with podman") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("coproc-podman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = build_rootfs(&dir);
    let Some(runtime) = podman_runtime(&rootfs) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    // Every podman container (its cgroup is .../libpod-<id>[.scope]) is
    // a domain of its own with 2 vcoprocs.
    let rules = r#"
[[domain]]
cgroup = "**/libpod-*"
pcoprocs = ["mcu0"]
max_vcoprocs = 2
"#;
    let metrics = dir.join("metrics.sock");
    let d = Daemon::start("podman", &config(rules, &metrics));
    let pid = std::process::id();
    let (mut a, _ca) = client_in_podman(
        &d,
        runtime,
        &rootfs,
        &format!("coproc-test-{pid}-a"),
        true,
        &[],
    );
    let ra = a.report("held");
    let (mut b, _cb) = client_in_podman(
        &d,
        runtime,
        &rootfs,
        &format!("coproc-test-{pid}-b"),
        true,
        &[],
    );
    let rb = b.report("held");
    for r in [&ra, &rb] {
        assert!(r["container"].contains("/libpod-"), "{r:?}");
        check_contained(r, 2, &r["container"]);
    }
    assert_ne!(ra["container"], rb["container"]);
    assert_ne!(ra["domain"], rb["domain"], "two containers, two domains");
    // With a user namespace, the container's root is host uid 200000 to
    // the daemon (SO_PEERCRED maps it): a third domain, no admin.
    let (mut c, _cc) = client_in_podman(
        &d,
        runtime,
        &rootfs,
        &format!("coproc-test-{pid}-c"),
        false,
        &["--uidmap", "0:200000:65536", "--gidmap", "0:200000:65536"],
    );
    let rc = c.report("domains_seen");
    assert!(rc["container"].contains("/libpod-"), "{rc:?}");
    check_contained_as(&rc, 200_000, 2, &rc["container"]);
    assert!(rc["domain"] != ra["domain"] && rc["domain"] != rb["domain"]);
    c.finish();
    host_sees(&d, &metrics, &[(&ra, 2), (&rb, 2)]);
    a.finish();
    b.finish();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
