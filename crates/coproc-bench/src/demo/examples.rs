//! The toolchain examples: firmware built with `scripts/coproc-fw`
//! (hard-float FPv4-SP, picolibc's libc and libm) and the Cortex-M system it expects, each checked against
//! its host reference: `hello` (printf to the console, malloc), `fft` and
//! `biquad` (float DSP with libm), `irq` (vector table, doorbell interrupt,
//! SysTick, WFI). One domain each, in this process, on pcoproc `mcu1`.

use super::{Check, Row, T};
use anyhow::Context;
use coproc_core::iova::MapKind;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::System;
use coproc_firmware::drive::{self, Buffer};
use coproc_firmware::reference::{self, TestRng};
use coproc_mcu::{factory, McuConfig};
use std::time::Duration;

/// One domain per example on pcoproc `mcu1`, each checked; the rows.
pub(super) fn toolchain_examples(slice: Duration) -> anyhow::Result<Vec<Row>> {
    use coproc_firmware::{BIQUAD, FFT, HELLO, IRQ};
    let system = System::new();
    let rr = RoundRobin::new(slice).context("slice")?;
    system.add_pcoproc("mcu1", factory(McuConfig::default()), Box::new(rr))?;
    let mut rng = TestRng::new(14);
    let mut unit = move || (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let mut rows = Vec::new();
    for (name, fw) in [
        ("hank", HELLO),
        ("iris", FFT),
        ("jack", BIQUAD),
        ("kate", IRQ),
    ] {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, "mcu1", SchedParams::default())?;
        v.load_firmware(fw.name, fw.elf)
            .with_context(|| format!("loading {}", fw.name))?;
        let e = |e: drive::DriveError| e.to_string();
        let check: Check = match fw.name {
            "hello" => (|| {
                v.start().map_err(|e| e.to_string())?;
                let n = 1000;
                let (status, sum, _) = drive::hello(&v, n, T).map_err(e)?;
                let line = v.console().0.pop().unwrap_or_default();
                if status != 0 || sum != reference::hello_sum(n) || line != reference::hello_line(n)
                {
                    return Err(format!("status {status}, sum {sum}, console {line:?}"));
                }
                Ok(format!("printf: {line:?}"))
            })(),
            "fft" => (|| {
                let n = 1024;
                let buf = Buffer::map(&v, 8 * n as u64, MapKind::Pinned).map_err(e)?;
                v.start().map_err(|e| e.to_string())?;
                let x: Vec<(f32, f32)> = (0..n).map(|_| (unit(), unit())).collect();
                let (got, _) = drive::fft(&v, &buf, &x, 1, T).map_err(e)?;
                let want = reference::dft(&x);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (f64::from(g.0) - w.0).hypot(f64::from(g.1) - w.1))
                    .fold(0.0, f64::max);
                let peak = want.iter().map(|w| w.0.hypot(w.1)).fold(0.0, f64::max);
                if worst > 1e-4 * peak {
                    return Err(format!(
                        "largest error {worst:e} against a peak of {peak:.1}"
                    ));
                }
                Ok(format!(
                    "{n}-point float FFT matches the DFT (largest error {:.1e} of the peak)",
                    worst / peak
                ))
            })(),
            "biquad" => (|| {
                let n = 4096;
                let buf = Buffer::map(&v, 8 * n as u64, MapKind::Pinned).map_err(e)?;
                v.start().map_err(|e| e.to_string())?;
                let x: Vec<f32> = (0..n).map(|_| unit()).collect();
                let got = drive::biquad(&v, &buf, &x, 0.05, 0.707, 1, T).map_err(e)?;
                let want = reference::biquad_lowpass(&x, 0.05, 0.707);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (f64::from(*g) - w).abs())
                    .fold(0.0, f64::max);
                if worst > 1e-3 {
                    return Err(format!("largest error {worst:e}"));
                }
                Ok(format!("{n} samples low-passed, largest error {worst:.1e}"))
            })(),
            _ => (|| {
                v.start().map_err(|e| e.to_string())?;
                for i in 1..=10u32 {
                    let out = drive::irq(&v, 1, i, 1000 * i, i, T).map_err(e)?;
                    if out[1] != 1001 * i || out[5] != 16 {
                        return Err(format!("request {i}: {out:?}"));
                    }
                }
                let out = drive::irq(&v, 2, 3, 0, 11, T).map_err(e)?;
                Ok(format!(
                    "10 requests answered in the doorbell IRQ handler; SysTick count {} after \
                     busy-waiting for 3 ticks",
                    out[1]
                ))
            })(),
        };
        // Run time is charged when a slice ends: read the stats once the
        // vcoproc has parked after its last answer.
        let _ = v.wait_state(
            |s| !matches!(s, VcoprocState::Running | VcoprocState::Runnable),
            T,
        );
        let info = v.info()?;
        rows.push(Row::in_process(name, "mcu1", fw.name, &info, check, false));
    }
    Ok(rows)
}
