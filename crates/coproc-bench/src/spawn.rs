//! A private coprocd for the demo and the benchmarks: started from the
//! binary next to this one, on a socket in a fresh temporary directory,
//! stopped (SIGTERM) when dropped.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private daemon.
pub struct TempDaemon {
    child: Child,
    dir: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
}

impl TempDaemon {
    /// Start coprocd with `config` (TOML).
    pub fn start(config: &str) -> anyhow::Result<TempDaemon> {
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("coprocd");
        if !bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p coprocd`",
                bin.display()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "coproc-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("coprocd.toml");
        std::fs::write(&cfg, config)?;
        let socket = dir.join("coprocd.sock");
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&socket)
            .env(
                "COPROC_LOG",
                std::env::var("COPROC_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: between fork and exec the closure makes one system call
        // (prctl), which is async-signal-safe, and touches no memory of
        // the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                // A private daemon ends with whoever started it, even when
                // that one is killed before it can stop the daemon.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let d = TempDaemon { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while coproc_client::Client::connect_to(&d.socket).is_err() {
            if Instant::now() > deadline {
                bail!("coprocd did not come up on {}", d.socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `coproc` command talking to this daemon.
    pub fn coproc(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("--socket").arg(&self.socket);
        Ok(c)
    }
}

impl Drop for TempDaemon {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
