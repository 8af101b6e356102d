//! Firmware for the `vulkan` class: a SPIR-V module or WGSL source, parsed
//! and validated by naga, then written out again as SPIR-V with bounds
//! checks on every buffer access. The driver only ever sees SPIR-V that
//! naga produced from a module it validated, whatever the domain sent.
//!
//! Each compute entry point becomes one pipeline, numbered in the order the
//! module declares them. A pipeline may use storage and uniform buffers in
//! any bind group (descriptor set) the device has, bindings
//! `0..MAX_BINDING`, and push constants (`var<immediate>` or wgpu's
//! `var<push_constant>` in WGSL, `layout(push_constant)` in GLSL) up to 128
//! bytes. WGSL `override`s and SPIR-V specialization constants take their
//! defaults or the values the image carries ([`coproc_proto::shader`]),
//! per entry point; they are resolved before the SPIR-V is written.
//! Optional shader features (f16, f64, 64- and 16-bit integers, subgroup
//! operations, 64-bit atomics) are accepted exactly when the device has
//! them ([`ShaderFeatures`]). 2D sampled textures, 2D storage images and
//! samplers are reflected like buffers; other image kinds (1D, 3D, cube,
//! arrayed, multisampled, depth), comparison samplers and external
//! textures are refused, by name.
//!
//! Out-of-bounds accesses: reads return zero and writes are dropped
//! (naga's `ReadZeroSkipWrite` rewrite), whatever the device's robustness.
//!
//! Here the types and [`compile`], which runs the stages in turn, one
//! module each: `front` (SPIR-V and WGSL parsed), `validate` (against the
//! device), `specialize` (values per entry point, SPIR-V specialization
//! constants), `reflect` (an entry point's bindings, push constants and
//! workgroup, checked against the limits) and `emit` (its SPIR-V).

mod emit;
mod front;
mod reflect;
mod specialize;
mod validate;

use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use coproc_proto::gpu::ImageFormat;
use coproc_proto::shader as spec;
use naga::valid::{Capabilities, ModuleInfo};
use naga::{Module, ShaderStage};
use std::borrow::Cow;
use thiserror::Error;

/// naga's set of subgroup operations ([`ShaderFeatures::subgroup_ops`]).
pub use naga::valid::SubgroupOperationSet;

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
        /// naga's message (the whole chain, with the source location for
        /// WGSL).
        msg: String,
    },
    /// The validator refused it.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module uses a shader feature this GPU does not have.
    #[error("the shader uses {0}, which this GPU does not support")]
    Feature(String),
    /// Specialization values that do not fit the module.
    #[error("specialization: {0}")]
    Specialization(String),
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

/// Optional shader features of the device (what its Vulkan features allow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShaderFeatures {
    /// `f16` (shaderFloat16 and 16-bit storage buffer access).
    pub f16: bool,
    /// `f64` (shaderFloat64).
    pub f64: bool,
    /// `i64`/`u64` (shaderInt64).
    pub i64: bool,
    /// 64-bit atomics on storage buffers (shaderBufferInt64Atomics).
    pub i64_atomics: bool,
    /// `i16`/`u16` (shaderInt16 and 16-bit storage buffer access).
    pub i16: bool,
    /// Subgroup operations in compute shaders, and which.
    pub subgroup_ops: SubgroupOperationSet,
    /// Invocations per subgroup (0: unknown).
    pub subgroup_size: u32,
}

