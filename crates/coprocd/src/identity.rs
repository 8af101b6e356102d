//! Who a connecting peer is: its uid and gid (`SO_PEERCRED`, already mapped
//! into the daemon's user namespace, so a container's uids are host uids),
//! and its container, from its cgroup at connect time, read race-free.
//!
//! The cgroup is read from `/proc/<pid>/cgroup` of the pid `SO_PEERCRED`
//! gives, which could name another process if the peer had exited and its
//! pid been reused. So the daemon first takes a pidfd of the peer
//! (`SO_PEERPIDFD`, Linux 6.5: the very process that connected; older
//! kernels: `pidfd_open(pid)`), reads `/proc/<pid>/cgroup` (and the
//! supplementary groups in `/proc/<pid>/status`), then checks that the
//! pidfd's process is still alive: a live process holds its pid, so what was
//! read was that process's. A peer that exited before the check is refused.
//!
//! A cgroup path makes a container when one of the container patterns
//! matches it or one of its ancestors (the shortest such prefix is the
//! container: a container's own sub-cgroups are the same container). The
//! patterns are `[daemon] container_cgroups` and every `[[domain]] cgroup`.
//!
//! The domain of a peer is the pair (uid, container); [`Registry`] gives
//! each pair its number (the core's `DomainId`, the wire's `domain`): the
//! uid itself outside containers, so nothing changes for them.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// `SO_PEERCRED` failed.
    #[error("no peer credentials: {0}")]
    Credentials(std::io::Error),
    /// The peer's pid is not visible here (another pid namespace).
    #[error("the peer's pid is not visible in the daemon's pid namespace")]
    NoPid,
    /// No pidfd for the peer.
    #[error("no pidfd for pid {0}: {1}")]
    Pidfd(i32, std::io::Error),
    /// Its `/proc/<pid>/{cgroup,status}` could not be read.
    #[error("cannot read /proc/{0}/{1}: {2}")]
    Proc(i32, &'static str, std::io::Error),
    /// It exited before it could be identified.
    #[error("pid {0} exited before it could be identified")]
    Gone(i32),
    /// The daemon cannot find a cgroup's directory (to see who owns it).
    #[error("cannot find cgroup {0} in the daemon's mounts")]
    NoCgroupDir(String),
    /// A host uid at or above 2^31 that a container domain already numbers.
    #[error("uid {0} collides with a container domain's number")]
    Collision(u32),
    /// Every container domain number has been given out.
    #[error("no container domain numbers left")]
    Exhausted,
}

impl IdentityError {
    /// Whether it failed for want of a descriptor (the daemon's or the
    /// system's limit): worth trying again once some are free.
    pub fn out_of_descriptors(&self) -> bool {
        let (IdentityError::Pidfd(_, io) | IdentityError::Proc(_, _, io)) = self else {
            return false;
        };
        matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
}

/// What the daemon knows of a peer at accept time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Uid (host).
    pub uid: u32,
    /// Primary gid (host).
    pub gid: u32,
    /// Pid (in the daemon's pid namespace).
    pub pid: i32,
    /// Supplementary groups (read only when asked for: `admin_gid`).
    pub groups: Vec<u32>,
    /// Its cgroup path (see [`cgroup_of`]).
    pub cgroup: String,
    /// The hierarchy that path is in.
    pub hierarchy: Hierarchy,
}

/// `SO_PEERPIDFD` (Linux 6.5), as `<asm-generic/socket.h>` numbers it.
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd of the process that connected `sock` (`SO_PEERPIDFD`), or
/// `None` where the kernel does not know the option.
fn peer_pidfd(sock: impl AsFd) -> Option<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes (the size of a c_int)
    // into `fd`, which lives for the call, and `len` into `len`; the socket
    // descriptor is borrowed for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::addr_of_mut!(fd).cast(),
            &raw mut len,
        )
    };
    if r != 0 || fd < 0 {
        return None;
    }
    // SAFETY: the kernel just created `fd` for this process (getsockopt
    // returned 0 and a descriptor); nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable
