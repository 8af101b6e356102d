//! `sched-get` and `sched-set`: a pcoproc's policy and parameters, kept
//! where not named, with notes and warnings about what does nothing.

use super::VerbError;
use crate::output::print_table;
use crate::output::sanitize;
use crate::output::Format;
use coproc_client::Client;
use coproc_client::SchedInfo;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;

/// A scheduler as `sched-get` and `sched-set` print it; `notes` and
/// `warnings` (already on stderr) join the JSON.
pub(super) fn print_sched(f: Format, s: &SchedInfo, notes: &[String], warnings: &[String]) {
    if f == Format::Json {
        let mut o = sched_json(s);
        if let Value::Object(m) = &mut o {
            if !notes.is_empty() || !warnings.is_empty() {
                m.insert("notes".into(), json!(notes));
                m.insert("warnings".into(), json!(warnings));
            }
        }
        println!("{o}");
        return;
    }
    let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{}: policy {} {}\n",
        s.coproc,
        s.policy,
        sanitize(&params.join(" "))
    );
    let rows = s
        .standings
        .iter()
        .map(|(id, queued, figs)| {
            let figs: Vec<String> = figs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                id.to_string(),
                if *queued { "yes".into() } else { "no".into() },
                figs.join(" "),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["vcoproc", "queued", "standing"], &rows);
}

/// `coproc sched-get`.
pub fn sched_get(c: &mut Client, f: Format, coproc: &str) -> anyhow::Result<bool> {
    let s = c.sched_get(coproc)?;
    print_sched(f, &s, &[], &[]);
    Ok(true)
}

/// `key=value` words as pairs; a word without `=` is a usage error naming
/// it.
pub(super) fn parse_params(params: &[String]) -> Result<Vec<(String, String)>, VerbError> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(VerbError::Usage(format!(
                "parameter {p:?} is not key=value (e.g. slice_us=1000)"
            ))),
        })
        .collect()
}

/// The parameters `sched-set` sends: under the same policy the current
/// ones with the named keys replaced (all `window`s if any is named);
/// under another policy only the named ones (the rest take that policy's
/// defaults).
pub(super) fn merge_params(
    current_policy: &str,
    current: &[(String, String)],
    policy: &str,
    named: Vec<(String, String)>,
) -> Vec<(String, String)> {
    if current_policy != policy {
        return named;
    }
    // What sched-get reports beyond the settable parameters (rt's
    // `utilisation_ppm`) is state, not a parameter: not sent back.
    let settable: Option<&[&str]> = match policy {
        "rr" | "priority" => Some(&["slice_us"]),
        "credit" => Some(&["slice_us", "cap_period_us"]),
        "rt" => Some(&["capacity_pct", "slice_us"]),
        "table" => Some(&["frame_us", "window", "fill"]),
        _ => None,
    };
    let mut out: Vec<(String, String)> = current
        .iter()
        .filter(|(k, _)| !named.iter().any(|(n, _)| n == k))
        .filter(|(k, _)| settable.is_none_or(|s| s.contains(&k.as_str())))
        .cloned()
        .collect();
    out.extend(named);
    out
}

