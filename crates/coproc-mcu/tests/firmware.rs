//! Firmware built with the full toolchain (`scripts/coproc-fw`: hard-float
//! FPv4-SP, picolibc libc and libm) and the Cortex-M system it expects:
//! results against host references written from the algorithms'
//! definitions.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::iova::MapKind;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::{DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::drive::{self, Buffer};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, BIGCODE, BIQUAD, BIQUAD_SOFT, ECHO, ECHO_SMALL, FFT, HELLO, IRQ};
use coproc_mcu::abi;
use coproc_mcu::{factory, McuConfig};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn pcoproc(slice_us: u64) -> Arc<Pcoproc> {
    let rr = RoundRobin::new(Duration::from_micros(slice_us)).unwrap();
    Pcoproc::spawn("mcu0", factory(McuConfig::default()), Box::new(rr)).unwrap()
}

fn vcoproc(p: &Arc<Pcoproc>, domain: u32, fw: Firmware) -> VcoprocHandle {
    let v = p
        .create_vcoproc(DomainId(domain), SchedParams::default())
        .unwrap();
    v.load_firmware(fw.name, fw.elf).unwrap();
    v
}

/// `n` vcoprocs of domains 1..=n running `fw`.
fn started(p: &Arc<Pcoproc>, n: u32, fw: Firmware) -> Vec<VcoprocHandle> {
    (1..=n)
        .map(|d| {
            let v = vcoproc(p, d, fw);
            v.start().unwrap();
            v
        })
        .collect()
}

fn f32s(rng: &mut TestRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

#[test]
fn printf_and_malloc_reach_the_console() {
    let p = pcoproc(1000);
    let v = vcoproc(&p, 1, HELLO);
    v.start().unwrap();
    let data = u64::from(abi::DATA_BASE)..u64::from(abi::DATA_BASE + abi::DATA_SIZE);
    for n in [1u32, 10, 1000, 4000] {
        let (status, sum, heap) = drive::hello(&v, n, T).unwrap();
        assert_eq!(status, 0, "n {n}");
        assert_eq!(sum, reference::hello_sum(n), "n {n}");
        assert!(data.contains(&u64::from(heap)), "heap block at {heap:#x}");
    }
    // Too much for the heap: malloc fails cleanly; a bad n is refused.
    assert_eq!(drive::hello(&v, 65536, T).unwrap().0, 2);
    assert_eq!(drive::hello(&v, 0, T).unwrap().0, 1);
    // Still serving after the failed allocation.
    assert_eq!(drive::hello(&v, 7, T).unwrap().1, reference::hello_sum(7));
    let (lines, _) = v.console();
    let want: Vec<String> = std::iter::once("hello: ready".to_string())
        .chain([1u32, 10, 1000, 4000, 7].map(reference::hello_line))
        .collect();
    assert_eq!(lines, want);
}

#[test]
fn float_fft_matches_the_dft() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, FFT);
    let buf = Buffer::map(&v, 8 * 4096, MapKind::Pinned).unwrap();
    v.start().unwrap();
    let mut rng = TestRng::new(14);
    for (j, n) in [2usize, 8, 64, 1024].into_iter().enumerate() {
        let re = f32s(&mut rng, n);
        let im = f32s(&mut rng, n);
        let x: Vec<(f32, f32)> = re.into_iter().zip(im).collect();
        let (got, rss) = drive::fft(&v, &buf, &x, j as u32 + 1, T).unwrap();
        let want = reference::dft(&x);
        let norm: f64 = x
            .iter()
            .map(|&(a, b)| f64::from(a).powi(2) + f64::from(b).powi(2))
            .sum::<f64>()
            .sqrt();
        let tol = 1e-5 * (n as f64).log2().max(1.0) * (n as f64).sqrt() * norm;
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = (f64::from(g.0) - w.0).hypot(f64::from(g.1) - w.1);
            assert!(
                err <= tol,
                "n {n} bin {k}: {g:?} vs {w:?} (tolerance {tol})"
            );
        }
        // Parseval: the firmware's sqrtf(Σ|X|²/N) is the signal's norm.
        assert!(
            (f64::from(rss) - norm).abs() <= 1e-4 * norm,
            "rss {rss} vs {norm}"
        );
    }
    // A length that is not a power of two is refused, and nothing faulted.
    assert!(drive::fft(&v, &buf, &[(1.0, 0.0); 3], 9, T).is_err());
    assert!(v.faults().unwrap().is_empty());
}