impl ShaderFeatures {
    /// naga's capabilities for these features.
    pub fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::IMMEDIATES;
        for (on, cap) in [
            (self.f16, Capabilities::SHADER_FLOAT16),
            (self.f64, Capabilities::FLOAT64),
            (self.i64, Capabilities::SHADER_INT64),
            (
                self.i64 && self.i64_atomics,
                Capabilities::SHADER_INT64_ATOMIC_MIN_MAX
                    | Capabilities::SHADER_INT64_ATOMIC_ALL_OPS,
            ),
            (self.i16, Capabilities::SHADER_INT16),
            (
                !self.subgroup_ops.is_empty(),
                Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER,
            ),
        ] {
            if on {
                c |= cap;
            }
        }
        c
    }

    /// The features' names, as a shader author writes them.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, name) in [
            (self.f16, "f16"),
            (self.f64, "f64"),
            (self.i64, "i64"),
            (self.i64 && self.i64_atomics, "i64-atomics"),
            (self.i16, "i16"),
            (!self.subgroup_ops.is_empty(), "subgroups"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// Device limits a module is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ShaderLimits {
    /// Most invocations in one workgroup.
    pub max_invocations: u32,
    /// Most invocations along each axis of a workgroup.
    pub max_size: [u32; 3],
    /// Bind groups (descriptor sets) a pipeline may use: groups
    /// `0..max_groups` (at most
    /// [`MAX_GROUPS`](coproc_proto::gpu::MAX_GROUPS)).
    pub max_groups: u32,
    /// Most storage buffers one pipeline uses.
    pub max_storage_buffers: u32,
    /// Most uniform buffers one pipeline uses.
    pub max_uniform_buffers: u32,
    /// Largest uniform buffer, bytes.
    pub max_uniform_bytes: u32,
    /// Most workgroup memory (`var<workgroup>`, GLSL `shared`) one entry
    /// point uses, bytes.
    pub max_workgroup_bytes: u32,
    /// The optional features the device has.
    pub features: ShaderFeatures,
    /// Whether the device itself drops out-of-bounds buffer writes and
    /// reads zero (`VK_EXT_robustness2`'s `robustBufferAccess2`).
    pub robust_buffers: bool,
    /// Whether the device drops out-of-bounds image writes
    /// (`robustImageAccess2`): storage images need it, as naga does not
    /// check image stores.
    pub robust_images: bool,
    /// Most images (storage or sampled) and most samplers one pipeline
    /// uses.
    pub max_images: u32,
    /// Most samplers one pipeline uses.
    pub max_samplers: u32,
}

impl ShaderLimits {
    /// The least every Vulkan device has (the specification's minimum
    /// limits, no optional feature).
    pub const BASE: ShaderLimits = ShaderLimits {
        max_invocations: 128,
        max_size: [128, 128, 64],
        max_groups: 4,
        max_storage_buffers: 4,
        max_uniform_buffers: 12,
        max_uniform_bytes: 16384,
        max_workgroup_bytes: 16384,
        features: ShaderFeatures {
            f16: false,
            f64: false,
            i64: false,
            i64_atomics: false,
            i16: false,
            subgroup_ops: SubgroupOperationSet::empty(),
            subgroup_size: 0,
        },
        robust_buffers: false,
        robust_images: false,
        max_images: 4,
        max_samplers: 16,
    };
}

/// How a binding is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// A storage buffer (`var<storage>`, GLSL `buffer`).
    Storage,
    /// A uniform buffer (`var<uniform>`, GLSL `uniform` block).
    Uniform,
    /// A 2D storage image (`texture_storage_2d<format, access>`, GLSL
    /// `image2D` with a format) of this format.
    StorageImage(ImageFormat),
    /// A 2D sampled texture (`texture_2d<T>`, GLSL `texture2D`) whose
    /// texels read as floats (`Some(false)`: unsigned, `Some(true)`:
    /// signed integers; `None`: floats).
    SampledImage(Option<bool>),
    /// A sampler (`sampler`, GLSL `sampler`).
    Sampler,
}

impl BindingKind {
    /// Whether an image of `format` can be bound here.
    pub fn takes(&self, format: ImageFormat) -> bool {
        use ImageFormat::{R32Float, R32Sint, R32Uint, Rgba32Float, Rgba8Uint, Rgba8Unorm};
        match *self {
            BindingKind::StorageImage(f) => f == format,
            BindingKind::SampledImage(None) => {
                matches!(format, Rgba8Unorm | R32Float | Rgba32Float)
            }
            BindingKind::SampledImage(Some(false)) => matches!(format, Rgba8Uint | R32Uint),
            BindingKind::SampledImage(Some(true)) => matches!(format, R32Sint),
            _ => false,
        }
    }
}

