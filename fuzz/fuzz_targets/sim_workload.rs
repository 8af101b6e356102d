//! The sim device's workload JSON (`Workload::from_image`), then the
//! accepted workload run on a `SimDevice` for a few slices: virtual time
//! advances exactly by what each run reports.
//!
//! Input: byte 0 (bits 0..4: slices to run, bit 5: dispatch-only device),
//! then the image.

#![no_main]

use coproc_core::control::ControlBlock;
use coproc_core::device::{ContextSpec, Device, SwitchOutcome};
use coproc_core::ids::VcoprocId;
use coproc_sim::{Sim, SimConfig, Workload};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, image)) = data.split_first() else {
        return;
    };
    let Ok(w) = Workload::from_image(image) else {
        return;
    };
    assert!(w.validate().is_ok());
    let again = Workload::from_image(&w.to_image()).expect("a valid workload's image is valid");
    assert_eq!(again.to_image(), w.to_image());

    let sim = Sim::new(SimConfig {
        dispatch_only: ctl & 0x20 != 0,
        ..SimConfig::default()
    });
    let Ok(mut dev) = sim.device() else { return };
    sim.set_horizon(u64::MAX);
    let id = VcoprocId(1);
    dev.create_context(ContextSpec {
        id,
        domain: coproc_core::DomainId(1),
        control: Arc::new(ControlBlock::default()),
    })
    .expect("context");
    dev.load_firmware(id, image).expect("a valid image loads");
    assert_eq!(dev.switch(Some(id)), SwitchOutcome::Done);
    let mut total = 0u64;
    for i in 0..(ctl & 0x1f) {
        let before = sim.now_ns();
        let out = dev.run(Duration::from_micros(50 << (i % 8)));
        let ran = out.ran.as_nanos() as u64;
        assert_eq!(sim.now_ns() - before, ran);
        total += ran;
    }
    assert_eq!(sim.context(id).expect("record").ran_ns, total);
});
