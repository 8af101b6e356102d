//! Validation against the device: the push-constant layout first, then
//! naga's validator with the device's capabilities; a refusal names the
//! feature the device lacks, or the cause (placed in the WGSL source).

use super::{chain, ShaderError, ShaderLimits};
use coproc_proto::gpu::PUSH_WORDS;
use naga::valid::{
    Capabilities, ModuleInfo, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator,
};
use naga::{AddressSpace, Module};

/// Optional capabilities, in the words a shader author knows them by.
const FEATURE_WORDS: &[(Capabilities, &str)] = &[
    (Capabilities::SHADER_FLOAT16, "f16 (16-bit floats)"),
    (Capabilities::FLOAT64, "f64 (64-bit floats)"),
    (Capabilities::SHADER_INT64, "i64/u64 (64-bit integers)"),
    (
        Capabilities::SHADER_INT64_ATOMIC_MIN_MAX.union(Capabilities::SHADER_INT64_ATOMIC_ALL_OPS),
        "64-bit atomics",
    ),
    (Capabilities::SHADER_INT16, "i16/u16 (16-bit integers)"),
    (
        Capabilities::SUBGROUP.union(Capabilities::SUBGROUP_BARRIER),
        "subgroup operations",
    ),
    (Capabilities::SHADER_FLOAT32_ATOMIC, "f32 atomics"),
    (
        Capabilities::STORAGE_BUFFER_BINDING_ARRAY
            .union(Capabilities::BUFFER_BINDING_ARRAY)
            .union(Capabilities::STORAGE_BUFFER_BINDING_ARRAY_NON_UNIFORM_INDEXING)
            .union(Capabilities::BUFFER_BINDING_ARRAY_NON_UNIFORM_INDEXING),
        "binding arrays",
    ),
    (Capabilities::COOPERATIVE_MATRIX, "cooperative matrices"),
    (Capabilities::RAY_QUERY, "ray queries"),
    (Capabilities::TEXTURE_ATOMIC, "texture atomics"),
];

/// Validate `module` against the device; `source` (WGSL text) places a
/// refusal in the source.
pub(super) fn validate(
    module: &Module,
    limits: &ShaderLimits,
    source: Option<&str>,
) -> Result<ModuleInfo, ShaderError> {
    let caps = limits.features.capabilities();
    let run = |caps: Capabilities, ops: SubgroupOperationSet| {
        let mut v = Validator::new(ValidationFlags::all(), caps);
        v.subgroup_stages(if ops.is_empty() {
            ShaderStages::empty()
        } else {
            ShaderStages::COMPUTE
        });
        v.subgroup_operations(ops);
        v.validate(module).map_err(Box::new)
    };
    let ops = limits.features.subgroup_ops;
    let err = match run(caps, ops) {
        Ok(info) => return Ok(info),
        Err(e) => e,
    };
    // Would the module pass with a feature the device lacks? Then that is
    // the reason, in the author's words.
    let all_ops = SubgroupOperationSet::all();
    let missing: Vec<&str> = FEATURE_WORDS
        .iter()
        .filter(|(cap, _)| !caps.contains(*cap))
        .filter(|(cap, _)| run(caps | *cap, all_ops).is_ok())
        .map(|(_, w)| *w)
        .collect();
    if let Some(w) = missing.first() {
        return Err(ShaderError::Feature((*w).to_string()));
    }
    if !ops.is_empty() && ops != all_ops && run(caps, all_ops).is_ok() {
        return Err(ShaderError::Feature(format!(
            "subgroup operations beyond those this GPU has ({ops:?})"
        )));
    }
    let mut msg = chain(err.as_inner());
    // naga's words for a store through a read-only pointer.
    if msg.contains("doesn't relate to a valid destination for a store") {
        msg.push_str(" (a write to a read-only buffer or a constant)");
    }
    if let Some(text) = source {
        let located = err.emit_to_string(text);
        if let Some(at) = located.lines().find(|l| l.trim_start().starts_with("┌─")) {
            msg.push_str(&format!(
                " at {}",
                at.trim_start().trim_start_matches("┌─").trim()
            ));
        }
    }
    Err(ShaderError::Invalid(msg))
}

/// The layout first (naga's validator starts the same way), so that push
/// constants larger than this class allows are refused before the
/// validator sees them: its bitmask of the push-constant words a function
/// uses overflows past 256 bytes (naga 30 panics with overflow checks on,
/// and computes a wrong mask without).
pub(super) fn check_push_size(module: &Module) -> Result<(), ShaderError> {
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| ShaderError::Invalid(chain(&e)))?;
    for (_, var) in module.global_variables.iter() {
        if var.space != AddressSpace::Immediate {
            continue;
        }
        if module.types.get_handle(var.ty).is_err() {
            return Err(ShaderError::Invalid("global of an unknown type".into()));
        }
        let bytes = layouter[var.ty].size;
        if bytes > PUSH_WORDS * 4 {
            return Err(ShaderError::Unsupported(format!(
                "{bytes} bytes of push constants (most: {})",
                PUSH_WORDS * 4
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::shader::tests::LIMITS;
    use crate::shader::{compile, ShaderError};

    /// Found by the `shader` fuzz target (a mutated matmul.spv): push
    /// constants over 256 bytes made naga's validator overflow a shift
    /// (a panic with overflow checks on). They are refused before it runs.
    #[test]
    fn oversized_push_constants_refused_before_validation() {
        let src = r"
            var<immediate> p: array<u32, 80>;
            @group(0) @binding(0) var<storage, read_write> y: array<u32>;
            @compute @workgroup_size(1)
            fn main() { y[0] = p[70]; }
        ";
        assert_eq!(
            compile(src.as_bytes(), &LIMITS).unwrap_err(),
            ShaderError::Unsupported("320 bytes of push constants (most: 128)".into())
        );
        let spv = include_bytes!("../../../../fuzz/corpus/shader/regress-immediates-overflow.spv");
        assert!(matches!(
            compile(spv, &LIMITS),
            Err(ShaderError::Unsupported(_) | ShaderError::Invalid(_))
        ));
    }

    /// The whole chain of a validation error is shown, not only the entry
    /// point's name.
    #[test]
    fn errors_show_their_cause() {
        let src = b"@group(0) @binding(0) var<storage, read> d: array<u32>;\n\
            @compute @workgroup_size(1) fn main() { d[0] = 1u; }";
        let e = compile(src, &LIMITS).unwrap_err().to_string();
        assert!(
            e.contains("main") && e.contains("read-only") && e.contains("wgsl:2:"),
            "{e}"
        );
    }
}
