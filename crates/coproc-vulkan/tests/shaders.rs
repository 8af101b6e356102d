//! Firmware as shader authors write it, on lavapipe (or any Vulkan
//! device): WGSL overrides and SPIR-V specialization constants (defaults,
//! values for all entry points, values for one), uniform buffers in bind
//! group 1, exact bind lengths, out-of-bounds writes dropped, and the
//! device's optional features (f16, subgroups) used where it has them and
//! refused by name where it does not. Every result is checked against a
//! host reference.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use coproc_core::iova::{MapKind, Perms};
use coproc_firmware::gpu::{AFFINE, HISTO, HISTO_SPIRV16, INVERT};
use coproc_firmware::reference;
use coproc_proto::gpu::{Job, Status};
use coproc_proto::shader::Specialized;
use coproc_vulkan::{VulkanConfig, VulkanDevice};

const X: u64 = BUF_IOVA;
const Y: u64 = BUF_IOVA + 0x10_0000;
const U: u64 = BUF_IOVA + 0x20_0000;
/// What the tests put where the shader must not write.
const SENTINEL: f32 = -7.25;

fn lcg(seed: u32, n: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        })
        .collect()
}

fn device_limits() -> coproc_vulkan::shader::ShaderLimits {
    VulkanDevice::new(VulkanConfig::default())
        .expect("vulkan device (lavapipe installed?)")
        .shader_limits()
}

/// `affine` with its overrides at their defaults, then set for every entry
/// point, then set for `affine` alone; `y` bound to exactly `n` elements
/// (not a multiple of the workgroup or of a page), so `arrayLength()` is
/// `n` and nothing past it changes; the coefficients in a uniform buffer
/// in group 1.
#[test]
fn wgsl_overrides_uniforms_and_exact_lengths() {
    let pc = pcoproc(VulkanConfig::default());
    let n = 1000usize;
    // Eighths, a 1.5 multiplier and quarter offsets: every result is exact
    // in f32, whether the device fuses the multiply-add or not.
    let x: Vec<f32> = lcg(3, n).iter().map(|&v| (v % 997) as f32 / 8.0).collect();
    let (mul, add) = (1.5f32, -2.0f32);
    let cases: [(Vec<u8>, f32); 3] = [
        (AFFINE.image.to_vec(), 0.0),
        (
            Specialized::new(AFFINE.image)
                .set("block", 32.0)
                .set("offset", 0.25)
                .image(),
            0.25,
        ),
        (
            Specialized::new(AFFINE.image)
                .set("offset", 9.0)
                .set_for("affine", "offset", 0.5)
                .set_for("affine", "block", 128.0)
                .image(),
            0.5,
        ),
    ];
    for (i, (image, offset)) in cases.iter().enumerate() {
        let mut d = Domain::new(&pc, 10 + i as u32, image);
        let xr = d.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
        xr.write(0, &f32_bytes(&x)).unwrap();
        let yr = d.buffer(Y, 4 * n as u64 + 4096, Perms::RW, MapKind::Pinned);
        yr.write(0, &f32_bytes(&vec![SENTINEL; n + 1024])).unwrap();
        let ur = d.buffer(U, 4096, Perms::R, MapKind::Pinned);
        ur.write(0, &f32_bytes(&[mul, add])).unwrap();
        let done = d.run(
            &Job::new()
                .bind(0, X, 4 * n as u64)
                .bind(1, Y, 4 * n as u64)
                .bind_group(1, 0, U, 8)
                .dispatch(0, [(n as u32).div_ceil(32), 1, 1])
                .signal(1),
        );
        assert_eq!(done.last().unwrap().status, Some(Status::Ok), "case {i}");
        let want = reference::affine(&x, mul, add, *offset);
        assert_eq!(read_f32(&yr, 0, n), want, "case {i}");
        assert!(
            read_f32(&yr, 4 * n as u64, 1024)
                .iter()
                .all(|&v| v == SENTINEL),
            "case {i}: written past the bound length"
        );
    }
}

