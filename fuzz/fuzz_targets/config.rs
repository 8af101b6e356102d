//! The daemon's TOML configuration (`coprocd::config::Config::parse`): an
//! accepted configuration names each pcoproc once, every pcoproc's class
//! and options check out and its policy builds, as `Daemon::start` needs.

#![no_main]

use coprocd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text) else {
        return;
    };
    let mut names = std::collections::BTreeSet::new();
    for p in &c.pcoprocs {
        assert!(names.insert(p.name.clone()), "pcoproc {:?} twice", p.name);
        p.device()
            .expect("an accepted pcoproc's device config is valid");
        coproc_core::policy::build(&p.policy, &p.params()).expect("an accepted policy builds");
    }
    let patterns = c.container_patterns();
    for path in [
        "/",
        "/machine.slice/libpod-ab.scope/x",
        "/kubepods/burstable/pod1/c",
    ] {
        let container = coprocd::identity::container_of(path, patterns.iter().copied());
        for uid in [0, 1000, u32::MAX] {
            let _ = c.rule_for(uid, None);
            let _ = c.rule_for(uid, container.as_deref());
        }
    }
});
