//! In-process GPU domains for the tests: a vcoproc on a `vulkan` pcoproc,
//! its queue in domain memory, buffers mapped at fixed iovas.

// Casts of values the tests themselves chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![allow(dead_code)]

use coproc_core::ids::DomainId;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::SchedParams;
use coproc_core::{Pcoproc, VcoprocHandle};
use coproc_proto::gpu::{Job, JobDone};
use coproc_proto::queue::{self, Cqe, Producer};
use coproc_vulkan::{factory, VulkanConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the queue lives in every test vcoproc.
pub const QUEUE_IOVA: u64 = 0x1000_0000;
/// Where test buffers start.
pub const BUF_IOVA: u64 = 0x2000_0000;

/// The queue memory seen by the domain.
pub use coproc_firmware::drive::RegionQueue as RegionMem;

/// A vulkan pcoproc with round robin (or the given policy).
pub fn pcoproc(cfg: VulkanConfig) -> Arc<Pcoproc> {
    let policy = coproc_core::policy::build("rr", &[]).unwrap();
    Pcoproc::spawn("gpu0", factory(cfg), policy).expect("vulkan device (lavapipe installed?)")
}

/// One domain's vcoproc with a queue.
pub struct Domain {
    pub v: VcoprocHandle,
    pub qmem: RegionMem,
    pub ring: Producer,
    tag: u32,
}

impl Domain {
    /// Create, load `firmware`, attach a 64-entry queue, start.
    pub fn new(pc: &Arc<Pcoproc>, domain: u32, firmware: &[u8]) -> Domain {
        Self::with_poll(pc, domain, firmware, 0)
    }

    /// The same with a busy-poll budget of `poll_us` on the queue.
    pub fn with_poll(pc: &Arc<Pcoproc>, domain: u32, firmware: &[u8], poll_us: u32) -> Domain {
        let v = pc
            .create_vcoproc(DomainId(domain), SchedParams::default())
            .unwrap();
        v.load_firmware("gpu", firmware).unwrap();
        let len = queue::bytes_for(64).unwrap().div_ceil(4096) * 4096;
        let region = Arc::new(Region::new_memfd(len).unwrap());
        let qmem = RegionMem(region.clone());
        let ring = Producer::init_with(&qmem, 64, poll_us).unwrap();
        v.map(&region, 0, QUEUE_IOVA, len, Perms::RW, MapKind::Pinned)
            .unwrap();
        v.mbox_write(0, QUEUE_IOVA as u32);
        v.start().unwrap();
        Domain {
            v,
            qmem,
            ring,
            tag: 1,
        }
    }

    /// Map `len` bytes of fresh domain memory at `iova`.
    pub fn buffer(&self, iova: u64, len: u64, perms: Perms, kind: MapKind) -> Arc<Region> {
        let len = len.div_ceil(4096).max(1) * 4096;
        let r = Arc::new(Region::new_memfd(len).unwrap());
        self.v.map(&r, 0, iova, len, perms, kind).unwrap();
        r
    }

    /// Queue a job without ringing the doorbell (it fits the ring).
    pub fn submit_quietly(&mut self, job: &Job) {
        for s in job.sqes(self.tag) {
            assert!(self.ring.submit(&self.qmem, &s), "ring full");
        }
        self.tag = self.tag.wrapping_add(job.commands().len() as u32);
    }

    /// Queue a job and ring the doorbell.
    pub fn submit(&mut self, job: &Job) {
        for s in job.sqes(self.tag) {
            let t0 = Instant::now();
            while !self.ring.submit(&self.qmem, &s) {
                self.v.doorbell();
                assert!(t0.elapsed() < Duration::from_secs(30), "ring stayed full");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.tag = self.tag.wrapping_add(job.commands().len() as u32);
        self.v.doorbell();
    }

    /// Wait for the next completion.
    pub fn next(&mut self, timeout: Duration) -> Option<Cqe> {
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.ring.complete(&self.qmem) {
                return Some(c);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            let seq = self.v.last_notify().seq;
            if let Some(c) = self.ring.complete(&self.qmem) {
                return Some(c);
            }
            let _ = self.v.wait_notify(seq, Duration::from_millis(20));
        }
    }

    /// Run a job and return every completion up to its signal's.
    pub fn run(&mut self, job: &Job) -> Vec<JobDone> {
        self.submit(job);
        let mut out = Vec::new();
        loop {
            let c = self
                .next(Duration::from_secs(60))
                .expect("job did not complete");
            let d = JobDone::from_cqe(&c);
            let signal = c.tag == self.tag.wrapping_sub(1);
            out.push(d);
            if signal {
                return out;
            }
        }
    }
}

/// f32s as bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// u32s as bytes.
pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Read n f32s.
pub fn read_f32(r: &Region, off: u64, n: usize) -> Vec<f32> {
    r.read_vec(off, 4 * n as u64)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Read n u32s.
pub fn read_u32(r: &Region, off: u64, n: usize) -> Vec<u32> {
    r.read_vec(off, 4 * n as u64)
        .unwrap()
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