/// `spill` writes `y[i]` for all 256 invocations with no check in the
/// source; `y` is bound to 100 elements in the middle of a mapping. The
/// 100 get their values, the last of them its own (not a clamped write
/// of a later invocation), and nothing around the range changes.
#[test]
fn out_of_bounds_writes_are_dropped() {
    let pc = pcoproc(VulkanConfig::default());
    let mut d = Domain::new(&pc, 1, AFFINE.image);
    let xr = d.buffer(X, 4096, Perms::R, MapKind::Pinned);
    xr.write(0, &[0; 4096]).unwrap();
    let yr = d.buffer(Y, 8192, Perms::RW, MapKind::Pinned);
    yr.write(0, &f32_bytes(&vec![SENTINEL; 2048])).unwrap();
    let (start, n) = (256u64, 100usize);
    let done = d.run(
        &Job::new()
            .bind(0, X, 4096)
            .bind(1, Y + start, 4 * n as u64)
            .dispatch(1, [4, 1, 1])
            .signal(1),
    );
    assert_eq!(done.last().unwrap().status, Some(Status::Ok));
    let all = read_f32(&yr, 0, 2048);
    let first = start as usize / 4;
    let want: Vec<f32> = (0..n).map(|i| i as f32).collect();
    assert_eq!(&all[first..first + n], &want[..]);
    assert!(all[..first].iter().all(|&v| v == SENTINEL));
    assert!(all[first + n..].iter().all(|&v| v == SENTINEL));
}

/// `histo` (GLSL compiled to SPIR-V): a workgroup array sized by
/// specialization constant 0 and the workgroup size from constant 1, at
/// their defaults and set by id and by name, with its parameters in a
/// std140 uniform block in set 1.
#[test]
fn spirv_specialization_constants() {
    let pc = pcoproc(VulkanConfig::default());
    let n = 5000usize;
    let data = lcg(11, n);
    let shift = 3u32;
    let cases: [(Vec<u8>, usize, u32); 6] = [
        (HISTO.image.to_vec(), 16, 64),
        (Specialized::new(HISTO.image).set("0", 40.0).image(), 40, 64),
        (
            Specialized::new(HISTO.image)
                .set("BINS", 7.0)
                .set("1", 128.0)
                .image(),
            7,
            128,
        ),
        (
            Specialized::new(HISTO.image)
                .set_for("main", "BINS", 100.0)
                .set_for("main", "1", 32.0)
                .image(),
            100,
            32,
        ),
        // SPIR-V 1.6: the workgroup size through `LocalSizeId`.
        (HISTO_SPIRV16.to_vec(), 16, 64),
        (
            Specialized::new(HISTO_SPIRV16)
                .set("BINS", 24.0)
                .set("1", 256.0)
                .image(),
            24,
            256,
        ),
    ];
    for (i, (image, bins, wg)) in cases.iter().enumerate() {
        let mut d = Domain::new(&pc, 20 + i as u32, image);
        let dr = d.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
        dr.write(0, &u32_bytes(&data)).unwrap();
        let br = d.buffer(Y, 4096, Perms::RW, MapKind::Pinned);
        let ur = d.buffer(U, 4096, Perms::R, MapKind::Pinned);
        ur.write(0, &u32_bytes(&[shift, n as u32])).unwrap();
        let done = d.run(
            &Job::new()
                .bind(0, X, 4 * n as u64)
                .bind(1, Y, 4 * *bins as u64)
                .bind_group(1, 0, U, 16)
                .dispatch(0, [(n as u32).div_ceil(*wg), 1, 1])
                .signal(1),
        );
        assert_eq!(done.last().unwrap().status, Some(Status::Ok), "case {i}");
        assert_eq!(
            read_u32(&br, 0, *bins),
            reference::histogram(&data, shift, *bins),
            "case {i}"
        );
    }
    // Values that do not fit are refused at load, naming the constant.
    let pc2 = pcoproc(VulkanConfig::default());
    let v = pc2
        .create_vcoproc(
            coproc_core::ids::DomainId(1),
            coproc_core::policy::SchedParams::default(),
        )
        .unwrap();
    for (image, want) in [
        (
            Specialized::new(HISTO.image).set("BINS", -1.0).image(),
            "BINS",
        ),
        (
            Specialized::new(HISTO.image).set("BINS", 2.5).image(),
            "BINS",
        ),
        (Specialized::new(HISTO.image).set("9", 1.0).image(), "\"9\""),
    ] {
        let e = v.load_firmware("histo", &image).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should name {want}");
    }
}