fn biquad_matches(fw: Firmware) {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, fw);
    let buf = Buffer::map(&v, 8 * 2048, MapKind::Pinned).unwrap();
    v.start().unwrap();
    let mut rng = TestRng::new(7);
    for (j, (f, q)) in [(0.05f32, 0.707f32), (0.2, 2.0), (0.01, 0.5)]
        .into_iter()
        .enumerate()
    {
        let x = f32s(&mut rng, 2048);
        let got = drive::biquad(&v, &buf, &x, f, q, j as u32 + 1, T).unwrap();
        let want = reference::biquad_lowpass(&x, f64::from(f), f64::from(q));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-3,
                "{} f {f} q {q} sample {i}: {g} vs {w}",
                fw.name
            );
        }
    }
    // Bad parameters are refused with a status, not a fault.
    assert!(drive::biquad(&v, &buf, &[0.0; 4], 0.7, 1.0, 5, T).is_err());
    assert!(v.faults().unwrap().is_empty());
}

#[test]
fn biquad_hard_float_matches_the_definition() {
    biquad_matches(BIQUAD);
}

#[test]
fn biquad_soft_float_matches_the_definition() {
    biquad_matches(BIQUAD_SOFT);
}

#[test]
fn interrupt_driven_firmware_handles_requests_from_its_vector_table() {
    use coproc_core::state::VcoprocState;
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, IRQ);
    v.start().unwrap();
    let mut rng = TestRng::new(3);
    let mut entries = 0;
    let mut ticks = 0;
    for tag in 1..=20u32 {
        let (a, b) = (
            rng.next_u64() as u32 % 100_000,
            rng.next_u64() as u32 % 100_000,
        );
        let out = drive::irq(&v, 1, a, b, tag, T).unwrap();
        entries += 1;
        assert_eq!(out[1], a + b, "request {tag}");
        assert_eq!(out[2], abi::scs::CPUID);
        assert!(out[3] >= ticks, "the SysTick count never goes back");
        ticks = out[3];
        assert_eq!(out[4], entries, "one handler entry per request");
        assert_eq!(out[5], 16, "answered in the doorbell handler (IPSR 16)");
        assert_eq!(out[6], 0, "VTOR");
    }
    // Busy in thread mode until SysTick has interrupted it 5 more times:
    // ends only if SysTick interrupts are delivered while it runs.
    let out = drive::irq(&v, 2, 5, 0, 99, T).unwrap();
    assert!(out[1] >= ticks + 5, "ticks {} after {ticks}", out[1]);
    assert_eq!(out[5], 0, "answered from thread mode");
    // Requests while main is busy in thread mode: the doorbell interrupt
    // preempts it, the handler answers, main goes on and answers later.
    let start = drive::irq(&v, 5, 500, 0, 200, T).unwrap();
    assert_eq!(start[1], 0, "accepted");
    let seq = v.last_notify().seq;
    let during = drive::irq(&v, 1, 7, 8, 201, T).unwrap();
    assert_eq!((during[1], during[5]), (15, 16));
    let busy_since = start[3];
    assert!(during[3] < busy_since + 500, "answered while main was busy");
    let mut done = v.wait_notify(seq, T).unwrap();
    while done.tag != 200 {
        done = v.wait_notify(done.seq, T).unwrap();
    }
    assert_eq!(v.mbox_read(0), 5);
    assert!(v.mbox_read(1) >= busy_since + 500);
    // SVC from thread mode: the handler rewrote the stacked r0.
    let out = drive::irq(&v, 3, 20, 0, 101, T).unwrap();
    assert_eq!((out[1], out[5]), (41, 0));
    // WFI parks the vcoproc between requests; so does WFE.
    v.wait_state(|s| s == VcoprocState::Waiting, T).unwrap();
    assert_eq!(drive::irq(&v, 4, 1, 0, 102, T).unwrap()[1], 1);
    v.wait_state(|s| s == VcoprocState::Waiting, T).unwrap();
    assert_eq!(drive::irq(&v, 1, 5, 6, 103, T).unwrap()[1], 11);
    v.wait_state(|s| s == VcoprocState::Waiting, T).unwrap();
    // Unknown op: answered, nothing faulted.
    assert_eq!(drive::irq(&v, 7, 0, 0, 100, T).unwrap()[1], u32::MAX);
    assert!(v.faults().unwrap().is_empty());
}

