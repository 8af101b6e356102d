//! The offender kinds `bench faults` added: a hog, a hang, corrupt
//! firmware and revokes mid-job on the mcu class; a GPU hog, a GPU hang
//! past the watchdog and a client killed mid-job on the vulkan class.

use super::{Ctx, ENTRIES, GPU, GPU_QUEUE, MCU};
use anyhow::bail;
use coproc_client::{Client, ClientError, Job, Queue, SharedMem, WireMapKind, WirePerms};
use coproc_firmware::gpu::SPIN;
use coproc_firmware::{reference, HOG, QECHO, SCRIBBLE};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the mcu hog offender reads its progress.
pub(crate) const SAMPLE: Duration = Duration::from_millis(10);
/// How long the hang offender waits for an answer that never comes.
pub(crate) const HANG: Duration = Duration::from_millis(100);
/// Longest one offender step may take.
pub(crate) const STEP: Duration = Duration::from_secs(30);
/// GPU spin jobs: invocations, output buffer, target length alone.
pub(crate) const SPIN_N: u32 = 8192;
pub(crate) const SPIN_OUT: u64 = 0x2000_0000;
pub(crate) const SPIN_JOB: Duration = Duration::from_millis(2);
/// The GPU hang offender's first job is this many times as long as a
/// victim job; it doubles until a job runs past the watchdog. It must end:
/// lavapipe cannot stop a running shader, so after the watchdog the old
/// device keeps computing it on the host's CPUs until it does (2^30
/// iterations per invocation left the victim without a completion for
/// 30 s).
pub(crate) const HANG_JOBS: u32 = 50;
/// How long the GPU hang offender waits for the watchdog's fault.
pub(crate) const HANG_WAIT: Duration = Duration::from_secs(5);
/// The GPU watchdog of the private daemon.
pub(crate) const WATCHDOG_MS: u64 = 250;

/// The GPU spin job on the output buffer at `out`.
pub(crate) fn spin_job(iters: u32, seed: u32, out: u64) -> Job {
    Job::new()
        .bind(0, out, 4 * u64::from(SPIN_N))
        .push_u32(0, &[iters, seed, SPIN_N])
        .dispatch(0, [SPIN_N.div_ceil(64), 1, 1])
        .signal(seed)
}

/// A session with a started spin vcoproc, its queue, and `bufs` output
/// buffers mapped one after the other from [`SPIN_OUT`].
pub(crate) fn spin_vcoproc(
    socket: &Path,
    bufs: usize,
) -> anyhow::Result<(Client, u32, Queue, Vec<SharedMem>)> {
    let mut c = Client::connect_to(socket)?;
    let v = c.open(GPU)?;
    c.load_firmware(v, SPIN.name, SPIN.image)?;
    let len = 4 * u64::from(SPIN_N);
    let mut outs = Vec::new();
    for i in 0..bufs {
        let m = SharedMem::new(len)?;
        c.map(
            v,
            &m,
            0,
            SPIN_OUT + i as u64 * len,
            len,
            WirePerms::Rw,
            WireMapKind::Pinned,
        )?;
        outs.push(m);
    }
    let q = c.create_queue(v, GPU_QUEUE, ENTRIES)?;
    c.gpu_attach(v, &q)?;
    c.start(v)?;
    Ok((c, v, q, outs))
}