/// A buffer a pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingSpec {
    /// Bind group (descriptor set).
    pub group: u32,
    /// Binding number in the group.
    pub binding: u32,
    /// Storage or uniform.
    pub kind: BindingKind,
    /// Whether the shader may write it (declared writable and written).
    pub writable: bool,
    /// Fewest bytes the bound range must hold (the fixed part of the type,
    /// or one element of a runtime-sized array; a uniform's whole type).
    pub min_bytes: u64,
}

/// One compute pipeline of a firmware.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Entry point name.
    pub name: String,
    /// SPIR-V written by naga for this entry point alone, specialized.
    pub spirv: Vec<u32>,
    /// The buffers it uses, by (group, binding).
    pub bindings: Vec<BindingSpec>,
    /// Bytes of push constants it uses (0: none).
    pub push_bytes: u32,
    /// Workgroup size (after specialization).
    pub workgroup: [u32; 3],
}

impl PipelineSpec {
    /// Descriptor set layouts the pipeline needs: one per group up to the
    /// highest it uses (empty ones included).
    pub fn groups(&self) -> u32 {
        self.bindings.iter().map(|b| b.group + 1).max().unwrap_or(0)
    }
}

/// A firmware image compiled by [`ShaderPrep`]: its pipelines' SPIR-V and
/// reflection, ready for pipeline creation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// One per compute entry point, in declaration order.
    pub pipelines: Vec<PipelineSpec>,
}

/// A [`FirmwarePrep`] that only runs naga ([`compile`]) against the given
/// limits, with no `VkDevice`: what it makes installs like the class's own
/// (whose `firmware_prep` also builds and tries the pipelines off the
/// runner), the runner creating the pipelines then.
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

/// Parse, validate, specialize and rewrite a firmware image into its
/// pipelines.
///
/// naga is not written for hostile input and some of its paths panic on
/// it (its SPIR-V front end unwraps a layout that can fail), so a panic
/// anywhere in here refuses the image instead of unwinding into the
/// domain's thread (in `coprocd`, the session).
pub fn compile(image: &[u8], limits: &ShaderLimits) -> Result<Vec<PipelineSpec>, ShaderError> {
    // Unwind safe: the closure only reads `image` and `limits`; everything
    // it builds is its own and dropped on a panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compile_image(image, limits)
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(std::string::ToString::to_string)
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(ShaderError::Panicked(msg))
    })
}