/// The System Control Space through the `probe` firmware (a freestanding,
/// soft-float image with the SDK's vector table): registers, and what bad
/// exception set-ups do — a fault or an exit of that vcoproc only.
#[test]
fn system_control_space_and_bad_exception_setups_fault_only_their_vcoproc() {
    use abi::scs::*;
    use coproc_core::state::VcoprocState;
    use coproc_firmware::{ECHO, PROBE};
    let p = pcoproc(200);
    let bystander = vcoproc(&p, 2, ECHO);
    bystander.start().unwrap();
    let v = vcoproc(&p, 1, PROBE);
    v.start().unwrap();
    let rd = |a: u32| drive::probe(&v, 1, a, 0, T).unwrap();
    let wr = |a: u32, x: u32| drive::probe(&v, 2, a, x, T).unwrap();
    assert_eq!(rd(SCB_CPUID), CPUID);
    assert_eq!(rd(SCB_VTOR), 0);
    assert_eq!(rd(SCB_AIRCR) >> 16, 0xfa05);
    wr(SCB_CPACR, 0xf << 20);
    assert_eq!(rd(SCB_CPACR), 0xf << 20);
    wr(SCB_VTOR, 0x1234);
    assert_eq!(rd(SCB_VTOR), 0x1200, "VTOR keeps bits 7 and up");
    // SysTick: reload value and calibration read back; unmodelled SCS
    // registers read as zero.
    wr(SYST_RVR, 0x0123_4567);
    assert_eq!(rd(SYST_RVR), 0x0023_4567);
    assert_eq!(rd(SYST_CALIB) & 0x00ff_ffff, SYSTICK_HZ / 100 - 1);
    assert_eq!(rd(0xe000_ed90), 0, "MPU_TYPE: no MPU");
    wr(0xe000_ed90, 0xffff_ffff);

    // An interrupt with no handler of the firmware's: the SDK's default
    // handler exits with EXIT_UNHANDLED | its exception number.
    wr(SCB_VTOR, 0);
    wr(NVIC_ISER, 1 << 3);
    let seq = v.last_notify().seq;
    v.mbox_write(0, 2);
    v.mbox_write(1, NVIC_ISPR);
    v.mbox_write(2, 1 << 3);
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Stopped, T).unwrap();
    assert_eq!(v.info().unwrap().exit_code, Some(EXIT_UNHANDLED | 0x13));
    assert_eq!(v.last_notify().seq, seq);

    // A vector table in data memory full of zeros: the vector is not
    // Thumb code, the vcoproc faults.
    v.reset().unwrap();
    v.start().unwrap();
    wr(SCB_VTOR, abi::DATA_BASE);
    wr(NVIC_ISER, 1 << 1);
    v.mbox_write(0, 2);
    v.mbox_write(1, NVIC_STIR);
    v.mbox_write(2, 1);
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
    let f = v.faults().unwrap().pop().unwrap();
    assert!(
        format!("{:?}", f.fault.reason).contains("vector"),
        "{:?}",
        f.fault.reason
    );

    // SYSRESETREQ stops the vcoproc with its exit code.
    v.reset().unwrap();
    v.start().unwrap();
    v.mbox_write(0, 2);
    v.mbox_write(1, SCB_AIRCR);
    v.mbox_write(2, 0x05fa_0004);
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Stopped, T).unwrap();
    assert_eq!(v.info().unwrap().exit_code, Some(EXIT_SYSRESETREQ));

    // After a reset the System Control Space starts over.
    v.reset().unwrap();
    v.start().unwrap();
    assert_eq!(rd(SCB_VTOR), 0);
    assert_eq!(rd(NVIC_ISER), 0);

    // The bystander never noticed.
    let w = [7u32; 16];
    assert_eq!(drive::echo(&bystander, &w, T).unwrap()[..15], w[..15]);
    assert!(bystander.faults().unwrap().is_empty());
}