/// f16, f64, i64 and subgroup operations run where the device has them
/// (lavapipe has all four) and are refused by name where it does not.
#[test]
fn device_features_where_present() {
    let limits = device_limits();
    let f = limits.features;
    let pc = pcoproc(VulkanConfig::default());
    let n = 256usize;
    // Small integers: exact in f16, so the references are exact too.
    let x: Vec<u32> = (0..n as u32).map(|i| i % 61).collect();
    let xf: Vec<u32> = x.iter().map(|&v| (v as f32).to_bits()).collect();
    let head = "@group(0) @binding(0) var<storage, read> x: array<u32>;\n\
        @group(0) @binding(1) var<storage, read_write> y: array<u32>;\n";
    let body = |b: &str| {
        format!(
            "{head}@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
             let i = g.x;\n{b}\n}}"
        )
    };
    type Case = (&'static str, String, bool, Vec<u32>, Vec<u32>);
    let size = f.subgroup_size;
    let cases: Vec<Case> = vec![
        (
            "f16",
            format!(
                "enable f16;\n{}",
                body("y[i] = bitcast<u32>(f32(f16(bitcast<f32>(x[i])) * 2.0h + 0.5h));")
            ),
            f.f16,
            xf.clone(),
            x.iter()
                .map(|&v| (v as f32 * 2.0 + 0.5).to_bits())
                .collect(),
        ),
        (
            "f64",
            body("y[i] = u32(f64(x[i]) * 2.5lf + 0.5lf);"),
            f.f64,
            x.clone(),
            x.iter()
                .map(|&v| (f64::from(v) * 2.5 + 0.5) as u32)
                .collect(),
        ),
        (
            "i64",
            body("let w = u64(x[i]) << 40u; y[i] = u32(w >> 38u) + u32(w >> 60u);"),
            f.i64,
            x.clone(),
            x.iter()
                .map(|&v| {
                    let w = u64::from(v) << 40;
                    ((w >> 38) as u32).wrapping_add((w >> 60) as u32)
                })
                .collect(),
        ),
        (
            "subgroup",
            // Every subgroup is full (64 is a multiple of any subgroup size
            // a device reports): the sum of 1 over it is its size.
            body("_ = x[0]; y[i] = subgroupAdd(1u);"),
            !f.subgroup_ops.is_empty(),
            x.clone(),
            vec![size; n],
        ),
    ];
    for (name, src, has, input, want) in cases {
        if !has {
            let v = pc
                .create_vcoproc(
                    coproc_core::ids::DomainId(9),
                    coproc_core::policy::SchedParams::default(),
                )
                .unwrap();
            let e = v
                .load_firmware(name, src.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e:?} should name {name}");
            continue;
        }
        if name == "subgroup" {
            assert!(size > 0 && 64 % size == 0, "subgroup size {size}");
        }
        let mut d = Domain::new(&pc, 30, src.as_bytes());
        let xr = d.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
        xr.write(0, &u32_bytes(&input)).unwrap();
        let yr = d.buffer(Y, 4 * n as u64, Perms::RW, MapKind::Pinned);
        let done = d.run(
            &Job::new()
                .bind(0, X, 4 * n as u64)
                .bind(1, Y, 4 * n as u64)
                .dispatch(0, [n as u32 / 64, 1, 1])
                .signal(1),
        );
        assert_eq!(done.last().unwrap().status, Some(Status::Ok), "{name}");
        assert_eq!(read_u32(&yr, 0, n), want, "{name}");
    }
}

