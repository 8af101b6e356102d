//! The harness the daemon tests share: a private `coprocd` on a socket in a
//! fresh directory, and the `coproc` binary pointed at it.

// Casts of values the tests themselves chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![allow(dead_code)]

pub mod raw;

use coproc_client::Client;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `coproc` binary of this package.
pub fn coproc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coproc"))
}

/// The `coprocd` binary next to it, brought up to date once per test
/// binary together with `coproc-bench` (which `coproc demo`, `bench` and
/// `domain-run` run): `cargo test` builds only this package's binaries,
/// and a stale daemon would test old code.
pub fn coprocd_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let p = coproc_bin().with_file_name("coprocd");
            let mut c = Command::new(env!("CARGO"));
            // From the workspace root, so that a relative CARGO_TARGET_DIR
            // means what it meant for the build of this test.
            c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
            c.args(["build", "-q", "-p", "coprocd", "-p", "coproc-bench"]);
            if p.to_string_lossy().contains("/release/") {
                c.arg("--release");
            }
            assert!(
                c.status().unwrap().success(),
                "building coprocd and coproc-bench"
            );
            p
        })
        .clone()
}

/// A private daemon, stopped with SIGTERM and its directory removed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Start one with `config` in a directory named after `name`.
    pub fn start(name: &str, config: &str) -> Daemon {
        Daemon::start_with(name, config, |_| {})
    }

    /// [`Daemon::start`], with `adjust` applied to the daemon's command
    /// first (its stderr, environment, limits).
    pub fn start_with(name: &str, config: &str, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let dir = std::env::temp_dir().join(format!("coproc-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Other uids (tests run domains as uid 65534) reach the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("coprocd.toml");
        std::fs::write(&path, config).unwrap();
        let socket = dir.join("coprocd.sock");
        let mut cmd = Command::new(coprocd_bin());
        cmd.arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(&socket)
            .env("COPROC_LOG", "warn")
            .stdout(Stdio::null());
        adjust(&mut cmd);
        let child = cmd.spawn().unwrap();
        let d = Daemon { child, dir, socket };
        wait_for("the daemon", || Client::connect_to(&d.socket).is_ok());
        d
    }

    /// A new session.
    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).unwrap()
    }

    /// `coproc --socket S ARGS`.
    pub fn coproc(&self, args: &[&str]) -> Command {
        let mut c = Command::new(coproc_bin());
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Run `coproc ARGS`: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.coproc(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Whether the daemon still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Its resident memory in KiB apart from the engine's translated-code
    /// cache (Unicorn's anonymous read-write-execute code buffer, which
    /// fills as new code is translated until the engine flushes it: not
    /// memory a client can leave behind).
    pub fn rss_kib_without_jit(&self) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap();
        let mut total = 0;
        let mut jit = false;
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            let first = f.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                // A mapping's header: range, perms, offset, dev, inode, [path].
                let perms = f.next().unwrap_or("");
                let path = f.nth(3);
                jit = perms.contains('x') && path.is_none();
            } else if first == "Rss:" && !jit {
                total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        total
    }

    /// Open descriptors of the daemon (every mapping and queue holds some).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Threads of the daemon whose name starts with `prefix`.
    pub fn threads_named(&self, prefix: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with(prefix))
            .count()
    }

    /// Run test `test` of the calling test binary as uid and gid 65534
    /// against this daemon (a copy of the binary in the daemon's directory,
    /// which that uid can execute), with `env` set; it is expected to pass.
    pub fn run_test_as_nobody(&self, test: &str, env: &[(&str, String)]) {
        use std::os::unix::process::CommandExt;
        let me = self.dir.join(format!("as-nobody-{test}"));
        copy_executable(&std::env::current_exe().unwrap(), &me);
        let out = Command::new(&me)
            .args(["--exact", test, "--ignored", "--nocapture"])
            .env("COPROC_TEST_SOCKET", &self.socket)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{test} as uid 65534: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Domain memory (memfds) mapped into the daemon.
    pub fn memfd_maps(&self) -> usize {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.child.id())).unwrap();
        maps.lines().filter(|l| l.contains("/memfd:")).count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this test, which needs root, runs: it does as root; otherwise it
/// fails loudly, unless `COPROC_SKIP_ROOT_TESTS=1` says to skip it (then
/// false, with a line saying so).
pub fn need_root(what: &str) -> bool {
    if rustix::process::getuid().is_root() {
        return true;
    }
    if std::env::var("COPROC_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped (COPROC_SKIP_ROOT_TESTS=1): needs root to {what}");
        return false;
    }
    panic!("this test needs root to {what}; run it as root (the README's test command does), or set COPROC_SKIP_ROOT_TESTS=1 to skip it");
}

/// Copy an executable to `to`, for running it as another uid. The copy is
/// written by a `cp` process, not by this one: a descriptor open for
/// writing in this (multithreaded) process could be inherited by a child
/// another test forks meanwhile, and exec of the copy would then fail with
/// "text file busy" until that child execs.
pub fn copy_executable(from: &std::path::Path, to: &std::path::Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// The socket a test run by [`Daemon::run_test_as_nobody`] talks to.
pub fn test_socket() -> PathBuf {
    std::env::var_os("COPROC_TEST_SOCKET")
        .expect("COPROC_TEST_SOCKET: run by Daemon::run_test_as_nobody")
        .into()
}

/// Poll `cond` until it holds (at most 60 s).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One mcu pcoproc `mcu0` under `rr` with 1 ms slices, usable by every uid
/// (8 vcoprocs, 16 MiB mapped).
pub const MCU_RR: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"
policy = "rr"
policy_params = { slice_us = "1000" }

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 8
max_mapped_bytes = 16777216
"#;
