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
//! them ([`ShaderFeatures`]). Textures, storage images and samplers are
//! refused, by name.
//!
//! Out-of-bounds accesses: reads return zero and writes are dropped
//! (naga's `ReadZeroSkipWrite` rewrite), whatever the device's robustness.

use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use coproc_proto::gpu::{ImageFormat, MAX_BINDING, MAX_GROUPS, PUSH_WORDS};
use coproc_proto::shader::{self as spec, SpecValue};
use naga::valid::{Capabilities, GlobalUse, ModuleInfo, ShaderStages, ValidationFlags, Validator};
use naga::{AddressSpace, ImageClass, Module, ShaderStage, StorageAccess, TypeInner};
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

/// Device limits a module is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ShaderLimits {
    /// Most invocations in one workgroup.
    pub max_invocations: u32,
    /// Most invocations along each axis of a workgroup.
    pub max_size: [u32; 3],
    /// Bind groups (descriptor sets) a pipeline may use: groups
    /// `0..max_groups` (at most [`MAX_GROUPS`]).
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

/// The class's image format of a WGSL/GLSL storage format.
fn image_format(f: naga::StorageFormat) -> Option<ImageFormat> {
    use naga::StorageFormat as S;
    Some(match f {
        S::Rgba8Unorm => ImageFormat::Rgba8Unorm,
        S::Rgba8Uint => ImageFormat::Rgba8Uint,
        S::R32Float => ImageFormat::R32Float,
        S::R32Uint => ImageFormat::R32Uint,
        S::R32Sint => ImageFormat::R32Sint,
        S::Rgba32Float => ImageFormat::Rgba32Float,
        _ => return None,
    })
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

/// WGSL as wgpu writes it: `var<push_constant>` is naga 30's
/// `var<immediate>` (padded with spaces so source locations stay right).
fn wgpu_spellings(text: &str) -> Cow<'_, str> {
    const OLD: &str = "push_constant";
    if !text.contains(OLD) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(OLD) {
        let (before, after) = (&rest[..i], &rest[i + OLD.len()..]);
        let opens = before.trim_end().ends_with('<');
        let closes = after.trim_start().starts_with('>');
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let alone = !before.ends_with(ident) && !after.starts_with(ident);
        out.push_str(before);
        if opens && closes && alone {
            out.push_str("immediate    ");
        } else {
            out.push_str(OLD);
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The values that apply to `entry`: every-entry ones, overridden by its
/// own.
fn values_for(values: &[SpecValue], entry: &str) -> Vec<(String, f64)> {
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

/// Validate `module` against the device; `source` (WGSL text) places a
/// refusal in the source.
fn validate(
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

fn front(shader: &[u8], spirv: bool, values: &[(String, f64)]) -> Result<Module, ShaderError> {
    if spirv {
        let words = specialize_spirv(shader, values)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let opts = naga::front::spv::Options {
            adjust_coordinate_space: false,
            strict_capabilities: true,
            block_ctx_dump_prefix: None,
        };
        naga::front::spv::parse_u8_slice(&bytes, &opts).map_err(|e| ShaderError::Parse {
            lang: "SPIR-V",
            msg: chain(&e),
        })
    } else {
        let text = std::str::from_utf8(shader).map_err(|_| ShaderError::Format)?;
        let text = wgpu_spellings(text);
        naga::front::wgsl::parse_str(&text).map_err(|e| ShaderError::Parse {
            lang: "WGSL",
            msg: e.emit_to_string(&text).trim_end().to_string(),
        })
    }
}

fn compile_image(image: &[u8], limits: &ShaderLimits) -> Result<Vec<PipelineSpec>, ShaderError> {
    let (values, shader) =
        spec::decode(image).map_err(|e| ShaderError::Specialization(e.to_string()))?;
    let is_spirv = shader.len() >= 20
        && shader.len().is_multiple_of(4)
        && u32::from_le_bytes([shader[0], shader[1], shader[2], shader[3]]) == SPIRV_MAGIC;
    let globals = values_for(&values, "");
    let module = front(shader, is_spirv, &globals)?;
    check_push_size(&module)?;
    let text = if is_spirv {
        None
    } else {
        std::str::from_utf8(shader).ok().map(wgpu_spellings)
    };
    let info = validate(&module, limits, text.as_deref())?;
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

    let mut out = Vec::new();
    for ep in &module.entry_points {
        if ep.stage != ShaderStage::Compute {
            continue;
        }
        let ep_values = values_for(&values, &ep.name);
        let own = values.iter().any(|v| v.entry.as_deref() == Some(&ep.name));
        // SPIR-V specialization constants are substituted before parsing
        // (an array they size must have its length then); WGSL overrides
        // are resolved by naga per entry point.
        let (m, inf): (Cow<'_, Module>, Cow<'_, ModuleInfo>) = if is_spirv && own {
            let m = front(shader, true, &ep_values)?;
            check_push_size(&m)?;
            let inf = validate(&m, limits, None)?;
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
        .map_err(|e| override_error(&ep.name, &e))?;
        out.push(pipeline(&m, &inf, &ep.name, limits, &options)?);
    }
    if out.is_empty() {
        return Err(ShaderError::Unsupported(
            "no compute entry point in the module".into(),
        ));
    }
    Ok(out)
}

fn override_error(
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

/// The layout first (naga's validator starts the same way), so that push
/// constants larger than this class allows are refused before the
/// validator sees them: its bitmask of the push-constant words a function
/// uses overflows past 256 bytes (naga 30 panics with overflow checks on,
/// and computes a wrong mask without).
fn check_push_size(module: &Module) -> Result<(), ShaderError> {
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

/// How a resource a shader declares is bound, or what it is in its
/// author's words when this class does not run it.
fn handle_kind(
    module: &Module,
    ty: naga::Handle<naga::Type>,
    limits: &ShaderLimits,
) -> Result<BindingKind, String> {
    use naga::{ImageDimension, ScalarKind};
    match module.types[ty].inner {
        TypeInner::Image {
            dim: ImageDimension::D2,
            arrayed: false,
            class: ImageClass::Storage { format, .. },
        } => {
            let f = image_format(format).ok_or_else(|| {
                format!(
                    "storage images of format {format:?} (rgba8unorm, rgba8uint, r32float, \
                     r32uint, r32sint and rgba32float are)"
                )
            })?;
            if !limits.robust_images {
                return Err(
                    "storage images on this GPU (it cannot drop out-of-bounds image writes)".into(),
                );
            }
            Ok(BindingKind::StorageImage(f))
        }
        TypeInner::Image {
            dim: ImageDimension::D2,
            arrayed: false,
            class: ImageClass::Sampled { kind, multi: false },
        } => Ok(BindingKind::SampledImage(match kind {
            ScalarKind::Float => None,
            ScalarKind::Uint => Some(false),
            ScalarKind::Sint => Some(true),
            _ => return Err("textures of that texel type".into()),
        })),
        TypeInner::Image {
            class: ImageClass::Depth { .. },
            ..
        } => Err("depth textures".into()),
        TypeInner::Image {
            class: ImageClass::External,
            ..
        } => Err("external textures".into()),
        TypeInner::Image { .. } => {
            Err("textures other than 2D (1D, 3D, cube, arrayed, multisampled)".into())
        }
        TypeInner::Sampler { comparison: false } => Ok(BindingKind::Sampler),
        TypeInner::Sampler { comparison: true } => Err("comparison samplers".into()),
        TypeInner::BindingArray { .. } => Err("binding arrays".into()),
        TypeInner::AccelerationStructure { .. } => Err("acceleration structures".into()),
        _ => Err("resources other than buffers, images and samplers".into()),
    }
}

/// Reflect and write the pipeline of entry point `name` of a specialized
/// module.
fn pipeline(
    module: &Module,
    info: &ModuleInfo,
    name: &str,
    limits: &ShaderLimits,
    options: &naga::back::spv::Options,
) -> Result<PipelineSpec, ShaderError> {
    let Some(index) = module
        .entry_points
        .iter()
        .position(|ep| ep.stage == ShaderStage::Compute && ep.name == name)
    else {
        return Err(ShaderError::Unsupported(format!(
            "entry point {name:?} lost in specialization"
        )));
    };
    let ep = &module.entry_points[index];
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| ShaderError::Invalid(chain(&e)))?;
    let uses = info.get_entry_point(index);
    let mut bindings = Vec::new();
    let mut push_bytes = 0u32;
    let mut workgroup_bytes = 0u64;
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        let kind = match var.space {
            AddressSpace::WorkGroup => {
                workgroup_bytes += u64::from(layouter[var.ty].size);
                continue;
            }
            AddressSpace::Storage { .. } => BindingKind::Storage,
            AddressSpace::Uniform => BindingKind::Uniform,
            AddressSpace::Immediate => {
                push_bytes = layouter[var.ty].size;
                if push_bytes > PUSH_WORDS * 4 {
                    return Err(ShaderError::Unsupported(format!(
                        "entry point {name:?}: {push_bytes} bytes of push constants (most: {})",
                        PUSH_WORDS * 4
                    )));
                }
                continue;
            }
            AddressSpace::Function | AddressSpace::Private => continue,
            AddressSpace::Handle => match handle_kind(module, var.ty, limits) {
                Ok(kind) => kind,
                Err(what) => {
                    return Err(ShaderError::Unsupported(format!(
                        "entry point {name:?}: {what} are not supported by the vulkan class \
                         (storage and uniform buffers, 2D storage images and textures, \
                         samplers and push constants are)"
                    )));
                }
            },
            other => {
                return Err(ShaderError::Unsupported(format!(
                    "entry point {name:?}: variables in the {other:?} address space are not \
                     supported (storage and uniform buffers and push constants are)"
                )));
            }
        };
        let b = var.binding.as_ref().ok_or_else(|| {
            ShaderError::Unsupported(format!("entry point {name:?}: a buffer without a binding"))
        })?;
        let groups = limits.max_groups.min(MAX_GROUPS);
        if b.group >= groups || b.binding >= MAX_BINDING {
            return Err(ShaderError::Unsupported(format!(
                "entry point {name:?}: @group({}) @binding({}) beyond what this GPU binds \
                 (groups below {groups}, bindings below {MAX_BINDING})",
                b.group, b.binding
            )));
        }
        let size = u64::from(layouter[var.ty].size);
        // Declared writable and written (or used atomically) by this entry
        // point: glslang marks `readonly` on members, which the SPIR-V
        // front end does not carry over, and naga's use analysis is exact.
        let access = match (var.space, &module.types[var.ty].inner) {
            (AddressSpace::Storage { access }, _) => access,
            (
                AddressSpace::Handle,
                TypeInner::Image {
                    class: ImageClass::Storage { access, .. },
                    ..
                },
            ) => *access,
            _ => StorageAccess::empty(),
        };
        let writable = access.contains(StorageAccess::STORE)
            && uses[handle].intersects(GlobalUse::WRITE | GlobalUse::ATOMIC);
        let size = if var.space == AddressSpace::Handle {
            0
        } else {
            size
        };
        if kind == BindingKind::Uniform && size > u64::from(limits.max_uniform_bytes) {
            return Err(ShaderError::Unsupported(format!(
                "entry point {name:?}: a uniform buffer of {size} bytes (this GPU's most: {})",
                limits.max_uniform_bytes
            )));
        }
        bindings.push(BindingSpec {
            group: b.group,
            binding: b.binding,
            kind,
            writable,
            min_bytes: if var.space == AddressSpace::Handle {
                0
            } else {
                size.max(4)
            },
        });
    }
    if workgroup_bytes > u64::from(limits.max_workgroup_bytes) {
        return Err(ShaderError::Unsupported(format!(
            "entry point {name:?}: {workgroup_bytes} bytes of workgroup memory (this GPU's most: {})",
            limits.max_workgroup_bytes
        )));
    }
    bindings.sort_by_key(|b| (b.group, b.binding));
    let count = |f: fn(&BindingKind) -> bool| bindings.iter().filter(|b| f(&b.kind)).count();
    for (n, most, words) in [
        (
            count(|k| *k == BindingKind::Storage),
            limits.max_storage_buffers,
            "storage buffers",
        ),
        (
            count(|k| *k == BindingKind::Uniform),
            limits.max_uniform_buffers,
            "uniform buffers",
        ),
        (
            count(|k| {
                matches!(
                    k,
                    BindingKind::StorageImage(_) | BindingKind::SampledImage(_)
                )
            }),
            limits.max_images,
            "images",
        ),
        (
            count(|k| *k == BindingKind::Sampler),
            limits.max_samplers,
            "samplers",
        ),
    ] {
        if n > most as usize {
            return Err(ShaderError::Unsupported(format!(
                "entry point {name:?}: {n} {words} (this GPU's most per pipeline: {most})"
            )));
        }
    }
    let wg = ep.workgroup_size;
    let invocations = wg.iter().map(|&d| u64::from(d)).product::<u64>();
    if invocations == 0
        || invocations > u64::from(limits.max_invocations)
        || wg.iter().zip(limits.max_size).any(|(&d, m)| d > m)
    {
        return Err(ShaderError::Unsupported(format!(
            "entry point {name:?}: workgroup {wg:?} beyond the device's limits ({} invocations, {:?})",
            limits.max_invocations, limits.max_size
        )));
    }
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
    let spirv = match write(options) {
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
    .map_err(|e| ShaderError::Write(chain(&e)))?;
    Ok(PipelineSpec {
        name: name.to_string(),
        spirv,
        bindings,
        push_bytes,
        workgroup: wg,
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
fn specialize_spirv(image: &[u8], values: &[(String, f64)]) -> Result<Vec<u32>, ShaderError> {
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
    use super::*;

    const LIMITS: ShaderLimits = ShaderLimits {
        max_invocations: 1024,
        max_size: [1024, 1024, 64],
        ..ShaderLimits::BASE
    };

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
        let src = r"
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
        ";
        let p = compile(src.as_bytes(), &LIMITS).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "main");
        assert_eq!(p[0].push_bytes, 8);
        assert_eq!(p[0].workgroup, [64, 1, 1]);
        assert_eq!(
            p[0].bindings,
            vec![
                BindingSpec {
                    group: 0,
                    binding: 0,
                    kind: BindingKind::Storage,
                    writable: false,
                    min_bytes: 4
                },
                BindingSpec {
                    group: 0,
                    binding: 1,
                    kind: BindingKind::Storage,
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

    /// wgpu's spelling of push constants is accepted as naga 30's.
    #[test]
    fn push_constant_spelling() {
        let src = b"struct P { n: u32 }\n var < push_constant > p: P;\n\
            @group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
            @compute @workgroup_size(1) fn main() { d[0] = p.n; }";
        assert_eq!(compile(src, &LIMITS).unwrap()[0].push_bytes, 4);
        // Only in `var<...>`: an identifier of that name stays.
        let src = b"@group(0) @binding(0) var<storage, read_write> push_constant: array<u32>;\n\
            @compute @workgroup_size(1) fn main() { push_constant[0] = 1u; }";
        assert!(compile(src, &LIMITS).is_ok());
    }

    /// Features the device has are accepted; uniforms and several groups
    /// are reflected.
    #[test]
    fn features_uniforms_and_groups() {
        let src = b"enable f16;\n\
            struct U { k: f32, pad: u32, v: vec2<u32> }\n\
            @group(2) @binding(5) var<uniform> u: U;\n\
            @group(1) @binding(0) var<storage, read_write> d: array<f16>;\n\
            @group(0) @binding(3) var<storage, read> x: array<f16>;\n\
            @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) \
            { d[g.x] = x[g.x] * f16(u.k); }";
        let limits = ShaderLimits {
            features: ShaderFeatures {
                f16: true,
                ..ShaderFeatures::default()
            },
            ..LIMITS
        };
        let p = compile(src, &limits).unwrap();
        let b: Vec<_> = p[0]
            .bindings
            .iter()
            .map(|b| (b.group, b.binding, b.kind, b.min_bytes))
            .collect();
        assert_eq!(
            b,
            vec![
                (0, 3, BindingKind::Storage, 4),
                (1, 0, BindingKind::Storage, 4),
                (2, 5, BindingKind::Uniform, 16)
            ]
        );
        assert_eq!(p[0].groups(), 3);
        let few = ShaderLimits {
            max_uniform_buffers: 0,
            ..limits
        };
        let e = compile(src, &few).unwrap_err().to_string();
        assert!(e.contains("1 uniform buffers"), "{e}");
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
