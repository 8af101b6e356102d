//! The short way: the CRC-32 of a file (or of a built-in message) on a
//! vcoproc running the `crc32` example firmware, in four calls, checked on
//! the host. `examples/crc.rs` is the same job on the low-level `Client`.
//!
//! `cargo run -p coproc-client --example offload [FILE]` with coprocd
//! running (socket from `$COPROC_SOCKET` or the default).

use coproc_client::Vcoproc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => b"The quick brown fox jumps over the lazy dog".to_vec(),
    };
    let len = u32::try_from(data.len())?;
    let v = Vcoproc::open("mcu0")?; // 1
    v.load("crc32", coproc_firmware::CRC32.elf)?; // 2
    let buf = v.buffer_from(&data)?; // 3
    let reply = v.call(&[buf.iova32()?, len, 1])?; // 4
    let host = crc32fast::hash(&data);
    println!(
        "crc32 of {len} bytes: device {:#010x}, host {host:#010x}",
        reply.words[1]
    );
    if reply.words[1] != host {
        return Err("device and host disagree".into());
    }
    Ok(())
}
