//! `coproc bench --host-load N`: N threads of the benchmark's own process
//! spin on CPU work for the whole measurement, so a benchmark can be run on
//! a host whose CPUs are busy (the runner then waits for a CPU like any
//! other thread). Also the host's load average for the figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The spinning threads; they stop when this is dropped.
#[derive(Debug)]
pub(crate) struct HostLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HostLoad {
    /// Start `n` spinning threads (none for 0).
    pub(crate) fn start(n: usize) -> anyhow::Result<HostLoad> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = HostLoad {
            stop: stop.clone(),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("host-load-{i}"))
                .spawn(move || spin(&stop))?;
            load.threads.push(t);
        }
        Ok(load)
    }

    /// How many threads spin.
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// CPU work that the compiler cannot remove, until `stop` is set.
fn spin(stop: &AtomicBool) {
    let mut x = 1u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1024 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    std::hint::black_box(x);
}

impl Drop for HostLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The host's 1-minute load average (`/proc/loadavg`), if readable.
pub(crate) fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