/// then).
fn exited(pidfd: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        // Cannot tell: count it as gone (the peer is refused, not misread).
        Err(_) => true,
    }
}

/// A cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2.
    Unified,
    /// A v1 hierarchy, by the option that names it (`name=systemd`, `pids`).
    V1(String),
}

/// The cgroup that identifies a process, from the text of its
/// `/proc/<pid>/cgroup`: the unified (`0::`) line when it is not the root,
/// else the named `name=systemd` hierarchy's, else `pids`', else
/// `memory`'s, else `/` (a v1/v2 hybrid puts containers in the v1
/// hierarchies and may leave the unified one at the root).
pub fn cgroup_of(text: &str) -> (Hierarchy, String) {
    let mut lines: Vec<(&str, &str)> = Vec::new();
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        lines.push((ctrl, path));
    }
    if let Some((_, p)) = lines.iter().find(|(c, p)| c.is_empty() && *p != "/") {
        return (Hierarchy::Unified, (*p).to_string());
    }
    for want in ["name=systemd", "pids", "memory"] {
        if let Some((_, p)) = lines
            .iter()
            .find(|(c, p)| c.split(',').any(|x| x == want) && *p != "/")
        {
            return (Hierarchy::V1(want.to_string()), (*p).to_string());
        }
    }
    (Hierarchy::Unified, "/".to_string())
}

/// The path of [`cgroup_of`].
pub fn cgroup_path(text: &str) -> String {
    cgroup_of(text).1
}

/// Who owns the directory of cgroup `path` of hierarchy `h`, found through
/// the daemon's mounts (`/proc/self/mountinfo`). A container's cgroup made
/// by root is root's; one in a subtree delegated to a user (systemd's
/// `user@.service`, rootless podman) is that user's, who could make any
/// number of them.
pub fn cgroup_owner(h: &Hierarchy, path: &str) -> Result<u32, IdentityError> {
    let gone = || IdentityError::NoCgroupDir(path.to_string());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| gone())?;
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let ours = match h {
            Hierarchy::Unified => r[0] == "cgroup2",
            Hierarchy::V1(opt) => r[0] == "cgroup" && r[2].split(',').any(|o| o == opt),
        };
        if !ours {
            continue;
        }
        // The mount shows its hierarchy from `root` down.
        let (root, at) = (l[3], l[4]);
        let rel = if root == "/" {
            path
        } else if let Some(rest) = path.strip_prefix(root) {
            rest
        } else {
            continue;
        };
        if let Ok(st) = rustix::fs::stat(format!("{at}{rel}")) {
            return Ok(st.st_uid);
        }
    }
    Err(gone())
}

/// Identify the peer of `sock` (a freshly accepted connection), with its
/// supplementary groups if `groups` (they take a read of
/// `/proc/<pid>/status`, the larger part of the cost).
pub fn identify(sock: &tokio::net::UnixStream, groups: bool) -> Result<Peer, IdentityError> {
    let cred = sock.peer_cred().map_err(IdentityError::Credentials)?;
    let pid = match cred.pid() {
        Some(p) if p > 0 => p,
        _ => return Err(IdentityError::NoPid),
    };
    let pidfd = if let Some(fd) = peer_pidfd(sock) {
        fd
    } else {
        // Before Linux 6.5: the pid's process now (see the module's doc).
        let p = rustix::process::Pid::from_raw(pid).ok_or(IdentityError::NoPid)?;
        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            .map_err(|e| IdentityError::Pidfd(pid, e.into()))?
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| IdentityError::Proc(pid, "cgroup", e))?;
    let groups = if groups {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| IdentityError::Proc(pid, "status", e))?
            .lines()
            .find(|l| l.starts_with("Groups:"))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let (hierarchy, cgroup) = cgroup_of(&text);
    // Still alive, so still holding `pid`: what was read was its own.
    if exited(&pidfd) {
        return Err(IdentityError::Gone(pid));
    }
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        groups,
        cgroup,
        hierarchy,
    })
}

