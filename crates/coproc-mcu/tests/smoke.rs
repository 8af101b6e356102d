use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::{DomainId, Pcoproc};
use coproc_mcu::{factory, McuConfig};
use std::time::Duration;

#[test]
fn echo_roundtrip() {
    let p = Pcoproc::spawn("mcu0", factory(McuConfig::default()), Box::new(RoundRobin::new(Duration::from_millis(1)).unwrap())).unwrap();
    let v = p.create_vcoproc(DomainId(1), SchedParams::default()).unwrap();
    v.load_firmware("echo", coproc_firmware::ECHO.elf).unwrap();
    v.start().unwrap();
    for i in 0..5u32 {
        let seq = v.last_notify().seq;
        for w in 0..15 { v.mbox_write(w, i * 100 + w as u32); }
        v.doorbell();
        let n = v.wait_notify(seq, Duration::from_secs(5)).map_err(|e| format!("{e} {:?}", v.faults())).unwrap();
        assert_eq!(n.tag, i + 1);
        assert_eq!(v.mbox_read(3), i * 100 + 3);
        assert_eq!(v.mbox_read(15), i + 1);
    }
    println!("{:?}", v.info().unwrap());
}
