//! Reflection of one entry point of a specialized module: its bindings
//! (storage and uniform buffers, 2D storage images, sampled textures and
//! samplers), push constants, workgroup size and memory, checked against
//! the device's limits; then its SPIR-V (`emit`).

use super::{chain, emit, BindingKind, BindingSpec, PipelineSpec, ShaderError, ShaderLimits};
use coproc_proto::gpu::{ImageFormat, MAX_BINDING, MAX_GROUPS, PUSH_WORDS};
use naga::valid::{GlobalUse, ModuleInfo};
use naga::{AddressSpace, ImageClass, Module, ShaderStage, StorageAccess, TypeInner};

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
pub(super) fn pipeline(
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
                // (One per entry point: naga's validator refuses more.)
                // What the SPIR-V written out declares: a push constant
                // that is not a struct is wrapped in one, whose size is
                // rounded up to its alignment (a vec3<u32> takes 16 bytes).
                let layout = layouter[var.ty];
                push_bytes = layout.alignment.round_up(layout.size);
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
    let spirv = emit::write(module, info, name, limits, options)?;
    Ok(PipelineSpec {
        name: name.to_string(),
        spirv,
        bindings,
        push_bytes,
        workgroup: wg,
    })
}

#[cfg(test)]
mod tests {
    use crate::shader::tests::LIMITS;
    use crate::shader::{
        compile, BindingKind, BindingSpec, ShaderFeatures, ShaderLimits, SPIRV_MAGIC,
    };

    /// Found by the `shader` fuzz target (a mutated SPIR-V with a second
    /// push-constant variable, a vec3): the SPIR-V written out wraps a
    /// push constant that is not a struct in a block of its aligned size,
    /// so reading it back gave more push-constant bytes than the pipeline
    /// layout covered. The size now is the aligned one.
    #[test]
    fn push_constants_are_sized_as_written() {
        let vec3 = r"
            var<immediate> p: vec3<u32>;
            @group(0) @binding(0) var<storage, read_write> d: array<u32>;
            @compute @workgroup_size(1) fn main() { d[0] = p.x + p.z; }
        ";
        let s = &compile(vec3.as_bytes(), &LIMITS).unwrap()[0];
        assert_eq!(s.push_bytes, 16);
        let written: Vec<u8> = s.spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(compile(&written, &LIMITS).unwrap()[0].push_bytes, 16);
        // The fuzzer's input: its one push constant is a vec3 too.
        let spv = include_bytes!("../../../../fuzz/corpus/shader/regress-push-block-grows.spv");
        let s = &compile(spv, &LIMITS).unwrap()[0];
        assert_eq!(s.push_bytes, 16);
        let written: Vec<u8> = s.spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert!(compile(&written, &LIMITS).unwrap()[0].push_bytes <= 16);
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
}
