//! Building scheduling policies from their names and `key=value` parameters
//! (configuration and `sched-set`).

use coproc_core::policy::{Policy, RoundRobin};
use std::collections::BTreeMap;
use std::time::Duration;

/// Make policy `name` with `params`.
pub fn build(name: &str, params: &BTreeMap<String, String>) -> Result<Box<dyn Policy>, String> {
    match name {
        "rr" => {
            let mut slice = RoundRobin::DEFAULT_SLICE;
            for (k, v) in params {
                match k.as_str() {
                    "slice_us" => {
                        let us: u64 = v
                            .parse()
                            .map_err(|_| format!("slice_us {v:?} is not a number"))?;
                        slice = Duration::from_micros(us);
                    }
                    other => {
                        return Err(format!("rr has no parameter {other:?} (known: slice_us)"))
                    }
                }
            }
            Ok(Box::new(RoundRobin::new(slice).map_err(|e| e.to_string())?))
        }
        other => Err(format!("unknown policy {other:?} (known: rr)")),
    }
}
