//! SPIR-V emission: naga's writer, one entry point at a time, with bounds
//! checks on every access (out-of-bounds reads give zero, writes are
//! dropped).

use super::{chain, ShaderError, ShaderLimits};
use naga::valid::ModuleInfo;
use naga::{Module, ShaderStage};

/// The writer's options: groups and bindings as declared, out-of-bounds
/// reads zero and writes dropped.
pub(super) fn options() -> naga::back::spv::Options<'static> {
    let mut options = naga::back::spv::Options {
        lang_version: (1, 3),
        flags: naga::back::spv::WriterFlags::empty(),
        // No binding map: groups and bindings are written as declared.
        fake_missing_bindings: true,
        ..Default::default()
    };
    // Out-of-bounds reads give zero and writes are dropped, not clamped
    // onto the last element.
    let skip = naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite;
    options.bounds_check_policies = naga::proc::BoundsCheckPolicies {
        index: skip,
        buffer: skip,
        image_load: skip,
        binding_array: naga::proc::BoundsCheckPolicy::Restrict,
    };
    options
}

/// The SPIR-V of entry point `name` of `module`, written with `options`
/// (clamped instead where naga cannot skip an access: atomics).
pub(super) fn write(
    module: &Module,
    info: &ModuleInfo,
    name: &str,
    limits: &ShaderLimits,
    options: &naga::back::spv::Options,
) -> Result<Vec<u32>, ShaderError> {
    let write = |options: &naga::back::spv::Options| {
        naga::back::spv::write_vec(
            module,
            info,
            options,
            Some(&naga::back::spv::PipelineOptions {
                shader_stage: ShaderStage::Compute,
                entry_point: name.to_string(),
            }),
        )
    };
    match write(options) {
        // naga cannot skip an atomic operation out of bounds: such a
        // module has its indices clamped instead, and its buffer accesses
        // left to the device where it drops them itself (robustness2),
        // else clamped into the bound range too.
        Err(naga::back::spv::Error::FeatureNotImplemented(what)) if what.contains("Atomics") => {
            let mut clamped = options.clone();
            let restrict = naga::proc::BoundsCheckPolicy::Restrict;
            clamped.bounds_check_policies.index = restrict;
            clamped.bounds_check_policies.buffer = if limits.robust_buffers {
                naga::proc::BoundsCheckPolicy::Unchecked
            } else {
                restrict
            };
            write(&clamped)
        }
        other => other,
    }
    .map_err(|e| ShaderError::Write(chain(&e)))
}
