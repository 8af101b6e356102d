//! Finding the daemon: the sockets a client tries, in order
//! ([`socket_candidates`]), and [`Client::connect`], which tries them and,
//! when none answers, says what it tried and what to do.

use crate::{Client, ClientError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where the system daemon listens (root's default, and the unit's).
pub const SYSTEM_SOCKET: &str = "/run/coproc/coprocd.sock";

/// The sockets to try, in order: `$COPROC_SOCKET` alone when set; else,
/// for a user other than root with `XDG_RUNTIME_DIR` set, the per-user
/// daemon's `$XDG_RUNTIME_DIR/coproc/coprocd.sock` and then the system
/// daemon's [`SYSTEM_SOCKET`]; else [`SYSTEM_SOCKET`] alone.
pub fn socket_candidates() -> Vec<PathBuf> {
    candidates(
        std::env::var_os("COPROC_SOCKET").map(PathBuf::from),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        rustix::process::getuid().as_raw(),
    )
}

fn candidates(env: Option<PathBuf>, xdg: Option<PathBuf>, uid: u32) -> Vec<PathBuf> {
    if let Some(p) = env {
        return vec![p];
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    match xdg {
        Some(dir) if uid != 0 => vec![dir.join("coproc/coprocd.sock"), system],
        _ => vec![system],
    }
}

/// Why connecting to `path` failed, for the message.
fn why(path: &Path, e: &std::io::Error) -> String {
    let what = match e.kind() {
        ErrorKind::NotFound => "no such socket".to_string(),
        ErrorKind::ConnectionRefused => "nothing listens (a stale socket)".to_string(),
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    format!("{} ({what})", path.display())
}

/// Whether a failed connect means "no daemon there" (try the next).
fn absent(e: &ClientError) -> bool {
    matches!(e, ClientError::Connect { err, .. }
        if matches!(err.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused))
}

impl Client {
    /// Connect to the first of [`socket_candidates`] where a daemon
    /// answers, and say hello. When none does, the error names every path
    /// tried and why, and what to do.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// println!("domain {}", c.identity().uid);
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect() -> Result<Client, ClientError> {
        let paths = socket_candidates();
        let mut tried = Vec::new();
        for p in &paths {
            match Client::connect_to(p) {
                Err(e) if absent(&e) => {
                    if let ClientError::Connect { err, .. } = &e {
                        tried.push(why(p, err));
                    }
                }
                other => return other,
            }
        }
        let msg = format!(
            "no coprocd answers; tried {}. Start the daemon (`systemctl start coprocd`, or \
             `coprocd` for a per-user one), or name its socket with --socket or COPROC_SOCKET",
            tried.join(", ")
        );
        Err(ClientError::Connect {
            path: paths
                .first()
                .cloned()
                .unwrap_or_else(|| SYSTEM_SOCKET.into()),
            err: std::io::Error::new(ErrorKind::NotFound, msg),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_fall_back_to_the_system_socket() {
        let xdg = Some(PathBuf::from("/run/user/1000"));
        assert_eq!(
            candidates(None, xdg.clone(), 1000),
            [
                PathBuf::from("/run/user/1000/coproc/coprocd.sock"),
                PathBuf::from(SYSTEM_SOCKET)
            ]
        );
        assert_eq!(
            candidates(None, xdg.clone(), 0),
            [PathBuf::from(SYSTEM_SOCKET)]
        );
        assert_eq!(candidates(None, None, 1000), [PathBuf::from(SYSTEM_SOCKET)]);
        assert_eq!(
            candidates(Some("/tmp/x.sock".into()), xdg, 1000),
            [PathBuf::from("/tmp/x.sock")]
        );
    }
}
