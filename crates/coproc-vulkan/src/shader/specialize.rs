//! Specialization: the values that apply to each entry point, SPIR-V
//! specialization constants substituted in the instruction stream, and
//! refusals of WGSL overrides that do not resolve.

use super::{chain, ShaderError};
use coproc_proto::shader::SpecValue;

/// The values that apply to `entry`: every-entry ones, overridden by its
/// own.
pub(super) fn values_for(values: &[SpecValue], entry: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = values
        .iter()
        .filter(|v| v.entry.is_none())
        .map(|v| (v.name.clone(), v.value))
        .collect();
    for v in values.iter().filter(|v| v.entry.as_deref() == Some(entry)) {
        match out.iter_mut().find(|(n, _)| *n == v.name) {
            Some(slot) => slot.1 = v.value,
            None => out.push((v.name.clone(), v.value)),
        }
    }
    out
}

/// The refusal of entry point `entry` whose overrides did not resolve.
pub(super) fn override_error(
    entry: &str,
    e: &naga::back::pipeline_constants::PipelineConstantError,
) -> ShaderError {
    use naga::back::pipeline_constants::PipelineConstantError as P;
    ShaderError::Specialization(match e {
        P::MissingValue(n) => {
            format!("entry point {entry:?}: override {n:?} has no default and no value was set")
        }
        P::NotFound(n) => format!("no override or specialization constant {n:?} in the module"),
        P::SrcNeedsToBeFinite | P::DstRangeTooSmall => {
            format!("entry point {entry:?}: a value does not fit its override's type ({e})")
        }
        other => format!("entry point {entry:?}: {}", chain(other)),
    })
}

mod spirv {
    //! SPIR-V opcodes and decorations the specializer reads.
    pub const NAME: u16 = 5;
    pub const EXECUTION_MODE: u16 = 16;
    pub const TYPE_BOOL: u16 = 20;
    pub const TYPE_INT: u16 = 21;
    pub const TYPE_FLOAT: u16 = 22;
    pub const CONSTANT_TRUE: u16 = 41;
    pub const CONSTANT_FALSE: u16 = 42;
    pub const CONSTANT: u16 = 43;
    pub const CONSTANT_COMPOSITE: u16 = 44;
    pub const SPEC_CONSTANT_TRUE: u16 = 48;
    pub const SPEC_CONSTANT_FALSE: u16 = 49;
    pub const SPEC_CONSTANT: u16 = 50;
    pub const SPEC_CONSTANT_COMPOSITE: u16 = 51;
    pub const DECORATE: u16 = 71;
    pub const DECORATION_SPEC_ID: u32 = 1;
    pub const DECORATION_BUILT_IN: u32 = 11;
    pub const BUILT_IN_WORKGROUP_SIZE: u32 = 25;
    pub const MODE_LOCAL_SIZE: u32 = 17;
    pub const EXECUTION_MODE_ID: u16 = 331;
    pub const MODE_LOCAL_SIZE_ID: u32 = 38;
}

