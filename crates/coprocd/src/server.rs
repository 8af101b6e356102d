//! The Unix socket server: accept, identify the peer (uid and container,
//! `crate::identity`), count the connection against its domain's limit, serve it as a session; on
//! SIGTERM/SIGINT stop accepting, remove the socket, end the sessions (their
//! vcoprocs and mappings are released), stop the pcoprocs.
//!
//! Under systemd the listening socket may come from the socket unit
//! (socket activation: `LISTEN_FDS`/`LISTEN_PID`, fd 3); the daemon then
//! serves it as it is and leaves it to systemd at exit. Readiness and
//! shutdown are reported with `sd_notify` (nothing happens outside
//! systemd).

use crate::daemon::Daemon;
use coproc_core::ratelimit::RateLimit;
use coproc_proto::{ServerFrame, WireError};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Back-off after a failed `accept` (at the descriptor limit, say): the
/// first pause, doubled while failures go on, up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How long shutdown waits for sessions to end before it stops the
/// pcoprocs under those that have not (their vcoprocs go with them).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bind the socket, world-connectable: who may do what is decided per peer
/// credentials. A stale socket (nothing answers) is replaced; anything else
/// at the path is left alone and refused.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => anyhow::bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("{} is in use by a running daemon", path.display());
            }
            std::fs::remove_file(path)?;
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// The listening socket systemd passed (socket activation), if any: the
/// first descriptor of `LISTEN_FDS` when `LISTEN_PID` names this process.
/// It must be a listening Unix stream socket.
fn inherited() -> anyhow::Result<Option<std::os::unix::net::UnixListener>> {
    use std::os::fd::FromRawFd;
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd passed `fd` to this process (LISTEN_PID is ours) as
    // the first of LISTEN_FDS descriptors; nothing in this process has
    // taken it before (this runs once, before anything else opens files
    // we could confuse it with), so it is ours to own and close.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let kind = rustix::net::sockopt::socket_type(&owned)
        .map_err(|e| anyhow::anyhow!("socket activation: fd {fd} is not a socket: {e}"))?;
    let listening = rustix::net::sockopt::socket_acceptconn(&owned).unwrap_or(false);
    let unix = rustix::net::getsockname(&owned)
        .is_ok_and(|a| a.address_family() == rustix::net::AddressFamily::UNIX);
    if kind != rustix::net::SocketType::STREAM || !listening || !unix {
        anyhow::bail!("socket activation: fd {fd} is not a listening Unix stream socket");
    }
    let l = std::os::unix::net::UnixListener::from(owned);
    l.set_nonblocking(true)?;
    Ok(Some(l))
}

/// Refuse a connection with one error frame, written only if the socket
/// takes it at once (a refused peer never holds the accept loop).
fn refuse(stream: &tokio::net::UnixStream, e: WireError) {
    let reply = ServerFrame::Reply {
        id: 0,
        result: Err(e),
    };
    if let Ok(bytes) = coproc_proto::frame::encode(&reply) {
        let _ = stream.try_write(&bytes);
    }
}