fn sized_pcoproc(code_kib: u32, data_kib: u32) -> Arc<Pcoproc> {
    let rr = RoundRobin::new(Duration::from_micros(500)).unwrap();
    let config = McuConfig {
        code_size: code_kib * 1024,
        data_size: data_kib * 1024,
        ..McuConfig::default()
    };
    Pcoproc::spawn("mcu-sized", factory(config), Box::new(rr)).unwrap()
}

/// The table-heavy `bigcode` (384 KiB of rodata) answers `i`: its word,
/// the table's sum, its last word's address. Reference from the table's
/// definition in the C source's comment.
fn bigcode_answer(v: &VcoprocHandle, i: u32) -> [u32; 16] {
    let seq = v.last_notify().seq;
    v.mbox_write(0, i);
    v.doorbell();
    v.wait_notify(seq, T).unwrap();
    std::array::from_fn(|k| v.mbox_read(k))
}

#[test]
fn code_and_data_sizes_follow_the_configuration() {
    let words = 96 * 1024u32;
    let table = |i: u32| {
        let i = i % words;
        if i.is_multiple_of(4096) && i / 4096 < 24 {
            i / 4096 + 1
        } else {
            0
        }
    };
    let sum: u32 = (0..words).map(table).sum();
    // The default map (1 MiB of code) holds it.
    let p = pcoproc(500);
    let v = vcoproc(&p, 1, BIGCODE);
    v.start().unwrap();
    for i in [0u32, 4096, 5 * 4096 + 1, 23 * 4096, 200_000] {
        let out = bigcode_answer(&v, i);
        assert_eq!((out[0], out[1]), (table(i), sum), "i {i}");
        assert!(out[2] > 256 * 1024 && out[2] < abi::CODE_SIZE);
    }
    // A pcoproc with 256 KiB of code memory refuses it up front, and a
    // default-linked image (its stack at the top of 256 KiB of data) on a
    // pcoproc with 32 KiB of data memory too: clear errors, no fault.
    let small = sized_pcoproc(256, 32);
    let w = small
        .create_vcoproc(DomainId(2), SchedParams::default())
        .unwrap();
    let e = w.load_firmware("bigcode", BIGCODE.elf).unwrap_err();
    assert!(
        e.to_string().contains("outside code and data memory"),
        "{e}"
    );
    let e = w.load_firmware("echo", ECHO.elf).unwrap_err();
    assert!(e.to_string().contains("initial SP"), "{e}");
    // Linked for the small map (coproc-fw --code-size/--data-size), it runs
    // there, with its stack at the top of the 32 KiB.
    let small = sized_pcoproc(64, 32);
    let w = vcoproc(&small, 2, ECHO_SMALL);
    w.start().unwrap();
    let msg: [u32; 16] = std::array::from_fn(|i| i as u32 * 3);
    assert_eq!(drive::echo(&w, &msg, T).unwrap()[..15], msg[..15]);
    assert!(w.faults().unwrap().is_empty());
    // Images linked for the small map fit the default one too.
    let v2 = vcoproc(&p, 4, ECHO_SMALL);
    v2.start().unwrap();
    assert_eq!(drive::echo(&v2, &msg, T).unwrap()[..15], msg[..15]);
}

#[test]
fn bad_memory_sizes_are_refused() {
    for (code, data) in [
        (0, 4096),
        (4096, 0),
        (4097, 4096),
        (32 << 20, 4096),
        (4096, 17 << 20),
    ] {
        let config = McuConfig {
            code_size: code,
            data_size: data,
            ..McuConfig::default()
        };
        assert!(config.validate().is_err(), "{code} {data}");
        assert!(coproc_mcu::McuDevice::new(config).is_err());
    }
    assert!(McuConfig::default().validate().is_ok());
}

