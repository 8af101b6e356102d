//! A domain using the SDK: CRC-32 of a file (or of a built-in message) on a
//! vcoproc running the `crc32` example firmware, checked on the host.
//!
//! `cargo run -p coproc-client --example crc [FILE]` with coprocd running
//! (socket from `$COPROC_SOCKET` or the default).

// Casts of the example's own sizes.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_client::{Client, SharedMem, WireMapKind, WirePerms};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => b"The quick brown fox jumps over the lazy dog".to_vec(),
    };
    let mut c = Client::connect()?;
    println!(
        "connected as uid {} (admin: {})",
        c.identity().uid,
        c.identity().admin
    );
    let v = c.open("mcu0")?;
    c.load_firmware(v, "crc32", coproc_firmware::CRC32.elf)?;
    let mem = SharedMem::new(data.len() as u64)?;
    mem.write(0, &data)?;
    let iova = 0x6000_0000;
    c.map(
        v,
        &mem,
        0,
        iova,
        mem.len(),
        WirePerms::R,
        WireMapKind::Pinned,
    )?;
    c.subscribe(v)?;
    c.start(v)?;
    let (_, seq) = c.mbox_read(v)?;
    c.mbox_write(v, 0, &[iova as u32, data.len() as u32, 1])?;
    c.doorbell(v)?;
    c.wait_notify(v, seq, Duration::from_secs(30))?;
    let (out, _) = c.mbox_read(v)?;
    let host = crc32fast::hash(&data);
    println!(
        "crc32 of {} bytes: device {:#010x}, host {:#010x}",
        data.len(),
        out[1],
        host
    );
    if out[1] != host {
        return Err("device and host disagree".into());
    }
    Ok(())
}