/// Run until SIGTERM or SIGINT.
pub async fn run(daemon: Arc<Daemon>, path: PathBuf) -> anyhow::Result<()> {
    // The socket path is ours to remove at exit only if we bound it.
    let (listener, bound) = match inherited()? {
        Some(l) => (UnixListener::from_std(l)?, None),
        None => (bind(&path)?, Some(path.clone())),
    };
    let shown = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or(path);
    tracing::info!(
        socket = %shown.display(),
        activated = bound.is_none(),
        pcoprocs = daemon.pcoprocs.len(),
        "coprocd serving"
    );
    // Outside systemd there is no notification socket and this does nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let metrics = crate::metrics::Listeners::bind(&daemon).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = tokio::task::JoinSet::new();
    background.spawn(metrics.serve(daemon.clone(), stop_rx.clone()));
    background.spawn(sample_busy(daemon.clone(), stop_rx.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut sessions = tokio::task::JoinSet::new();
    let admin_gid = daemon.config.daemon.admin_gid;
    // One line per second at most about failing accepts or refused peers,
    // whoever causes them.
    let accept_log = RateLimit::new(1, 1);
    // The current back-off (zero while accepts succeed) and whether the
    // loop is in it.
    let mut pause = Duration::ZERO;
    let mut paused = false;
    // A connection accepted but not yet identified for want of a
    // descriptor (the pidfd, /proc): tried again after the pause.
    let mut pending: Option<tokio::net::UnixStream> = None;
    loop {
        let stream = tokio::select! {
            r = listener.accept(), if !paused => match r {
                Ok((s, _)) => {
                    pause = Duration::ZERO;
                    s
                }
                Err(e) => {
                    // Out of descriptors (or memory): retrying at once
                    // would spin. Pause, longer while it lasts.
                    if let Some(suppressed) = accept_log.check() {
                        tracing::warn!(error = %e, suppressed, "accept failed; backing off");
                    }
                    pause = (pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
                    paused = true;
                    continue;
                }
            },
            () = tokio::time::sleep(pause), if paused => {
                paused = false;
                match pending.take() {
                    Some(s) => s,
                    None => continue,
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        // Who it is, read race-free at connect time (uid, gid, cgroup:
        // crate::identity), and so its domain.
        let peer = match crate::identity::identify(&stream, admin_gid.is_some()) {
            Ok(p) => p,
            Err(e) if e.out_of_descriptors() => {
                // Like a failed accept: keep the connection, back off.
                if let Some(suppressed) = accept_log.check() {
                    tracing::warn!(error = %e, suppressed, "accept failed (identifying the peer); backing off");
                }
                pending = Some(stream);
                pause = (pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
                paused = true;
                continue;
            }
            Err(e) => {
                if let Some(suppressed) = accept_log.check() {
                    tracing::warn!(error = %e, suppressed, "peer not identified; connection refused");
                }
                refuse(
                    &stream,
                    WireError::new(coproc_proto::ErrorCode::PermissionDenied, e.to_string()),
                );
                continue;
            }
        };
        let who = match daemon.identity(&peer) {
            Ok(who) => who,
            Err(e) => {
                if let Some(suppressed) = accept_log.check() {
                    tracing::info!(uid = peer.uid, error = %e.message, suppressed, "connection refused");
                }
                refuse(&stream, e);
                continue;
            }
        };
        let slot = match daemon.admit(&who) {
            Ok(slot) => slot,
            Err(e) => {
                if let Some(suppressed) = accept_log.check() {
                    tracing::info!(uid = who.uid, container = who.container.as_deref(), error = %e.message, suppressed, "connection refused");
                }
                refuse(&stream, e);
                continue;
            }
        };
        sessions.spawn(crate::session::serve(
            daemon.clone(),
            stream,
            who,
            slot,
            stop_rx.clone(),
        ));
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // No new clients from here: they see no socket rather than hang (under
    // socket activation systemd keeps the socket and queues them for the
    // next start).
    drop(listener);
    if let Some(path) = bound {
        let _ = std::fs::remove_file(&path);
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "sessions still busy after {SHUTDOWN_GRACE:?}; stopping under them"
        );
        sessions.abort_all();
    }
    // The metrics server and the sampler end on `stop` (the metrics server
    // removes its socket file then); one stuck on a scraper is cut off
    // after a second, and its socket file removed here.
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        while background.join_next().await.is_some() {}
    })
    .await;
    if ended.is_err() {
        background.abort_all();
        while background.join_next().await.is_some() {}
        if let Some(path) = &daemon.config.daemon.metrics_socket {
            let _ = std::fs::remove_file(path);
        }
    }
    tokio::task::block_in_place(|| daemon.shutdown());
    Ok(())
}

/// Sample the pcoprocs' busy time every [`crate::metrics::SAMPLE_EVERY`]
/// (utilisation over the last 1 s and 10 s) and, while someone watches,
/// observe the vcoprocs for the event stream, until `stop`.
async fn sample_busy(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::metrics::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Both take the pcoprocs' locks briefly (no device work
                // is ever done under them), so they run on this task:
                // `block_in_place` every 100 ms would hand the worker's
                // place to a new thread each time, and the daemon's thread
                // count would never settle.
                daemon.busy.sample(&daemon);
                daemon.events.observe(&daemon);
            }
            _ = stop.changed() => break,
        }
    }
}