/// An error and every error it came from, joined by ": " (naga's top
/// level alone often names only the entry point or a type handle).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// [`compile`], the stages in turn: front end, validation, specialization
/// per entry point, reflection and SPIR-V emission.
fn compile_image(image: &[u8], limits: &ShaderLimits) -> Result<Vec<PipelineSpec>, ShaderError> {
    let (values, shader) =
        spec::decode(image).map_err(|e| ShaderError::Specialization(e.to_string()))?;
    let is_spirv = shader.len() >= 20
        && shader.len().is_multiple_of(4)
        && u32::from_le_bytes([shader[0], shader[1], shader[2], shader[3]]) == SPIRV_MAGIC;
    let globals = specialize::values_for(&values, "");
    let module = front::front(shader, is_spirv, &globals)?;
    validate::check_push_size(&module)?;
    let text = if is_spirv {
        None
    } else {
        std::str::from_utf8(shader).ok().map(front::wgpu_spellings)
    };
    let info = validate::validate(&module, limits, text.as_deref())?;
    for v in &values {
        if let Some(e) = &v.entry {
            if !module
                .entry_points
                .iter()
                .any(|ep| ep.stage == ShaderStage::Compute && ep.name == *e)
            {
                return Err(ShaderError::Specialization(format!(
                    "value for {:?} of entry point {e:?}, which the module does not have",
                    v.name
                )));
            }
        }
    }

    let options = emit::options();
    let mut out = Vec::new();
    for ep in &module.entry_points {
        if ep.stage != ShaderStage::Compute {
            continue;
        }
        let ep_values = specialize::values_for(&values, &ep.name);
        let own = values.iter().any(|v| v.entry.as_deref() == Some(&ep.name));
        // SPIR-V specialization constants are substituted before parsing
        // (an array they size must have its length then); WGSL overrides
        // are resolved by naga per entry point.
        let (m, inf): (Cow<'_, Module>, Cow<'_, ModuleInfo>) = if is_spirv && own {
            let m = front::front(shader, true, &ep_values)?;
            validate::check_push_size(&m)?;
            let inf = validate::validate(&m, limits, None)?;
            (Cow::Owned(m), Cow::Owned(inf))
        } else {
            (Cow::Borrowed(&module), Cow::Borrowed(&info))
        };
        let mut constants = naga::back::PipelineConstants::default();
        if !is_spirv {
            for (k, v) in ep_values {
                constants.insert(k, v);
            }
        }
        let (m, inf) = naga::back::pipeline_constants::process_overrides(
            &m,
            &inf,
            Some((ShaderStage::Compute, &ep.name)),
            &constants,
        )
        .map_err(|e| specialize::override_error(&ep.name, &e))?;
        out.push(reflect::pipeline(&m, &inf, &ep.name, limits, &options)?);
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

    pub(super) const LIMITS: ShaderLimits = ShaderLimits {
        max_invocations: 1024,
        max_size: [1024, 1024, 64],
        ..ShaderLimits::BASE
    };

    /// Found by the `shader` fuzz target: a SPIR-V struct whose layout
    /// fails (too large) made naga's SPIR-V front end unwrap an error and
    /// panic, in every build. The panic is contained and the image refused.
    #[test]
    fn naga_front_end_panic_is_contained() {
        let spv = include_bytes!("../../../../fuzz/corpus/shader/regress-spv-layout-panic.spv");
        assert!(matches!(
            compile(spv, &LIMITS),
            Err(ShaderError::Panicked(_))
        ));
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
                b"@group(4) @binding(0) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = 1u; }",
                "@group(4) @binding(0) beyond what this GPU binds (groups below 4",
            ),
            (
                b"@group(0) @binding(32) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = 1u; }",
                "bindings below 32",
            ),
            (
                b"@group(0) @binding(0) var t: texture_2d_array<f32>;\n\
                  @group(0) @binding(1) var<storage, read_write> d: array<f32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = textureLoad(t, vec2(0), 0, 0).x; }",
                "textures other than 2D",
            ),
            (
                b"@group(0) @binding(0) var t: texture_storage_2d<rgba8unorm, write>;\n\
                  @compute @workgroup_size(1) fn main() { textureStore(t, vec2(0), vec4(1.0)); }",
                "storage images on this GPU (it cannot drop out-of-bounds image writes)",
            ),
            (
                b"@group(0) @binding(0) var s: sampler_comparison;\n\
                  @group(0) @binding(1) var t: texture_depth_2d;\n\
                  @group(0) @binding(2) var<storage, read_write> d: array<f32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = textureSampleCompareLevel(t, s, vec2(0.0), 0.5); }",
                "not supported",
            ),
            (
                b"enable f16;\n\
                  @group(0) @binding(0) var<storage, read_write> d: array<f16>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = d[1] * 2h; }",
                "uses f16 (16-bit floats), which this GPU does not support",
            ),
            (
                b"@group(0) @binding(0) var<storage, read_write> d: array<f64>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = d[1] * 2.0lf; }",
                "uses f64 (64-bit floats)",
            ),
            (
                b"@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(64) fn main(@builtin(subgroup_invocation_id) i: u32) \
                  { d[i] = subgroupAdd(i); }",
                "uses subgroup operations",
            ),
            (
                b"override n: u32;\n\
                  @group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { d[0] = n; }",
                "override \"n\" has no default",
            ),
            (
                b"var<workgroup> big: array<u32, 8192>;\n\
                  @group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
                  @compute @workgroup_size(1) fn main() { big[d[0]] = 1u; d[1] = big[5]; }",
                "32768 bytes of workgroup memory (this GPU's most: 16384)",
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
