//! The library example of the README, kept compiling and passing.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::{
    iova::{MapKind, Perms},
    memory::Region,
    policy::{RoundRobin, SchedParams},
    System,
};
use std::{sync::Arc, time::Duration};

#[test]
fn readme_example() -> Result<(), Box<dyn std::error::Error>> {
    let system = System::new();
    let rr = RoundRobin::new(Duration::from_millis(1))?;
    system.add_pcoproc(
        "mcu0",
        coproc_mcu::factory(coproc_mcu::McuConfig::default()),
        Box::new(rr),
    )?;
    let alice = system.add_domain("alice");
    let v = system.create_vcoproc(alice.id, "mcu0", SchedParams::default())?;
    v.load_firmware("crc32", coproc_firmware::CRC32.elf)?;
    let mem = Arc::new(Region::new(64 * 1024)?);
    v.map(&mem, 0, 0x6000_0000, 64 * 1024, Perms::RW, MapKind::Pinned)?;
    v.start()?;
    mem.write(0, b"123456789")?;
    let seq = v.last_notify().seq;
    v.mbox_write(0, 0x6000_0000);
    v.mbox_write(1, 9);
    v.mbox_write(2, 1);
    v.doorbell();
    v.wait_notify(seq, Duration::from_secs(1))?;
    assert_eq!(v.mbox_read(1), 0xCBF4_3926);
    system.shutdown();
    Ok(())
}