/// What the class does not run is refused at load, in the author's words;
/// the vcoproc then loads good firmware as if nothing happened.
#[test]
fn refused_features_are_named() {
    let pc = pcoproc(VulkanConfig::default());
    let v = pc
        .create_vcoproc(
            coproc_core::ids::DomainId(1),
            coproc_core::policy::SchedParams::default(),
        )
        .unwrap();
    let cases: [(&[u8], &str); 4] = [
        (
            b"@group(0) @binding(0) var t: texture_3d<f32>;\n\
              @group(0) @binding(1) var<storage, read_write> d: array<f32>;\n\
              @compute @workgroup_size(1) fn main() { d[0] = textureLoad(t, vec3(0), 0).x; }",
            "textures other than 2D",
        ),
        (
            b"@group(0) @binding(0) var t: texture_depth_2d;\n\
              @group(0) @binding(1) var<storage, read_write> d: array<f32>;\n\
              @compute @workgroup_size(1) fn main() { d[0] = textureLoad(t, vec2(0), 0); }",
            "depth textures",
        ),
        (
            b"override n: u32;\n\
              @group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
              @compute @workgroup_size(1) fn main() { d[0] = n; }",
            "override \"n\" has no default",
        ),
        (
            b"@group(31) @binding(0) var<storage, read_write> d: array<u32>;\n\
              @compute @workgroup_size(1) fn main() { d[0] = 1u; }",
            "@group(31) @binding(0) beyond what this GPU binds",
        ),
    ];
    for (image, want) in cases {
        let e = v.load_firmware("bad", image).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    }
    v.load_firmware("affine", AFFINE.image).unwrap();
}

/// A shader large enough that lavapipe's compile on first use takes far
/// longer than a 50 ms watchdog (about 0.1 s on the development machine),
/// while its jobs run in well under a millisecond: the compile happens at
/// `load-firmware` (a trial run), so the first job is not killed by the
/// watchdog, and its result is right.
#[test]
fn compile_is_not_counted_by_the_watchdog() {
    const STEPS: u32 = 400;
    // A constant of its own, so that no shader cache of the driver's
    // (Mesa keeps one in the home directory) has it compiled already.
    let salt = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    let mut body = format!("v = v ^ {salt}u;\n");
    for i in 0..STEPS {
        body.push_str(&format!(
            "v = (v * {}u + (v >> {}u)) ^ {}u;\n",
            1_664_525 + i,
            i % 13 + 1,
            i * 7919
        ));
    }
    let src = format!(
        "@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
         @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
         var v = d[g.x];\n{body}d[g.x] = v;\n}}"
    );
    let reference = |mut v: u32| {
        v ^= salt;
        for i in 0..STEPS {
            v = (v
                .wrapping_mul(1_664_525 + i)
                .wrapping_add(v >> (i % 13 + 1)))
                ^ (i * 7919);
        }
        v
    };
    let dir = std::env::temp_dir().join(format!("coproc-pcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = VulkanConfig {
        watchdog: std::time::Duration::from_millis(50),
        pipeline_cache: Some(dir.clone()),
        ..VulkanConfig::default()
    };
    let pc = pcoproc(cfg.clone());
    let mut d = Domain::new(&pc, 1, src.as_bytes());
    let n = 1024usize;
    let r = d.buffer(X, 4 * n as u64, Perms::RW, MapKind::Pinned);
    let input = lcg(5, n);
    r.write(0, &u32_bytes(&input)).unwrap();
    let done = d.run(
        &Job::new()
            .bind(0, X, 4 * n as u64)
            .dispatch(0, [n as u32 / 64, 1, 1])
            .signal(1),
    );
    assert_eq!(done.last().unwrap().status, Some(Status::Ok));
    let want: Vec<u32> = input.iter().map(|&v| reference(v)).collect();
    assert_eq!(read_u32(&r, 0, n), want);
    assert!(pc.vcoprocs().iter().all(|v| v.stats.faults == 0));
    // The pipeline cache was written at load, and a daemon started again
    // with it (or with a damaged file) loads the same firmware.
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].metadata().unwrap().len() > 0);
    drop(d);
    drop(pc);
    let pc = pcoproc(cfg.clone());
    Domain::new(&pc, 2, src.as_bytes());
    drop(pc);
    std::fs::write(files[0].path(), b"not a pipeline cache").unwrap();
    let pc = pcoproc(cfg);
    Domain::new(&pc, 3, src.as_bytes());
    assert!(std::fs::metadata(files[0].path()).unwrap().len() > 20);
    drop(pc);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pipelines are created and tried on the loading thread, on the device
