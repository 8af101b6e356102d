//! Firmware for the `vulkan` class: a SPIR-V module or WGSL source, parsed
//! and validated by naga, then written out again as SPIR-V with bounds
//! checks on every buffer access. The driver only ever sees SPIR-V that
//! naga produced from a module it validated, whatever the domain sent.
//!
//! Each compute entry point becomes one pipeline, numbered in the order the
//! module declares them. A pipeline may use storage buffers at group 0,
//! bindings 0..8, and push constants (`var<immediate>` in WGSL,
//! `layout(push_constant)` in GLSL) up to 128 bytes; anything else (uniform
//! buffers, textures, other groups) is refused.

use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use coproc_proto::gpu::{PUSH_WORDS, SLOTS};
use naga::valid::{Capabilities, GlobalUse, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess};
use thiserror::Error;

/// SPIR-V's magic number (first word of a module).
pub const SPIRV_MAGIC: u32 = 0x0723_0203;

/// Why a firmware image was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShaderError {
    /// Neither SPIR-V nor UTF-8 text.
    #[error("not SPIR-V and not WGSL text")]
    Format,
    /// The front end refused it.
    #[error("{lang} does not parse: {msg}")]
    Parse {
        /// "SPIR-V" or "WGSL".
        lang: &'static str,
        /// naga's message.
        msg: String,
    },
    /// The validator refused it.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// Valid, but not something this class runs.
    #[error("{0}")]
    Unsupported(String),
    /// The SPIR-V writer failed.
    #[error("cannot write SPIR-V: {0}")]
    Write(String),
    /// naga panicked on this module (a bug in naga, contained).
    #[error("the shader compiler failed on this module: {0}")]
    Panicked(String),
}

/// Device limits a module is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ShaderLimits {
    /// Most invocations in one workgroup.
    pub max_invocations: u32,
    /// Most invocations along each axis of a workgroup.
    pub max_size: [u32; 3],
}

/// A buffer a pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingSpec {
    /// Binding number in set 0 (the slot it reads).
    pub binding: u32,
    /// Whether the shader may write it (declared writable and written).
    pub writable: bool,
    /// Fewest bytes the bound range must hold (the fixed part of the type,
    /// or one element of a runtime-sized array).
    pub min_bytes: u64,
}

/// One compute pipeline of a firmware.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Entry point name.
    pub name: String,
    /// SPIR-V written by naga for this entry point alone.
    pub spirv: Vec<u32>,
    /// The buffers it uses, by binding.
    pub bindings: Vec<BindingSpec>,
    /// Bytes of push constants it uses (0: none).
    pub push_bytes: u32,
    /// Workgroup size.
    pub workgroup: [u32; 3],
}

/// A firmware image compiled by [`ShaderPrep`]: its pipelines' SPIR-V and
/// reflection, ready for pipeline creation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// One per compute entry point, in declaration order.
    pub pipelines: Vec<PipelineSpec>,
}

/// The vulkan class's [`FirmwarePrep`]: parses, validates and rewrites an
/// image with naga ([`compile`]) on the loading thread, against the limits
/// of the device it came from. It needs no `VkDevice`: only creating the
/// pipelines is left to the runner.
#[derive(Debug, Clone, Copy)]
pub struct ShaderPrep {
    /// The limits modules are checked against.
    pub limits: ShaderLimits,
}

impl FirmwarePrep for ShaderPrep {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        let pipelines =
            compile(image, &self.limits).map_err(|e| DeviceError::BadFirmware(e.to_string()))?;
        Ok(Box::new(Compiled { pipelines }))
    }
}

/// Parse, validate and rewrite a firmware image into its pipelines.
///
/// naga is not written for hostile input and some of its paths panic on
/// it (its SPIR-V front end unwraps a layout that can fail), so a panic
/// anywhere in here refuses the image instead of unwinding into the
/// domain's thread (in `coprocd`, the session).
pub fn compile(image: &[u8], limits: &ShaderLimits) -> Result<Vec<PipelineSpec>, ShaderError> {
    // Unwind safe: the closure only reads `image` and `limits`; everything
    // it builds is its own and dropped on a panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compile_module(image, limits)
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(ShaderError::Panicked(msg))
    })
}