/// Whether glob `pat` matches all of `s`: `*` matches any run of characters
/// but `/`, `**` any run including `/`, `?` one character but `/`; all
/// else matches itself. Memoised over (pattern position, text position),
/// so no pattern takes exponential time on a path a container chose.
pub fn glob_match(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8], i: usize, j: usize, memo: &mut [Option<bool>]) -> bool {
        let k = i * (s.len() + 1) + j;
        if let Some(v) = memo[k] {
            return v;
        }
        let v = match p.get(i) {
            None => j == s.len(),
            Some(b'*') if p.get(i + 1) == Some(&b'*') => {
                (j..=s.len()).any(|x| go(p, s, i + 2, x, memo))
            }
            Some(b'*') => {
                let run = s[j..]
                    .iter()
                    .position(|&c| c == b'/')
                    .map_or(s.len(), |r| j + r);
                (j..=run).any(|x| go(p, s, i + 1, x, memo))
            }
            Some(b'?') => s.get(j).is_some_and(|&c| c != b'/') && go(p, s, i + 1, j + 1, memo),
            Some(&c) => s.get(j) == Some(&c) && go(p, s, i + 1, j + 1, memo),
        };
        memo[k] = Some(v);
        v
    }
    let (p, s) = (pat.as_bytes(), s.as_bytes());
    let mut memo = vec![None; (p.len() + 1) * (s.len() + 1)];
    go(p, s, 0, 0, &mut memo)
}

/// The container of cgroup `path`: its shortest prefix (whole components)
/// that a pattern matches, or none.
pub fn container_of<'a>(
    path: &str,
    patterns: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<String> {
    let ends = path
        .char_indices()
        .skip(1)
        .filter(|&(_, c)| c == '/')
        .map(|(i, _)| i)
        .chain(std::iter::once(path.len()));
    for end in ends {
        let prefix = &path[..end];
        if patterns.clone().into_iter().any(|p| glob_match(p, prefix)) {
            return Some(prefix.to_string());
        }
    }
    None
}

/// Container domains are numbered from here up (host uids below 2^31 are
/// their own domain numbers and never collide).
pub const FIRST_CONTAINER_DOMAIN: u32 = 0x8000_0000;

/// Container domains remembered at most before those no longer in use are
/// forgotten (their numbers are not reused).
const REMEMBERED: usize = 65_536;

/// The numbers of domains: (uid, container) → domain number. Host peers'
/// number is their uid; each (uid, container) pair gets the next free
/// number at or above [`FIRST_CONTAINER_DOMAIN`], kept for the daemon's
/// life (fault records and usage stay with it across reconnects), never
/// reused.
#[derive(Debug, Default)]
pub struct Registry {
    containers: HashMap<(u32, String), u32>,
    /// Back: number → (uid, container).
    by_number: HashMap<u32, (u32, String)>,
    /// Host uids at or above 2^31 seen (container numbers skip them).
    high_hosts: BTreeSet<u32>,
    /// The next number to try (0: [`FIRST_CONTAINER_DOMAIN`]).
    next: u64,
}

impl Registry {
    /// Whether it remembers as many container domains as it may: the next
    /// new one makes it forget those not `live` (see [`Registry::number`]).
    pub fn full(&self) -> bool {
        self.containers.len() >= REMEMBERED
    }