/// the runner uses: installing them builds nothing on the runner. Firmware
/// prepared against another device (one replaced meanwhile) is built by
/// the runner instead, and runs the same.
#[test]
fn pipelines_are_built_off_the_runner() {
    use coproc_core::control::ControlBlock;
    use coproc_core::device::{ContextSpec, Device};
    use coproc_core::VcoprocId;
    let mut dev = VulkanDevice::new(VulkanConfig::default()).expect("vulkan device");
    let prep = dev.firmware_prep();
    let image = Specialized::new(AFFINE.image).set("block", 16.0).image();
    let prepared = std::thread::spawn(move || prep.prepare(&image))
        .join()
        .unwrap()
        .unwrap();
    let ctx = |dev: &mut VulkanDevice, id| {
        dev.create_context(ContextSpec {
            id,
            domain: coproc_core::DomainId(1),
            control: std::sync::Arc::new(ControlBlock::default()),
        })
        .unwrap();
    };
    ctx(&mut dev, VcoprocId(1));
    dev.install_firmware(VcoprocId(1), prepared).unwrap();
    assert_eq!(dev.runner_builds(), 0);
    let other = VulkanDevice::new(VulkanConfig::default()).unwrap();
    let foreign = other.firmware_prep().prepare(HISTO.image).unwrap();
    ctx(&mut dev, VcoprocId(2));
    dev.install_firmware(VcoprocId(2), foreign).unwrap();
    assert_eq!(dev.runner_builds(), 1);
    drop(other);
    drop(dev);

    // Through a pcoproc, both kinds compute right.
    let pc = pcoproc(VulkanConfig::default());
    let n = 300usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 / 4.0).collect();
    let mut d = Domain::new(
        &pc,
        1,
        &Specialized::new(AFFINE.image).set("block", 16.0).image(),
    );
    let xr = d.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
    xr.write(0, &f32_bytes(&x)).unwrap();
    let yr = d.buffer(Y, 4 * n as u64, Perms::RW, MapKind::Pinned);
    let ur = d.buffer(U, 4096, Perms::R, MapKind::Pinned);
    ur.write(0, &f32_bytes(&[2.0, 1.0])).unwrap();
    let done = d.run(
        &Job::new()
            .bind(0, X, 4 * n as u64)
            .bind(1, Y, 4 * n as u64)
            .bind_group(1, 0, U, 8)
            .dispatch(0, [(n as u32).div_ceil(16), 1, 1])
            .signal(1),
    );
    assert_eq!(done.last().unwrap().status, Some(Status::Ok));
    assert_eq!(read_f32(&yr, 0, n), reference::affine(&x, 2.0, 1.0, 0.0));
}

