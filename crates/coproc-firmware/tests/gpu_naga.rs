//! Every GPU example firmware parses with naga (WGSL or SPIR-V front end),
//! validates with immediates (push constants) allowed, and has exactly the
//! compute entry points its `entry_points` lists, in that order. `histo`'s
//! workgroup array is sized by a specialization constant, which naga's
//! SPIR-V front end cannot size on its own: it is checked here for its
//! format only, and through the `vulkan` class's specializer in
//! `coproc-vulkan`'s tests.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_firmware::gpu::{self, GpuFirmware, Source};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage, StorageAccess};

fn parse(fw: &GpuFirmware) -> Module {
    match fw.source {
        Source::Wgsl => {
            let text = fw.wgsl().expect("WGSL image is UTF-8");
            naga::front::wgsl::parse_str(text)
                .unwrap_or_else(|e| panic!("{}: {}", fw.name, e.emit_to_string(text)))
        }
        Source::Spirv => {
            let opts = naga::front::spv::Options {
                adjust_coordinate_space: false,
                strict_capabilities: true,
                block_ctx_dump_prefix: None,
            };
            naga::front::spv::parse_u8_slice(fw.image, &opts)
                .unwrap_or_else(|e| panic!("{}: SPIR-V parse: {e}", fw.name))
        }
    }
}

fn validate(fw: &GpuFirmware, module: &Module) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::IMMEDIATES)
        .validate(module)
        .unwrap_or_else(|e| panic!("{}: validation: {e:?}", fw.name))
}

/// The examples naga parses as they are (no specialization needed).
fn plain() -> impl Iterator<Item = &'static GpuFirmware> {
    gpu::ALL.iter().filter(|f| f.name != "histo")
}

#[test]
fn gpu_firmware_parses_validates_and_lists_its_entry_points() {
    for fw in plain() {
        let module = parse(fw);
        validate(fw, &module);
        let compute: Vec<&str> = module
            .entry_points
            .iter()
            .filter(|ep| ep.stage == ShaderStage::Compute)
            .map(|ep| ep.name.as_str())
            .collect();
        assert_eq!(compute, fw.entry_points, "{}", fw.name);
        assert_eq!(
            module.entry_points.len(),
            compute.len(),
            "{} has only compute entry points",
            fw.name
        );
    }
}

#[test]
fn gpu_firmware_images_have_the_right_format() {
    for fw in gpu::ALL {
        match fw.source {
            Source::Wgsl => assert!(fw.wgsl().is_some(), "{} is UTF-8", fw.name),
            Source::Spirv => {
                assert_eq!(fw.image.len() % 4, 0, "{} is whole words", fw.name);
                assert_eq!(
                    fw.image[..4],
                    0x0723_0203u32.to_le_bytes(),
                    "{} has the SPIR-V magic",
                    fw.name
                );
            }
        }
    }
}

#[test]
fn gpu_firmware_workgroup_sizes() {
    let want: &[(&str, [u32; 3])] = &[
        ("saxpy", [64, 1, 1]),
        ("reduce", [256, 1, 1]),
        ("spin", [64, 1, 1]),
        ("matmul", [8, 8, 1]),
        ("touch", [64, 1, 1]),
        ("twoentry", [64, 1, 1]),
        ("invert", [8, 8, 1]),
    ];
    // `affine`'s and `histo`'s sizes are set by specialization.
    assert_eq!(want.len() + 2, gpu::ALL.len());
    for &(name, size) in want {
        let fw = gpu::by_name(name).unwrap_or_else(|| panic!("no firmware {name}"));
        let module = parse(&fw);
        for ep in &module.entry_points {
            assert_eq!(ep.workgroup_size, size, "{name}::{}", ep.name);
        }
    }
    assert!(gpu::by_name("nope").is_none());
}

#[test]
fn gpu_firmware_bindings_and_immediates() {
    // (group, binding, writable) of each storage buffer, and the size in
    // bytes of the immediates (push constants). glslang marks a `readonly`
    // buffer `NonWritable` on the block's member, which naga's SPIR-V front
    // end does not carry over (every SPIR-V buffer reads back read-write),
    // so writability is checked for WGSL only.
    type Binding = (u32, u32, bool);
    let want: &[(&str, &[Binding], u32)] = &[
        ("saxpy", &[(0, 0, false), (0, 1, true)], 8),
        ("reduce", &[(0, 0, false), (0, 1, true)], 4),
        ("spin", &[(0, 0, true)], 12),
        ("matmul", &[(0, 0, false), (0, 1, false), (0, 2, true)], 12),
        ("touch", &[(0, 0, true)], 8),
        ("twoentry", &[(0, 0, true)], 4),
        ("affine", &[(0, 0, false), (0, 1, true)], 0),
        ("invert", &[], 0),
    ];
    assert_eq!(want.len(), plain().count());
    for &(name, bindings, immediates) in want {
        let fw = gpu::by_name(name).unwrap();
        let module = parse(&fw);
        let mut got = Vec::new();
        let mut imm = 0;
        for (_, var) in module.global_variables.iter() {
            match var.space {
                AddressSpace::Storage { access } => {
                    let b = var.binding.as_ref().expect("storage buffer binding");
                    let writable = access.contains(StorageAccess::STORE);
                    got.push((b.group, b.binding, writable));
                }
                AddressSpace::Immediate => imm += module.types[var.ty].inner.size(module.to_ctx()),
                _ => {}
            }
        }
        got.sort_unstable();
        let mut bindings = bindings.to_vec();
        if fw.source == Source::Spirv {
            for b in &mut got {
                b.2 = true;
            }
            for b in &mut bindings {
                b.2 = true;
            }
        }
        assert_eq!(got, bindings, "{name} bindings");
        assert_eq!(imm, immediates, "{name} immediates");
    }
}