    /// The domain number of `uid` in `container`. When the registry is
    /// [`full`](Registry::full), the container domains whose numbers are
    /// not in `live` (none given: none are forgotten this time) are
    /// forgotten first; their numbers are not given out again.
    pub fn number(
        &mut self,
        uid: u32,
        container: Option<&str>,
        live: Option<&std::collections::HashSet<u32>>,
    ) -> Result<u32, IdentityError> {
        let Some(c) = container else {
            if uid >= FIRST_CONTAINER_DOMAIN {
                if self.by_number.contains_key(&uid) {
                    return Err(IdentityError::Collision(uid));
                }
                self.high_hosts.insert(uid);
            }
            return Ok(uid);
        };
        if let Some(&n) = self.containers.get(&(uid, c.to_string())) {
            return Ok(n);
        }
        if let (true, Some(live)) = (self.full(), live) {
            self.by_number.retain(|n, _| live.contains(n));
            let by = &self.by_number;
            self.containers.retain(|_, n| by.contains_key(n));
        }
        let mut n = self.next.max(u64::from(FIRST_CONTAINER_DOMAIN));
        let n = loop {
            let k = u32::try_from(n).map_err(|_| IdentityError::Exhausted)?;
            if !self.high_hosts.contains(&k) {
                break k;
            }
            n += 1;
        };
        self.next = u64::from(n) + 1;
        self.containers.insert((uid, c.to_string()), n);
        self.by_number.insert(n, (uid, c.to_string()));
        Ok(n)
    }

    /// The container of domain `number`, if it is a container domain.
    pub fn container(&self, number: u32) -> Option<&str> {
        self.by_number.get(&number).map(|(_, c)| c.as_str())
    }