/// A sampled texture, a storage image and a sampler: texels come from and
/// go back to the vcoproc's own memory; a bound image of the wrong format
/// is refused, and a storage image the shader writes must be writable.
#[test]
fn images_and_samplers() {
    use coproc_proto::gpu::ImageFormat;
    let limits = device_limits();
    let src = br"
        @group(0) @binding(0) var src: texture_2d<f32>;
        @group(0) @binding(1) var dst: texture_storage_2d<rgba32float, write>;
        @group(0) @binding(2) var smp: sampler;
        @group(1) @binding(0) var<storage, read_write> out: array<f32>;
        @compute @workgroup_size(8, 8)
        fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            let dims = textureDimensions(dst);
            if g.x >= dims.x || g.y >= dims.y { return; }
            let t = textureLoad(src, vec2<i32>(g.xy), 0);
            textureStore(dst, vec2<i32>(g.xy), vec4<f32>(t.r * 2.0, t.g + 1.0, t.b, 1.0));
            let uv = (vec2<f32>(g.xy) + 0.5) / vec2<f32>(dims);
            out[g.y * dims.x + g.x] = textureSampleLevel(src, smp, uv, 0.0).a;
        }
    ";
    let pc = pcoproc(VulkanConfig::default());
    if !limits.robust_images {
        let v = pc
            .create_vcoproc(
                coproc_core::ids::DomainId(1),
                coproc_core::policy::SchedParams::default(),
            )
            .unwrap();
        let e = v.load_firmware("images", src).unwrap_err().to_string();
        assert!(e.contains("storage images"), "{e}");
        return;
    }
    let (w, h) = (37u32, 21u32);
    let texels = (w * h) as usize;
    // Eighths: exact in f32 whatever the arithmetic.
    let input: Vec<f32> = (0..4 * texels).map(|i| (i % 97) as f32 / 8.0).collect();
    let mut d = Domain::new(&pc, 1, src);
    let sr = d.buffer(X, 16 * texels as u64, Perms::R, MapKind::Pinned);
    sr.write(0, &f32_bytes(&input)).unwrap();
    let dr = d.buffer(Y, 16 * texels as u64, Perms::RW, MapKind::Pinned);
    let or = d.buffer(U, 4 * texels as u64, Perms::RW, MapKind::Pinned);
    let ro = BUF_IOVA + 0x30_0000;
    d.buffer(ro, 16 * texels as u64, Perms::R, MapKind::Pinned);
    let job = |dst: u64, fmt: ImageFormat| {
        Job::new()
            .image(0, 0, X, ImageFormat::Rgba32Float, [w, h])
            .image(0, 1, dst, fmt, [w, h])
            .sampler(0, 2, false, 0)
            .bind_group(1, 0, U, 4 * texels as u64)
            .dispatch(0, [w.div_ceil(8), h.div_ceil(8), 1])
            .signal(1)
    };
    let done = d.run(&job(Y, ImageFormat::Rgba32Float));
    assert_eq!(done.last().unwrap().status, Some(Status::Ok));
    let want: Vec<f32> = input
        .chunks(4)
        .flat_map(|t| [t[0] * 2.0, t[1] + 1.0, t[2], 1.0])
        .collect();
    assert_eq!(read_f32(&dr, 0, 4 * texels), want);
    let alphas: Vec<f32> = input.chunks(4).map(|t| t[3]).collect();
    assert_eq!(read_f32(&or, 0, texels), alphas);
    // The wrong format for the storage image, and a read-only one.
    let done = d.run(&job(Y, ImageFormat::R32Float));
    assert_eq!(done[0].status, Some(Status::BadBinding));
    let done = d.run(&job(ro, ImageFormat::Rgba32Float));
    assert_eq!(done[0].status, Some(Status::ReadOnly));
    // An image larger than its mapping is refused at bind.
    let big = Job::new()
        .image(0, 0, X, ImageFormat::Rgba32Float, [w, h + 200])
        .signal(1);
    assert_eq!(d.run(&big)[0].status, Some(Status::BadIova));
}