fn compile_module(image: &[u8], limits: &ShaderLimits) -> Result<Vec<PipelineSpec>, ShaderError> {
    let is_spirv = image.len() >= 20
        && image.len().is_multiple_of(4)
        && u32::from_le_bytes([image[0], image[1], image[2], image[3]]) == SPIRV_MAGIC;
    let module = if is_spirv {
        let opts = naga::front::spv::Options {
            adjust_coordinate_space: false,
            strict_capabilities: true,
            block_ctx_dump_prefix: None,
        };
        naga::front::spv::parse_u8_slice(image, &opts).map_err(|e| ShaderError::Parse {
            lang: "SPIR-V",
            msg: e.to_string(),
        })?
    } else {
        let text = std::str::from_utf8(image).map_err(|_| ShaderError::Format)?;
        naga::front::wgsl::parse_str(text).map_err(|e| ShaderError::Parse {
            lang: "WGSL",
            msg: e.message().to_string(),
        })?
    };
    // The layout first (naga's validator starts the same way), so that
    // push constants larger than this class allows are refused before the
    // validator sees them: its bitmask of the push-constant words a
    // function uses overflows past 256 bytes (naga 30 panics with overflow
    // checks on, and computes a wrong mask without).
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| ShaderError::Invalid(e.to_string()))?;
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
    let info = Validator::new(ValidationFlags::all(), Capabilities::IMMEDIATES)
        .validate(&module)
        .map_err(|e| ShaderError::Invalid(e.as_inner().to_string()))?;

    let mut options = naga::back::spv::Options {
        lang_version: (1, 3),
        flags: naga::back::spv::WriterFlags::empty(),
        // No binding map: groups and bindings are written as declared.
        fake_missing_bindings: true,
        ..Default::default()
    };
    let restrict = naga::proc::BoundsCheckPolicy::Restrict;
    options.bounds_check_policies = naga::proc::BoundsCheckPolicies {
        index: restrict,
        buffer: restrict,
        image_load: restrict,
        binding_array: restrict,
    };

    let mut out = Vec::new();
    for (i, ep) in module.entry_points.iter().enumerate() {
        if ep.stage != ShaderStage::Compute {
            continue;
        }
        let uses = info.get_entry_point(i);
        let mut bindings = Vec::new();
        let mut push_bytes = 0u32;
        for (handle, var) in module.global_variables.iter() {
            if uses[handle].is_empty() {
                continue;
            }
            match var.space {
                AddressSpace::Storage { access } => {
                    let b = var.binding.as_ref().ok_or_else(|| {
                        ShaderError::Unsupported("storage buffer without a binding".into())
                    })?;
                    if b.group != 0 || b.binding >= SLOTS {
                        return Err(ShaderError::Unsupported(format!(
                            "entry point {:?}: binding ({}, {}) outside group 0, bindings 0..{SLOTS}",
                            ep.name, b.group, b.binding
                        )));
                    }
                    bindings.push(BindingSpec {
                        binding: b.binding,
                        // Declared writable and written (or used atomically)
                        // by this entry point: glslang marks `readonly` on
                        // members, which the SPIR-V front end does not
                        // carry over, and naga's use analysis is exact.
                        writable: access.contains(StorageAccess::STORE)
                            && uses[handle].intersects(GlobalUse::WRITE | GlobalUse::ATOMIC),
                        min_bytes: u64::from(layouter[var.ty].size).max(4),
                    });
                }
                AddressSpace::Immediate => {
                    push_bytes = layouter[var.ty].size;
                    if push_bytes > PUSH_WORDS * 4 {
                        return Err(ShaderError::Unsupported(format!(
                            "entry point {:?}: {push_bytes} bytes of push constants (most: {})",
                            ep.name,
                            PUSH_WORDS * 4
                        )));
                    }
                }
                AddressSpace::Function | AddressSpace::Private | AddressSpace::WorkGroup => {}
                other => {
                    return Err(ShaderError::Unsupported(format!(
                        "entry point {:?}: only storage buffers and push constants can be bound, not {other:?}",
                        ep.name
                    )));
                }
            }
        }
        bindings.sort_by_key(|b| b.binding);
        let wg = ep.workgroup_size;
        let invocations = wg.iter().map(|&d| u64::from(d)).product::<u64>();
        if invocations == 0
            || invocations > u64::from(limits.max_invocations)
            || wg.iter().zip(limits.max_size).any(|(&d, m)| d > m)
        {
            return Err(ShaderError::Unsupported(format!(
                "entry point {:?}: workgroup {wg:?} beyond the device's limits ({} invocations, {:?})",
                ep.name, limits.max_invocations, limits.max_size
            )));
        }
        let spirv = naga::back::spv::write_vec(
            &module,
            &info,
            &options,
            Some(&naga::back::spv::PipelineOptions {
                shader_stage: ShaderStage::Compute,
                entry_point: ep.name.clone(),
            }),
        )
        .map_err(|e| ShaderError::Write(e.to_string()))?;
        out.push(PipelineSpec {
            name: ep.name.clone(),
            spirv,
            bindings,
            push_bytes,
            workgroup: wg,
        });
    }
    if out.is_empty() {
        return Err(ShaderError::Unsupported(
            "no compute entry point in the module".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShaderLimits = ShaderLimits {
        max_invocations: 1024,
        max_size: [1024, 1024, 64],
    };

    /// Found by the `shader` fuzz target (a mutated matmul.spv): push
    /// constants over 256 bytes made naga's validator overflow a shift
    /// (a panic with overflow checks on). They are refused before it runs.
    #[test]
    fn oversized_push_constants_refused_before_validation() {
        let src = r#"
            var<immediate> p: array<u32, 80>;
            @group(0) @binding(0) var<storage, read_write> y: array<u32>;
            @compute @workgroup_size(1)
            fn main() { y[0] = p[70]; }
        "#;
        assert_eq!(
            compile(src.as_bytes(), &LIMITS).unwrap_err(),
            ShaderError::Unsupported("320 bytes of push constants (most: 128)".into())
        );
        let spv = include_bytes!("../../../fuzz/corpus/shader/regress-immediates-overflow.spv");
        assert!(matches!(
            compile(spv, &LIMITS),
            Err(ShaderError::Unsupported(_) | ShaderError::Invalid(_))
        ));
    }

    /// Found by the `shader` fuzz target: a SPIR-V struct whose layout
    /// fails (too large) made naga's SPIR-V front end unwrap an error and
    /// panic, in every build. The panic is contained and the image refused.
    #[test]
    fn naga_front_end_panic_is_contained() {
        let spv = include_bytes!("../../../fuzz/corpus/shader/regress-spv-layout-panic.spv");
        assert!(matches!(
            compile(spv, &LIMITS),
            Err(ShaderError::Panicked(_))
        ));
    }

    #[test]
    fn wgsl_reflection() {
        let src = r#"
            struct P { a: f32, n: u32 }
            var<immediate> p: P;
            @group(0) @binding(0) var<storage, read> x: array<f32>;
            @group(0) @binding(1) var<storage, read_write> y: array<f32>;
            @compute @workgroup_size(64)
            fn main(@builtin(global_invocation_id) id: vec3<u32>) {
                if id.x < p.n { y[id.x] = p.a * x[id.x] + y[id.x]; }
            }
            @compute @workgroup_size(8, 8)
            fn other(@builtin(global_invocation_id) id: vec3<u32>) { y[id.x] = 1.0; }
        "#;
        let p = compile(src.as_bytes(), &LIMITS).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "main");
        assert_eq!(p[0].push_bytes, 8);
        assert_eq!(p[0].workgroup, [64, 1, 1]);
        assert_eq!(
            p[0].bindings,
            vec![
                BindingSpec {
                    binding: 0,
                    writable: false,
                    min_bytes: 4
                },
                BindingSpec {
                    binding: 1,
                    writable: true,
                    min_bytes: 4
                }
            ]
        );
        assert_eq!(p[0].spirv[0], SPIRV_MAGIC);
        assert_eq!(p[1].bindings.len(), 1, "only what the entry point uses");
        assert_eq!(p[1].push_bytes, 0);
        // The written SPIR-V parses again (the SPIR-V path).
        let bytes: Vec<u8> = p[0].spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
        let again = compile(&bytes, &LIMITS).unwrap();
        assert_eq!(again[0].bindings, p[0].bindings);
    }

    #[test]
    fn refuses_bad_modules() {
        let bad: &[(&[u8], &str)] = &[
            (b"\xff\xfe\x00", "not SPIR-V"),
            (b"fn main( {", "does not parse"),
            (
                b"@compute @workgroup_size(1) fn main() { let x: u32 = 1.0; }",
                "WGSL does not parse",
            ),
            (
                b"@group(1) @binding(0) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = 1u; }",
                "group 0",
            ),
            (
                b"@group(0) @binding(9) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = 1u; }",
                "bindings 0..8",
            ),
            (
                b"@group(0) @binding(0) var<uniform> u: vec4<u32>;\n\
                  @group(0) @binding(1) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = u.x; }",
                "only storage buffers",
            ),
            (
                b"@compute @workgroup_size(1024, 1024) fn main() {}",
                "beyond the device",
            ),
            (
                b"@vertex fn main() -> @builtin(position) vec4<f32> { return vec4<f32>(); }",
                "no compute entry point",
            ),
        ];
        for (img, want) in bad {
            let e = compile(img, &LIMITS).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        // Broken SPIR-V: the right magic, garbage after it.
        let mut spv = SPIRV_MAGIC.to_le_bytes().to_vec();
        spv.extend_from_slice(&[0xab; 60]);
        let e = compile(&spv, &LIMITS).unwrap_err();
        assert!(
            matches!(e, ShaderError::Parse { lang: "SPIR-V", .. }),
            "{e}"
        );
    }
}