/// `coproc sched-set C POLICY key=value...`: keeps the parameters not
/// named, prints the resulting scheduler, warns about what has no effect.
pub fn sched_set(
    c: &mut Client,
    f: Format,
    coproc: &str,
    policy: &str,
    params: &[String],
) -> anyhow::Result<bool> {
    let named = parse_params(params)?;
    let named_keys: Vec<String> = named.iter().map(|(k, _)| k.clone()).collect();
    let before = c.sched_get(coproc)?;
    let mut notes = Vec::new();
    if before.policy != policy {
        notes.push(format!(
            "policy {} -> {policy}: parameters not named take {policy}'s defaults",
            before.policy
        ));
    }
    let send = merge_params(&before.policy, &before.params, policy, named);
    c.sched_set(coproc, policy, &send)?;
    let after = c.sched_get(coproc)?;
    let vcoprocs = c.list_vcoprocs(None, Some(coproc))?;
    let ids: Vec<u32> = vcoprocs.iter().map(|v| v.id).collect();
    let mut warnings = Vec::new();
    if policy == "credit"
        && named_keys.iter().any(|k| k == "cap_period_us")
        && vcoprocs.iter().all(|v| v.cap_pct.is_none())
    {
        warnings.push(format!(
            "cap_period_us has no effect while no vcoproc on {coproc} has a cap (vcoproc-set --cap)"
        ));
    }
    let windows = after.params.iter().filter(|(k, _)| k == "window").count();
    let fill_idle = after.params.iter().any(|(k, v)| k == "fill" && v == "idle");
    if policy == "table" && windows == 0 && fill_idle {
        warnings.push(format!(
            "no windows and fill=idle: nothing runs on {coproc} (give window=V:OFFSET_US:LEN_US)"
        ));
    }
    for (k, v) in after.params.iter().filter(|(k, _)| k == "window") {
        let owner = v.split(':').next().and_then(|w| w.parse::<u32>().ok());
        if let Some(id) = owner.filter(|id| !ids.contains(id)) {
            warnings.push(format!(
                "{k}={v}: no vcoproc {id} on {coproc}, the window stays idle (or filled)"
            ));
        }
    }
    let vparams: &[&str] = match policy {
        "credit" => &["weight", "cap_pct"],
        "priority" => &["priority"],
        "rt" => &["reservation"],
        _ => &[],
    };
    if !ids.is_empty() && vparams.is_empty() && policy != "table" {
        notes.push(format!(
            "{policy} uses no per-vcoproc parameters: weights, caps, priorities and reservations are kept but have no effect"
        ));
    }
    for n in &notes {
        eprintln!("coproc: note: {n}");
    }
    for w in &warnings {
        eprintln!("coproc: warning: {w}");
    }
    print_sched(f, &after, &notes, &warnings);
    Ok(true)
}

/// A pcoproc's scheduler as JSON (docs/cli.md, `sched-get`).
pub(super) fn sched_json(s: &SchedInfo) -> Value {
    let standings: Vec<Value> = s
        .standings
        .iter()
        .map(|(id, queued, figs)| {
            let figures: Map<String, Value> = figs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect();
            json!({ "vcoproc": id, "queued": queued, "figures": figures })
        })
        .collect();
    json!({
        "coproc": s.coproc,
        "policy": s.policy,
        "params": params_json(&s.params),
        "standings": standings,
    })
}

/// Policy parameters as a JSON object: `window` (the one key that
/// repeats) is always an array; other keys hold one value (the last).
pub(super) fn params_json(params: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in params {
        if k == "window" {
            let w = m
                .entry(k.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = w {
                a.push(Value::from(v.as_str()));
            }
        } else {
            m.insert(k.clone(), param_value(v));
        }
    }
    Value::Object(m)
}

/// A parameter value as JSON: a number when it is an integer, else the
/// text.
pub(super) fn param_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        Value::from(n)
    } else if let Ok(n) = v.parse::<u64>() {
        Value::from(n)
    } else {
        Value::from(v)
    }
}

#[cfg(test)]
mod sched_set_tests {
    use super::{merge_params, parse_params, VerbError};

    fn kv(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn unnamed_parameters_are_kept_under_the_same_policy() {
        let cur = kv(&[("slice_us", "5000"), ("cap_period_us", "20000")]);
        assert_eq!(
            merge_params("credit", &cur, "credit", kv(&[("slice_us", "700")])),
            kv(&[("cap_period_us", "20000"), ("slice_us", "700")])
        );
        // Another policy: only what was named (its defaults for the rest).
        assert_eq!(
            merge_params("credit", &cur, "rr", kv(&[("slice_us", "700")])),
            kv(&[("slice_us", "700")])
        );
        // Naming one window replaces them all; rt's figure is not sent back.
        let t = kv(&[
            ("frame_us", "6000"),
            ("window", "1:0:100"),
            ("window", "2:100:100"),
            ("fill", "rr"),
        ]);
        assert_eq!(
            merge_params("table", &t, "table", kv(&[("window", "3:0:50")])),
            kv(&[("frame_us", "6000"), ("fill", "rr"), ("window", "3:0:50")])
        );
        let rt = kv(&[
            ("capacity_pct", "90"),
            ("slice_us", "5000"),
            ("utilisation_ppm", "0"),
        ]);
        assert_eq!(
            merge_params("rt", &rt, "rt", vec![]),
            kv(&[("capacity_pct", "90"), ("slice_us", "5000")])
        );
    }

    #[test]
    fn a_word_without_equals_is_named() {
        match parse_params(&["slice_us=1".into(), "slice".into()]) {
            Err(VerbError::Usage(m)) => assert!(m.contains("\"slice\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
