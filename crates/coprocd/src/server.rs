//! The Unix socket server: accept, identify the peer (SO_PEERCRED), serve
//! each connection as a session; on SIGTERM/SIGINT stop accepting, end the
//! sessions (their vcoprocs and mappings are released), stop the pcoprocs,
//! remove the socket.

use crate::daemon::Daemon;
use coproc_proto::Identity;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Whether `uid`/`gid` (process `pid`) is an administrator.
fn is_admin(uid: u32, gid: u32, pid: i32, admin_gid: Option<u32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(admin) = admin_gid else { return false };
    if gid == admin {
        return true;
    }
    // Supplementary groups of the peer process.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Groups:"))
                .map(|l| l.split_whitespace().skip(1).any(|g| g.parse() == Ok(admin)))
        })
        .unwrap_or(false)
}

/// Bind the socket (removing a stale one), world-connectable: who may do
/// what is decided per peer credentials.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Run until SIGTERM or SIGINT.
pub async fn run(daemon: Arc<Daemon>, path: PathBuf) -> anyhow::Result<()> {
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), pcoprocs = daemon.pcoprocs.len(), "coprocd serving");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut sessions = tokio::task::JoinSet::new();
    let admin_gid = daemon.config.daemon.admin_gid;
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let cred = match stream.peer_cred() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "no peer credentials; connection dropped");
                        continue;
                    }
                };
                let pid = cred.pid().unwrap_or(0);
                let who = Identity {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid,
                    admin: is_admin(cred.uid(), cred.gid(), pid, admin_gid),
                };
                sessions.spawn(crate::session::serve(daemon.clone(), stream, who, stop_rx.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while sessions.join_next().await.is_some() {}
    tokio::task::block_in_place(|| daemon.shutdown());
    let _ = std::fs::remove_file(&path);
    Ok(())
}