/// Exception set-ups the class refuses (`badexc`): a frame that does not
/// fit data memory, an EXC_RETURN to the process stack, an exception taken
/// on the process stack. Each faults that vcoproc only, with a reason; a
/// proper PendSV round trip works.
#[test]
fn bad_exception_frames_and_returns_fault_only_their_vcoproc() {
    use coproc_core::fault::{Access, FaultReason};
    use coproc_core::state::VcoprocState;
    use coproc_firmware::BADEXC;
    let p = pcoproc(200);
    let bystander = vcoproc(&p, 2, ECHO);
    bystander.start().unwrap();
    let v = vcoproc(&p, 1, BADEXC);
    let op = |op: u32| {
        v.reset().unwrap();
        v.start().unwrap();
        v.mbox_write(0, op);
        v.doorbell();
        v.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
        v.faults().unwrap().pop().unwrap().fault
    };
    let f = op(1);
    assert_eq!(f.reason, FaultReason::AccessViolation);
    assert_eq!(f.access, Access::Write);
    let below = f.addr.unwrap();
    assert!(below < u64::from(abi::DATA_BASE), "frame at {below:#x}");
    let f = op(2);
    assert!(
        f.reason.to_string().contains("EXC_RETURN 0xfffffffd"),
        "{}",
        f.reason
    );
    let f = op(3);
    assert!(
        f.reason.to_string().contains("process stack"),
        "{}",
        f.reason
    );
    // The proper round trip.
    v.reset().unwrap();
    v.start().unwrap();
    let seq = v.last_notify().seq;
    v.mbox_write(0, 4);
    v.doorbell();
    assert_eq!(v.wait_notify(seq, T).unwrap().tag, 4);
    assert_eq!(v.mbox_read(0), 4);
    let w = [9u32; 16];
    assert_eq!(drive::echo(&bystander, &w, T).unwrap()[..15], w[..15]);
    assert!(bystander.faults().unwrap().is_empty());
}

/// Two interrupt-driven vcoprocs on one core with short slices: their
/// System Control Space, handler state and FP registers are switched with
/// them (each answers its own requests right, in its handler, while the
/// other busy-waits on SysTick with the FPU).
#[test]
fn interrupt_state_is_per_vcoproc_across_switches() {
    let p = pcoproc(100);
    let vs = started(&p, 2, IRQ);
    std::thread::scope(|s| {
        for (k, v) in vs.iter().enumerate() {
            s.spawn(move || {
                let mut rng = TestRng::new(100 + k as u64);
                for round in 0..5u32 {
                    let tag = 1000 * (k as u32 + 1) + round;
                    let done = drive::irq(v, 2, 3, 0, tag, T).unwrap();
                    assert_eq!(done[5], 0, "op 2 answered from thread mode");
                    let (a, b) = (rng.next_u64() as u32 % 1000, rng.next_u64() as u32 % 1000);
                    let out = drive::irq(v, 1, a, b, tag + 500, T).unwrap();
                    assert_eq!((out[1], out[5]), (a + b, 16), "vcoproc {k} round {round}");
                    assert!(out[3] >= done[1], "its own SysTick count never goes back");
                }
            });
        }
    });
    for v in &vs {
        assert!(v.faults().unwrap().is_empty());
        assert!(v.info().unwrap().stats.switches > 0);
    }
}

/// Many short slices over handler entries, SVCs and exception returns: the
/// slice timer stops the core thousands of times at arbitrary points of
/// this code, and every answer stays exact (no instruction runs twice, no
/// request is slept through, one handler entry per request).
#[test]
fn interrupt_driven_requests_stay_exact_under_constant_preemption() {
    let p = pcoproc(50);
    let vs = started(&p, 2, IRQ);
    std::thread::scope(|s| {
        for (k, v) in vs.iter().enumerate() {
            s.spawn(move || {
                let mut rng = TestRng::new(500 + k as u64);
                let mut entries = 0;
                for round in 0..150u32 {
                    let tag = 10_000 * (k as u32 + 1) + 2 * round;
                    let (a, b) = (rng.next_u64() as u32 % 1000, rng.next_u64() as u32 % 1000);
                    let out = drive::irq(v, 1, a, b, tag, T).unwrap();
                    entries += 1;
                    assert_eq!(
                        (out[1], out[4], out[5]),
                        (a + b, entries, 16),
                        "vcoproc {k} round {round}: sum, handler entries, IPSR"
                    );
                    let out = drive::irq(v, 3, a, 0, tag + 1, T).unwrap();
                    entries += 1;
                    assert_eq!(
                        (out[1], out[4], out[5]),
                        (2 * a + 1, entries, 0),
                        "vcoproc {k} round {round}: SVC result, handler entries, IPSR"
                    );
                }
            });
        }
    });
    for v in &vs {
        assert!(v.faults().unwrap().is_empty());
    }
}
