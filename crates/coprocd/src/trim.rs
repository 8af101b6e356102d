//! Giving freed memory back to the system. The allocator (glibc's malloc)
//! keeps what the daemon frees in per-thread arenas: a session that loaded
//! 4 MiB firmware images, mapped memory and ran contexts leaves its pages
//! resident after it ends, in whichever arena served it, and the daemon's
//! RSS then says little about what it holds. So once a session has ended
//! (its vcoprocs destroyed, its buffers freed) the trimmer thread asks the
//! allocator to return free pages (`malloc_trim`), at most once a second;
//! releases in between merge into one trim after it. The thread is the
//! process's own, started once; nothing that serves a domain ever waits
//! for it.
//!
//! glibc also gives each thread that allocates while others do an arena of
//! its own, up to eight per CPU; each keeps some megabytes resident that a
//! trim cannot return (pages with live objects between free ones). The
//! daemon's threads (tokio workers and blocking threads, one completion
//! writer per queue-bearing vcoproc, runners) do little allocation, so
//! [`limit_arenas`] caps them at [`ARENAS`] at start: `coproc bench soak`
//! measured eight arenas of about 5.5 MiB each after 4 000 cycles without
//! the cap, one of 6.5 MiB with it.
//!
//! glibc serves large allocations (128 KiB and up at first) with `mmap`,
//! and gives them back on free, but it raises that threshold to the size
//! of each such block freed (up to 32 MiB): after the first 4 MiB firmware
//! upload, every later upload buffer, staged image and decode buffer came
//! from the arena and stayed resident between holes. [`limit_arenas`]
//! fixes the threshold at [`MMAP_THRESHOLD`], which turns that adjustment
//! off: `coproc bench soak --cycles 5000` measured 9 236 KiB of growth
//! outside the translation cache with the adjustment, 4 488 KiB without.
//!
//! Last, each thread's cache of freed small blocks (glibc's tcache, up to
//! seven blocks of each size up to 1 KiB per thread) keeps those blocks
//! out of a trim's reach, and with them every page they lie in: the few
//! kilobytes of blocks each long-lived thread holds, spread over the heap,
//! kept 1.5–2 MiB resident after a few thousand sessions (`coproc bench
//! soak --cycles 3000`: 1 664 KiB of growth with the caches, 100 KiB
//! without). glibc reads that setting only at start, from the
//! `GLIBC_TUNABLES` environment variable, so [`without_thread_caches`]
//! executes the daemon again with `glibc.malloc.tcache_count=0` added,
//! unless the variable already sets it (an administrator's choice is
//! kept).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

/// Most malloc arenas (glibc's `M_ARENA_MAX`).
pub const ARENAS: i32 = 2;

/// Allocations this large or larger are mapped on their own and unmapped
/// when freed (glibc's `M_MMAP_THRESHOLD`; setting it keeps it fixed).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Cap the allocator's arenas at [`ARENAS`] and fix its mmap threshold at
/// [`MMAP_THRESHOLD`]: called first thing in `main`, before any thread
/// exists. A no-op off glibc.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes no pointer; called before other threads
    // exist, and it is thread-safe besides.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// The glibc tunable that sizes the per-thread caches.
const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// The environment variable glibc reads its tunables from.
const TUNABLES: &str = "GLIBC_TUNABLES";

/// The value of [`TUNABLES`] that turns the per-thread caches off, given
/// its value now; `None` when that already sets their size.
fn tunables_without_caches(current: Option<&std::ffi::OsStr>) -> Option<std::ffi::OsString> {
    let current = current.unwrap_or_default();
    if current.to_string_lossy().contains(TCACHE_TUNABLE) {
        return None;
    }
    let mut value = current.to_os_string();
    if !value.is_empty() {
        value.push(":");
    }
    value.push(format!("{TCACHE_TUNABLE}=0"));
    Some(value)
}

/// Make sure the process runs with glibc's per-thread caches off: when
/// `GLIBC_TUNABLES` does not size them already, execute this program
/// again (`/proc/self/exe`: the same process id, arguments and open
/// descriptors, socket activation's included) with
/// `glibc.malloc.tcache_count=0` added to it. Called first thing in
/// `main`, before any thread exists; returns where the exec fails (no
/// `/proc`), and the daemon then runs with the caches, which costs
/// memory, not correctness. A no-op off glibc.
pub fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let Some(value) = tunables_without_caches(std::env::var_os(TUNABLES).as_deref()) else {
            return;
        };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(argv0) = args.next() {
            cmd.arg0(argv0);
        }
        let e = cmd.args(args).env(TUNABLES, value).exec();
        // A closed stderr loses the message, never turns it into a panic.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "coprocd: running with malloc's thread caches: cannot execute /proc/self/exe: {e}"
        );
    }
}

/// At most one trim per this long.
const EVERY: Duration = Duration::from_secs(1);

static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();

/// Start the trimmer thread (once per process; later calls do nothing).
pub fn start() {
    TRIMMER.get_or_init(|| {
        let (tx, rx) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("trim".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    trim();
                    // The rate limit: a release meanwhile waits in the
                    // channel (one slot: they merge) for the next trim.
                    std::thread::sleep(EVERY);
                }
            })
            .ok()
            .map(|_| tx)
    });
}

/// Memory was released (a session ended): trim soon. Never blocks.
pub fn released() {
    if let Some(Some(tx)) = TRIMMER.get() {
        let _ = tx.try_send(());
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes no pointer and is thread-safe (it takes
    // each arena's lock in turn); 0 keeps no padding at the heap's top.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_thread_caches_are_turned_off_once_and_other_tunables_kept() {
        assert_eq!(
            tunables_without_caches(None).unwrap(),
            "glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            tunables_without_caches(Some(OsStr::new(""))).unwrap(),
            "glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            tunables_without_caches(Some(OsStr::new("glibc.malloc.check=3"))).unwrap(),
            "glibc.malloc.check=3:glibc.malloc.tcache_count=0"
        );
        // Set already (by an administrator, or by the exec before): kept.
        for set in [
            "glibc.malloc.tcache_count=0",
            "glibc.malloc.tcache_count=7",
            "glibc.malloc.check=3:glibc.malloc.tcache_count=2",
        ] {
            assert_eq!(tunables_without_caches(Some(OsStr::new(set))), None);
        }
    }
}