/// Spin iterations that make one job take about [`SPIN_JOB`] alone (the
/// median of three), after a few jobs that compile and warm up.
pub(crate) fn calibrate(q: &mut Queue) -> anyhow::Result<u32> {
    let mut seed = 0u32;
    let mut one = |q: &mut Queue, iters: u32| -> anyhow::Result<f64> {
        seed += 1;
        let t = Instant::now();
        let tag = q.submit_job(&spin_job(iters, seed, SPIN_OUT))?;
        q.wait_job(tag, STEP)?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..5 {
        one(q, 64)?;
    }
    let mut iters = 64u32;
    while iters < 1 << 24 {
        let t = crate::figures::median(vec![one(q, iters)?, one(q, iters)?, one(q, iters)?]);
        if t >= SPIN_JOB.as_secs_f64() {
            break;
        }
        iters *= 2;
    }
    Ok(iters)
}

/// Corrupt mcu firmware: qecho truncated, with a bad magic, program
/// headers out of the file, a segment outside memory, a huge header count,
/// and bytes that are no ELF at all. The loader must refuse every one.
pub(crate) fn corrupt_elfs() -> Vec<Vec<u8>> {
    let src = QECHO.elf;
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let phoff = u32::from_le_bytes([src[0x1c], src[0x1d], src[0x1e], src[0x1f]]) as usize;
    let mut out = vec![src[..52].to_vec(), src[..src.len() / 2].to_vec()];
    let mut magic = src.to_vec();
    magic[1] = b'X';
    out.push(magic);
    let mut ph = src.to_vec();
    put32(&mut ph, 0x1c, src.len() as u32 - 8);
    out.push(ph);
    let mut seg = src.to_vec();
    put32(&mut seg, phoff + 8, 0xf000_0000);
    put32(&mut seg, phoff + 12, 0xf000_0000);
    out.push(seg);
    let mut big = src.to_vec();
    put32(&mut big, phoff + 16, 0x7fff_ffff);
    put32(&mut big, phoff + 20, 0x7fff_ffff);
    out.push(big);
    let mut num = src.to_vec();
    num[0x2c] = 0xff;
    num[0x2d] = 0xff;
    out.push(num);
    out.push(reference::TestRng::new(9).bytes(64 * 1024));
    out
}

/// Corrupt GPU firmware: WGSL that does not parse, WGSL whose entry point
/// is cut off, a SPIR-V header with garbage after it, random bytes.
pub(crate) fn corrupt_shaders() -> Vec<Vec<u8>> {
    let src = SPIN.image;
    let mut spirv = 0x0723_0203u32.to_le_bytes().to_vec();
    spirv.extend(reference::TestRng::new(3).bytes(4096));
    vec![
        b"@compute @workgroup_size(64) fn spin( {".to_vec(),
        src[..src.len() / 2].to_vec(),
        spirv,
        reference::TestRng::new(4).bytes(64 * 1024),
    ]
}

/// mcu `hog`: a well-behaved competitor, always runnable.
pub(crate) fn hog(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let mut c = Client::connect_to(&ctx.socket)?;
    let v = c.open(MCU)?;
    c.load_firmware(v, HOG.name, HOG.elf)?;
    c.start(v)?;
    while running() {
        // Nothing to do but let it compute; a query a turn shows it alive.
        std::thread::sleep(SAMPLE);
        c.query(v)?;
        done();
    }
    Ok(())
}

/// mcu `hang`: firmware that never answers its doorbell (hog); wait
/// [`HANG`] for the answer, then stop, reset, start again.
pub(crate) fn hang(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let mut c = Client::connect_to(&ctx.socket)?;
    let v = c.open(MCU)?;
    c.load_firmware(v, HOG.name, HOG.elf)?;
    c.subscribe(v)?;
    c.start(v)?;
    while running() {
        let (_, seq) = c.mbox_read(v)?;
        c.doorbell(v)?;
        match c.wait_notify(v, seq, HANG) {
            Err(ClientError::Timeout(_)) => {}
            other => bail!("the hanging firmware answered: {other:?}"),
        }
        c.stop(v)?;
        c.reset(v)?;
        c.start(v)?;
        done();
    }
    Ok(())
}

/// `corrupt` (mcu or GPU): load each corrupt image in turn; every one
/// must be refused.
pub(crate) fn corrupt(
    ctx: &Ctx,
    gpu: bool,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let images = if gpu {
        corrupt_shaders()
    } else {
        corrupt_elfs()
    };
    let mut c = Client::connect_to(&ctx.socket)?;
    let v = c.open(if gpu { GPU } else { MCU })?;
    let mut i = 0;
    while running() {
        if c.load_firmware(v, "corrupt", &images[i % images.len()])
            .is_ok()
        {
            bail!("corrupt image {} was accepted", i % images.len());
        }
        i += 1;
        done();
    }
    Ok(())
}

/// mcu `revoke`: scribble works on a revocable mapping; once it has
/// completed a pass the mapping is revoked under it, it faults, and it is
/// reset and given the mapping again. The mapping is placed where it costs
/// the others most: 512 MiB above the control block, in its engine TLB slot
/// at every table size, so every pass refills the control block's entry
/// (which grows the engine's TLB table and every flush with it).
pub(crate) fn revoke(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let iova = u64::from(coproc_mcu::abi::CB_BASE) + 0x2000_0000;
    let len = 4 * 4096u64;
    let mut c = Client::connect_to(&ctx.socket)?;
    let v = c.open(MCU)?;
    c.load_firmware(v, SCRIBBLE.name, SCRIBBLE.elf)?;
    c.subscribe(v)?;
    let mem = SharedMem::new(len)?;
    mem.write(0, &reference::TestRng::new(5).bytes(len as usize))?;
    while running() {
        mem.write(0, &[0; 4])?;
        c.map(v, &mem, 0, iova, len, WirePerms::Rw, WireMapKind::Revocable)?;
        c.mbox_write(v, 0, &[iova as u32, len as u32])?;
        c.start(v)?;
        // A pass is complete when scribble has written its count.
        wait_for("a scribble pass", || Ok(mem.read_vec(0, 4)? != [0; 4]))?;
        let (_, seq) = c.mbox_read(v)?;
        c.revoke(v, iova)?;
        await_fault(&mut c, v, seq, "revoke")?;
        c.reset(v)?;
        done();
    }
    Ok(())
}

/// Wait (on the session's events) until vcoproc `v` faults; notifications
/// and state changes that come first are skipped.
pub(crate) fn await_fault(c: &mut Client, v: u32, seq: u64, what: &str) -> anyhow::Result<()> {
    if !faulted_within(c, v, seq, STEP)? {
        bail!("{what}: no fault in {STEP:?}");
    }
    Ok(())
}

/// Whether vcoproc `v` faults within `timeout` (see [`await_fault`]).
pub(crate) fn faulted_within(
    c: &mut Client,
    v: u32,
    mut seq: u64,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.wait_notify(v, seq, left) {
            Err(ClientError::Stopped { state, .. }) if state == "faulted" => return Ok(true),
            Err(ClientError::Timeout(_)) => return Ok(false),
            // Older state changes (reset, start) and notifications.
            Err(ClientError::Stopped { .. }) if !left.is_zero() => {}
            Ok((s, _)) if !left.is_zero() => seq = s,
            Ok(_) | Err(ClientError::Stopped { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Poll `cond` (every 200 µs) until it holds, at most [`STEP`].
pub(crate) fn wait_for(
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP;
    while !cond()? {
        if Instant::now() > deadline {
            bail!("{what} did not come in {STEP:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// GPU `hog`: spin jobs kept in flight, two at a time.
pub(crate) fn gpu_hog(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let (_c, _v, mut q, _outs) = spin_vcoproc(&ctx.socket, 1)?;
    let iters = calibrate(&mut q)?;
    let mut flight = VecDeque::new();
    let mut seed = 1u32;
    while running() {
        while flight.len() < 2 {
            seed = seed.wrapping_add(1);
            flight.push_back(q.submit_job(&spin_job(iters, seed, SPIN_OUT))?);
        }
        if let Some(tag) = flight.pop_front() {
            q.wait_job(tag, STEP)?;
        }
        done();
    }
    Ok(())
}

/// GPU `hang`: a spin job past the watchdog; the vcoproc faults (and
/// the device is recreated), then reset, re-attach, start.
pub(crate) fn gpu_hang(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    let (mut c, v, mut q, _outs) = spin_vcoproc(&ctx.socket, 1)?;
    c.subscribe(v)?;
    let mut iters = calibrate(&mut q)?.saturating_mul(HANG_JOBS);
    // The last job's length while doubling; whether doubling stopped
    // lengthening it.
    let (mut prev, mut capped) = (Duration::ZERO, false);
    let mut seed = 1u32;
    while running() {
        seed = seed.wrapping_add(1);
        let (_, seq) = c.mbox_read(v)?;
        let tag = q.submit_job(&spin_job(iters, seed, SPIN_OUT))?;
        let t0 = Instant::now();
        if q.wait_job(tag, HANG_WAIT).is_ok() {
            let took = t0.elapsed();
            // Doubling no longer lengthens a job that is already long (a
            // short one is mostly submission overhead, which doubling does
            // not change either): the class bounds the shader's loops (its
            // rewrite does) below the watchdog. The offence is then the
            // longest job there is, back to back.
            let long = took >= Duration::from_millis(WATCHDOG_MS) / 4;
            if capped || iters == u32::MAX || (long && took < prev + prev / 5) {
                capped = true;
                done();
                continue;
            }
            // It ended before the watchdog: longer next time. (Short jobs
            // are mostly submission overhead on lavapipe, so the
            // calibration can start far below the watchdog.)
            prev = took;
            iters = iters.saturating_mul(2);
            continue;
        }
        if !faulted_within(&mut c, v, seq, HANG_WAIT)? {
            bail!("a job of {iters} iterations neither completed nor faulted within {HANG_WAIT:?}");
        }
        c.reset(v)?;
        c.gpu_attach(v, &q)?;
        c.start(v)?;
        if q.wait_job(tag, STEP).is_ok() {
            bail!("the job past the watchdog completed");
        }
        done();
    }
    Ok(())
}

/// GPU `kill`: a session that starts spin jobs and closes its connection
/// while they run.
pub(crate) fn gpu_kill(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
    while running() {
        let (c, _v, mut q, outs) = spin_vcoproc(&ctx.socket, 1)?;
        for seed in 1..=4 {
            q.submit_job(&spin_job(1 << 16, seed, SPIN_OUT))?;
        }
        drop((c, q, outs));
        done();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_corrupt_elf_is_refused_by_the_loader() {
        for (i, elf) in corrupt_elfs().iter().enumerate() {
            assert!(
                coproc_mcu::elf::parse(elf).is_err(),
                "corrupt image {i} parsed"
            );
        }
    }
}