    /// The uid of domain `number`.
    pub fn uid(&self, number: u32) -> u32 {
        self.by_number.get(&number).map_or(number, |(u, _)| *u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_of_every_layout() {
        // cgroup v2 only.
        assert_eq!(
            cgroup_path("0::/machine.slice/libpod-ab12.scope/container\n"),
            "/machine.slice/libpod-ab12.scope/container"
        );
        // Hybrid, the unified hierarchy at the root: the named systemd one.
        let hybrid = "10:hugetlb:/\n9:name=systemd:/libpod_parent/libpod-c5\n\
                      8:pids:/libpod_parent/libpod-c5\n4:memory:/x\n0::/\n";
        assert_eq!(cgroup_path(hybrid), "/libpod_parent/libpod-c5");
        // Only pids, then memory.
        assert_eq!(cgroup_path("8:pids:/p\n4:memory:/m\n0::/\n"), "/p");
        assert_eq!(cgroup_path("4:memory:/m\n0::/\n"), "/m");
        assert_eq!(cgroup_path("1:cpu,cpuacct:/\n0::/\n"), "/");
        assert_eq!(cgroup_path(""), "/");
        // A path with ':' in it survives.
        assert_eq!(cgroup_path("0::/a:b\n"), "/a:b");
        assert_eq!(cgroup_of(hybrid).0, Hierarchy::V1("name=systemd".into()));
        assert_eq!(cgroup_of("0::/x\n").0, Hierarchy::Unified);
    }

    #[test]
    fn the_owner_of_our_own_cgroup_is_found() {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let (h, path) = cgroup_of(&text);
        // Where cgroups are mounted at all (not in every build sandbox).
        if let Ok(owner) = cgroup_owner(&h, &path) {
            let me = rustix::process::geteuid().as_raw();
            assert!(owner == 0 || owner == me, "{owner}");
        }
        assert!(cgroup_owner(&Hierarchy::Unified, "/no/such/cgroup/here").is_err());
    }

    #[test]
    fn a_pidfd_tells_a_live_peer_from_one_that_exited() {
        // `cat` waits on its stdin until we close it.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        assert!(!exited(&fd));
        drop(child.stdin.take());
        child.wait().unwrap();
        // Reaped: its pid may be anyone's now, the pidfd still knows.
        assert!(exited(&fd));
    }

    #[test]
    fn so_peerpidfd_names_the_connecting_process() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Linux 6.5 and later; before, identify falls back to pidfd_open.
        let Some(fd) = peer_pidfd(&a) else {
            eprintln!("no SO_PEERPIDFD on this kernel");
            return;
        };
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .map(str::trim)
            .unwrap();
        assert_eq!(pid, std::process::id().to_string(), "{info}");
        assert!(!exited(&fd));
    }

    #[test]
    fn globs() {
        assert!(glob_match("**/libpod-*", "/machine.slice/libpod-ab.scope"));
        assert!(glob_match("**/libpod-*", "/libpod_parent/libpod-ab"));
        assert!(!glob_match("**/libpod-*", "/libpod_parent"));
        assert!(!glob_match("/a/*", "/a/b/c"));
        assert!(glob_match("/a/**", "/a/b/c"));
        assert!(glob_match("/a/?", "/a/b"));
        assert!(!glob_match("/a/?", "/a/bc"));
        assert!(glob_match("/exact", "/exact"));
        assert!(!glob_match("/exact", "/exact2"));
        assert!(glob_match("/a*b*c", "/aXbYc"));
        assert!(!glob_match("/a*b*c", "/aXb/c"));
        // Many stars against a long path that almost matches: memoised, it
        // answers (without the memo this would backtrack ~200^9 times).
        let long = format!("/{}", "a".repeat(200));
        assert!(!glob_match("**a**a**a**a**a**a**a**a**b", &long));
        assert!(glob_match("**a**a**a**a**a**a**a**a**", &long));
    }

    #[test]
    fn the_shortest_matching_prefix_is_the_container() {
        let pats = ["**/libpod-*", "/kubepods*/**"];
        assert_eq!(
            container_of("/machine.slice/libpod-ab.scope/container", pats).as_deref(),
            Some("/machine.slice/libpod-ab.scope")
        );
        assert_eq!(
            container_of("/kubepods.slice/pod1/c", pats).as_deref(),
            Some("/kubepods.slice/pod1")
        );
        assert_eq!(container_of("/user.slice/user-1000.slice", pats), None);
        assert_eq!(container_of("/", pats), None);
    }

    #[test]
    fn a_full_registry_forgets_only_unused_domains_and_reuses_no_number() {
        let mut r = Registry::default();
        let first = r.number(0, Some("/c/0"), None).unwrap();
        let mut last = first;
        for i in 1..REMEMBERED {
            last = r.number(0, Some(&format!("/c/{i}")), None).unwrap();
        }
        assert!(r.full());
        // Nothing said to be in use: nothing forgotten, the registry grows.
        let extra = r.number(0, Some("/c/extra"), None).unwrap();
        assert_eq!(r.container(first), Some("/c/0"));
        // Only `first` in use: the rest are forgotten; no number comes back.
        let live = std::collections::HashSet::from([first]);
        let new = r.number(0, Some("/c/new"), Some(&live)).unwrap();
        assert!(new > extra && extra > last);
        assert_eq!(r.container(first), Some("/c/0"));
        assert_eq!(r.container(last), None);
        assert_eq!(r.number(0, Some("/c/0"), Some(&live)).unwrap(), first);
        assert!(!r.full());
    }

    #[test]
    fn registry_numbers_pairs_and_keeps_hosts_as_uids() {
        let mut r = Registry::default();
        assert_eq!(r.number(1000, None, None).unwrap(), 1000);
        let a = r.number(0, Some("/c/a"), None).unwrap();
        let b = r.number(0, Some("/c/b"), None).unwrap();
        let a1 = r.number(1000, Some("/c/a"), None).unwrap();
        assert!(a >= FIRST_CONTAINER_DOMAIN && a != b && a != a1 && b != a1);
        assert_eq!(r.number(0, Some("/c/a"), None).unwrap(), a);
        assert_eq!(r.container(a), Some("/c/a"));
        assert_eq!(r.container(0), None);
        assert_eq!(r.uid(a1), 1000);
        // A high host uid is its own number and containers skip it.
        let high = a1 + 1;
        assert_eq!(r.number(high, None, None).unwrap(), high);
        let c = r.number(0, Some("/c/c"), None).unwrap();
        assert_ne!(c, high);
        // A host uid equal to a container's number is refused.
        assert!(r.number(a, None, None).is_err());
    }
}