/// GLSL with a separate texture and sampler and an r32f storage image
/// (`invert.comp`), texels in device-local memory: `1 - v` per texel.
#[test]
fn glsl_texture_sampler_and_image() {
    use coproc_proto::gpu::ImageFormat;
    if !device_limits().robust_images {
        return;
    }
    let pc = pcoproc(VulkanConfig::default());
    let mut d = Domain::new(&pc, 1, INVERT.image);
    let (w, h) = (50u32, 30u32);
    let n = (w * h) as usize;
    let src: Vec<f32> = (0..n).map(|i| (i % 33) as f32 / 16.0).collect();
    let sr = d.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
    sr.write(0, &f32_bytes(&src)).unwrap();
    // The output image lives in device-local memory, copied out after.
    d.v.alloc_local(Y, 8192).unwrap();
    let out = d.buffer(U, 8192, Perms::RW, MapKind::Pinned);
    let done = d.run(
        &Job::new()
            .image(0, 0, X, ImageFormat::R32Float, [w, h])
            .sampler(0, 1, false, 0)
            .image(0, 2, Y, ImageFormat::R32Float, [w, h])
            .dispatch(0, [w.div_ceil(8), h.div_ceil(8), 1])
            .copy(Y, U, 4 * n as u64)
            .signal(1),
    );
    assert_eq!(done.last().unwrap().status, Some(Status::Ok));
    assert_eq!(read_f32(&out, 0, n), reference::invert(&src));
}

/// A trial run past `compile_timeout` (here 100 ms; lavapipe takes
/// seconds to compile this shader, the bystander's small one is compiled
/// in milliseconds) refuses the load and recreates the device as a hung
/// job would; a bystander vcoproc computes right before and after.
#[test]
fn a_trial_run_past_its_bound_is_refused() {
    let salt = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    let mut body = format!("v = v ^ {salt}u;\n");
    for i in 0..3000u32 {
        body.push_str(&format!(
            "v = (v * {}u + (v >> {}u)) ^ {}u;\n",
            1_000_003 + i,
            i % 11 + 1,
            i
        ));
    }
    let src = format!(
        "@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
         @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
         var v = d[g.x];\n{body}d[g.x] = v;\n}}"
    );
    let cfg = VulkanConfig {
        compile_timeout: std::time::Duration::from_millis(100),
        ..VulkanConfig::default()
    };
    let pc = pcoproc(cfg);
    // The bystander's firmware is small and its compile happens now.
    let mut by = Domain::new(&pc, 1, HISTO.image);
    let n = 2000usize;
    let data = lcg(9, n);
    let dr = by.buffer(X, 4 * n as u64, Perms::R, MapKind::Pinned);
    dr.write(0, &u32_bytes(&data)).unwrap();
    let br = by.buffer(Y, 4096, Perms::RW, MapKind::Pinned);
    let ur = by.buffer(U, 4096, Perms::R, MapKind::Pinned);
    ur.write(0, &u32_bytes(&[2, n as u32])).unwrap();
    let round = |by: &mut Domain, k: u32| {
        let done = by.run(
            &Job::new()
                .bind(0, X, 4 * n as u64)
                .bind(1, Y, 4 * 16)
                .bind_group(1, 0, U, 16)
                .dispatch(0, [(n as u32).div_ceil(64), 1, 1])
                .signal(k),
        );
        assert_eq!(done.last().unwrap().status, Some(Status::Ok));
        let want: Vec<u32> = reference::histogram(&data, 2, 16)
            .iter()
            .map(|&c| c * k)
            .collect();
        assert_eq!(read_u32(&br, 0, 16), want);
    };
    round(&mut by, 1);
    let v = pc
        .create_vcoproc(
            coproc_core::ids::DomainId(2),
            coproc_core::policy::SchedParams::default(),
        )
        .unwrap();
    let e = v
        .load_firmware("big", src.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("trial run") && e.contains("100 ms"), "{e}");
    // Recreated device: the bystander's buffers were imported again.
    round(&mut by, 2);
}