/// Substitute specialization constants: every `OpSpecConstant*` becomes
/// the plain constant of its value (the domain's, by `SpecId` or debug
/// name, else its default), and a `WorkgroupSize` built-in built from them
/// sets the entry points' local size. Only the instruction stream's shape
/// is trusted here; naga parses and validates the result.
pub(super) fn specialize_spirv(
    image: &[u8],
    values: &[(String, f64)],
) -> Result<Vec<u32>, ShaderError> {
    use spirv as s;
    let mut words: Vec<u32> = image
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let bad = |m: &str| ShaderError::Parse {
        lang: "SPIR-V",
        msg: m.to_string(),
    };
    // Instruction starts (within bounds; naga reports malformed streams).
    let mut insts = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let n = (words[at] >> 16) as usize;
        if n == 0 || at + n > words.len() {
            break;
        }
        insts.push(at);
        at += n;
    }
    let op = |w: &[u32], i: usize| (w[i] & 0xffff) as u16;
    let len = |w: &[u32], i: usize| (w[i] >> 16) as usize;
    let mut spec_ids = std::collections::HashMap::new();
    let mut names = std::collections::HashMap::new();
    let mut types = std::collections::HashMap::new();
    let mut workgroup_size = None;
    for &i in &insts {
        let n = len(&words, i);
        match op(&words, i) {
            s::DECORATE if n >= 4 && words[i + 2] == s::DECORATION_SPEC_ID => {
                spec_ids.insert(words[i + 1], words[i + 3]);
            }
            s::DECORATE
                if n >= 4
                    && words[i + 2] == s::DECORATION_BUILT_IN
                    && words[i + 3] == s::BUILT_IN_WORKGROUP_SIZE =>
            {
                workgroup_size = Some(words[i + 1]);
            }
            s::NAME if n >= 3 => {
                let bytes: Vec<u8> = words[i + 2..i + n]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .take_while(|&b| b != 0)
                    .collect();
                if let Ok(name) = String::from_utf8(bytes) {
                    names.insert(words[i + 1], name);
                }
            }
            s::TYPE_BOOL if n >= 2 => {
                types.insert(words[i + 1], (0u32, false, false));
            }
            s::TYPE_INT if n >= 4 => {
                types.insert(words[i + 1], (words[i + 2], words[i + 3] != 0, false));
            }
            s::TYPE_FLOAT if n >= 3 => {
                types.insert(words[i + 1], (words[i + 2], true, true));
            }
            _ => {}
        }
    }
    let mut used = vec![false; values.len()];
    let mut lookup = |id: u32| -> Option<f64> {
        let sid = spec_ids.get(&id)?.to_string();
        let name = names.get(&id);
        let k = values
            .iter()
            .position(|(k, _)| *k == sid || Some(k) == name)?;
        used[k] = true;
        Some(values[k].1)
    };
    let mut scalars = std::collections::HashMap::new();
    for &i in &insts {
        let n = len(&words, i);
        let code = op(&words, i);
        match code {
            s::SPEC_CONSTANT_TRUE | s::SPEC_CONSTANT_FALSE if n >= 3 => {
                let id = words[i + 2];
                let on = match lookup(id) {
                    Some(v) => v != 0.0,
                    None => code == s::SPEC_CONSTANT_TRUE,
                };
                let new = if on {
                    s::CONSTANT_TRUE
                } else {
                    s::CONSTANT_FALSE
                };
                words[i] = (words[i] & 0xffff_0000) | u32::from(new);
            }
            s::SPEC_CONSTANT if n >= 4 => {
                let (ty, id) = (words[i + 1], words[i + 2]);
                let what = names
                    .get(&id)
                    .cloned()
                    .or_else(|| spec_ids.get(&id).map(|s| format!("constant_id {s}")))
                    .unwrap_or_else(|| format!("%{id}"));
                if let Some(v) = lookup(id) {
                    let &(width, signed, float) = types
                        .get(&ty)
                        .ok_or_else(|| bad("specialization constant of an unknown type"))?;
                    // SPIR-V literal words, as the spec lays them out: a
                    // value narrowed to the constant's declared width,
                    // 64-bit ones split low word first.
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_possible_wrap
                    )]
                    let lit: Vec<u32> = match (float, width, n - 3) {
                        (true, 32, 1) => vec![(v as f32).to_bits()],
                        (true, 64, 2) => {
                            let b = v.to_bits();
                            vec![b as u32, (b >> 32) as u32]
                        }
                        (false, 32 | 64, k) if v.fract() == 0.0 && v.is_finite() => {
                            let fits = match (width, signed) {
                                (32, true) => {
                                    (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v)
                                }
                                (32, false) => (0.0..=f64::from(u32::MAX)).contains(&v),
                                (_, true) => (-(2f64.powi(63))..2f64.powi(63)).contains(&v),
                                _ => (0.0..2f64.powi(64)).contains(&v),
                            };
                            if !fits || k != (width / 32) as usize {
                                return Err(ShaderError::Specialization(format!(
                                    "{v} does not fit {what}'s type"
                                )));
                            }
                            let b = if signed { v as i64 as u64 } else { v as u64 };
                            if width == 32 {
                                vec![b as u32]
                            } else {
                                vec![b as u32, (b >> 32) as u32]
                            }
                        }
                        _ => {
                            return Err(ShaderError::Specialization(format!(
                                "{v} does not fit {what}'s type"
                            )));
                        }
                    };
                    words[i + 3..i + 3 + lit.len()].copy_from_slice(&lit);
                }
                words[i] = (words[i] & 0xffff_0000) | u32::from(s::CONSTANT);
                if types.get(&ty).is_some_and(|t| !t.2 && t.0 == 32) {
                    scalars.insert(id, words[i + 3]);
                }
            }
            s::SPEC_CONSTANT_COMPOSITE => {
                words[i] = (words[i] & 0xffff_0000) | u32::from(s::CONSTANT_COMPOSITE);
                if Some(words.get(i + 2).copied()) == Some(workgroup_size) && n == 6 {
                    let dims: Option<Vec<u32>> = (0..3)
                        .map(|d| scalars.get(&words[i + 3 + d]).copied())
                        .collect();
                    if let Some(dims) = dims {
                        // The built-in wins over the execution mode.
                        for &j in &insts {
                            if op(&words, j) == s::EXECUTION_MODE
                                && len(&words, j) == 6
                                && words[j + 2] == s::MODE_LOCAL_SIZE
                            {
                                words[j + 3..j + 6].copy_from_slice(&dims);
                            }
                        }
                    }
                }
            }
            s::CONSTANT
                if n == 4 && types.get(&words[i + 1]).is_some_and(|t| !t.2 && t.0 == 32) =>
            {
                scalars.insert(words[i + 2], words[i + 3]);
            }
            _ => {}
        }
    }
    if let Some(k) = used.iter().position(|u| !u) {
        return Err(ShaderError::Specialization(format!(
            "no specialization constant {:?} (by constant_id or name) in the module",
            values[k].0
        )));
    }
    // A workgroup size given by constants (`LocalSizeId`, what glslang
    // writes for SPIR-V 1.6) is the plain `LocalSize` of their values now.
    for &i in &insts {
        if op(&words, i) == s::EXECUTION_MODE_ID
            && len(&words, i) == 6
            && words[i + 2] == s::MODE_LOCAL_SIZE_ID
        {
            let dims: Option<Vec<u32>> = (0..3)
                .map(|d| scalars.get(&words[i + 3 + d]).copied())
                .collect();
            if let Some(dims) = dims {
                words[i] = (words[i] & 0xffff_0000) | u32::from(s::EXECUTION_MODE);
                words[i + 2] = s::MODE_LOCAL_SIZE;
                words[i + 3..i + 6].copy_from_slice(&dims);
            }
        }
    }
    // Without their `SpecId` the constants are plain ones to naga (an
    // array they size gets its length).
    let mut out = words[..5.min(words.len())].to_vec();
    let mut next = 5;
    for &i in &insts {
        let n = len(&words, i);
        let spec_id =
            op(&words, i) == s::DECORATE && n >= 3 && words[i + 2] == s::DECORATION_SPEC_ID;
        if !spec_id {
            out.extend_from_slice(&words[i..i + n]);
        }
        next = i + n;
    }
    // Whatever did not form an instruction stays for naga to refuse.
    out.extend_from_slice(&words[next.min(words.len())..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::shader::tests::LIMITS;
    use crate::shader::{compile, spec, PipelineSpec};

    fn words(s: &PipelineSpec) -> Vec<u8> {
        s.spirv.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Overrides take their default, a value for every entry point, or a
    /// value for one; they size workgroups and workgroup arrays.
    #[test]
    fn wgsl_overrides() {
        let src = br"
            override block: u32 = 64;
            override scale: f32 = 1.0;
            @id(7) override flag: bool = false;
            var<workgroup> tile: array<f32, block>;
            @group(0) @binding(0) var<storage, read_write> d: array<f32>;
            @compute @workgroup_size(block)
            fn a(@builtin(local_invocation_index) i: u32) {
                tile[i] = d[i] * scale;
                workgroupBarrier();
                if flag { d[i] = tile[block - 1u - i]; } else { d[i] = tile[i]; }
            }
            @compute @workgroup_size(block)
            fn b(@builtin(local_invocation_index) i: u32) { d[i] = scale; }
        ";
        let p = compile(src, &LIMITS).unwrap();
        assert_eq!((p[0].workgroup, p[1].workgroup), ([64, 1, 1], [64, 1, 1]));
        let img = spec::Specialized::new(src)
            .set("block", 32.0)
            .set("7", 1.0)
            .set_for("b", "block", 16.0)
            .image();
        let p = compile(&img, &LIMITS).unwrap();
        assert_eq!((p[0].workgroup, p[1].workgroup), ([32, 1, 1], [16, 1, 1]));
        // What the driver gets has no override left (it parses again).
        assert_eq!(
            compile(&words(&p[0]), &LIMITS).unwrap()[0].workgroup,
            [32, 1, 1]
        );
        for (img, want) in [
            (
                spec::Specialized::new(src).set("nope", 1.0).image(),
                "no override or specialization constant \"nope\"",
            ),
            (
                spec::Specialized::new(src)
                    .set_for("c", "block", 1.0)
                    .image(),
                "entry point \"c\", which the module does not have",
            ),
            (
                spec::Specialized::new(src).set("block", 2048.0).image(),
                "beyond the device",
            ),
            (
                spec::Specialized::new(src).set("block", -1.0).image(),
                "specialization",
            ),
        ] {
            let e = compile(&img, &LIMITS).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
