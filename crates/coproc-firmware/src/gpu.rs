//! The GPU (Vulkan compute) example firmware, from `firmware/gpu/`.
//!
//! A GPU firmware image is a shader module: WGSL source text, included as
//! is, or SPIR-V compiled from GLSL by glslangValidator at build time. Its
//! compute entry points become the domain's pipelines, numbered in the
//! order of [`GpuFirmware::entry_points`] (the order in the module).
//! Most keep their bindings in descriptor set (WGSL group) 0 and take
//! parameters as push constants (WGSL `var<immediate>`); `affine` and
//! `histo` use uniform buffers in group 1 and specialization (WGSL
//! overrides, SPIR-V specialization constants). The host reference of each
//! is in [`crate::reference`].

/// The language of a GPU firmware image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// WGSL source text (UTF-8).
    Wgsl,
    /// A SPIR-V binary module (little-endian words).
    Spirv,
}

/// A GPU example firmware image.
#[derive(Debug, Clone, Copy)]
pub struct GpuFirmware {
    /// Its name (also the source's file stem under `firmware/gpu/`).
    pub name: &'static str,
    /// What [`image`](Self::image) holds.
    pub source: Source,
    /// The bytes a domain loads as firmware: WGSL text or a SPIR-V binary.
    pub image: &'static [u8],
    /// The compute entry points, in module order (pipeline index order).
    pub entry_points: &'static [&'static str],
}

impl GpuFirmware {
    /// The WGSL source, for a [`Source::Wgsl`] image.
    pub fn wgsl(&self) -> Option<&'static str> {
        match self.source {
            Source::Wgsl => std::str::from_utf8(self.image).ok(),
            Source::Spirv => None,
        }
    }
}

/// `saxpy` (firmware/gpu/saxpy.wgsl): `y[i] = a * x[i] + y[i]` for `i < n`.
///
/// Bindings: 0 `x: array<f32>` (read), 1 `y: array<f32>` (read-write).
/// Push constants: `{ a: f32, n: u32 }`. Workgroup size 64.
/// Reference: [`crate::reference::saxpy`].
pub const SAXPY: GpuFirmware = GpuFirmware {
    name: "saxpy",
    source: Source::Wgsl,
    image: include_bytes!("../../../firmware/gpu/saxpy.wgsl"),
    entry_points: &["saxpy"],
};

/// `reduce` (firmware/gpu/reduce.wgsl), entry `reduce_sum`: each workgroup
/// of 256 writes the wrapping sum of its 256 input elements (those at
/// index `>= n` count as 0) to `out[workgroup_id.x]`.
///
/// Bindings: 0 `input: array<u32>` (read), 1 `out: array<u32>`
/// (read-write). Push constants: `{ n: u32 }`. Workgroup size 256.
/// Reference: [`crate::reference::reduce_sum_groups`] with group 256.
pub const REDUCE: GpuFirmware = GpuFirmware {
    name: "reduce",
    source: Source::Wgsl,
    image: include_bytes!("../../../firmware/gpu/reduce.wgsl"),
    entry_points: &["reduce_sum"],
};

/// `spin` (firmware/gpu/spin.wgsl): a compute-bound load. For `i < n`,
/// `out[i]` is `seed ^ i` after `iters` steps of the LCG
/// `v = 1664525 v + 1013904223`.
///
/// Bindings: 0 `out: array<u32>` (read-write). Push constants:
/// `{ iters: u32, seed: u32, n: u32 }`. Workgroup size 64.
/// Reference: [`crate::reference::spin`].
pub const SPIN: GpuFirmware = GpuFirmware {
    name: "spin",
    source: Source::Wgsl,
    image: include_bytes!("../../../firmware/gpu/spin.wgsl"),
    entry_points: &["spin"],
};

/// `matmul` (firmware/gpu/matmul.comp, SPIR-V), entry `main`: `C = A B`
/// over `u32` with wrapping arithmetic, row-major, A `m x k`, B `k x n`.
/// Invocation (x, y) computes `C[y][x]`.
///
/// Bindings: 0 `A: uint[]` (read), 1 `B: uint[]` (read), 2 `C: uint[]`.
/// Push constants: `{ uint m; uint n; uint k; }`. Workgroup size 8 x 8.
/// Reference: [`crate::reference::matmul_u32`].
pub const MATMUL: GpuFirmware = GpuFirmware {
    name: "matmul",
    source: Source::Spirv,
    image: include_bytes!(concat!(env!("OUT_DIR"), "/matmul.spv")),
    entry_points: &["main"],
};

/// `touch` (firmware/gpu/touch.comp, SPIR-V), entry `main`:
/// `data[i] = data[i] * 2 + add` (wrapping) for `i < n`.
///
/// Bindings: 0 `data: uint[]` (read-write). Push constants:
/// `{ uint n; uint add; }`. Workgroup size 64.
/// Reference: [`crate::reference::touch`].
pub const TOUCH: GpuFirmware = GpuFirmware {
    name: "touch",
    source: Source::Spirv,
    image: include_bytes!(concat!(env!("OUT_DIR"), "/touch.spv")),
    entry_points: &["main"],
};

/// `twoentry` (firmware/gpu/twoentry.wgsl): two pipelines on one binding,
/// 0 `add_one` (`data[i] += 1`) and 1 `square` (`data[i] *= data[i]`,
/// wrapping), each for `i < n`.
///
/// Bindings: 0 `data: array<u32>` (read-write). Push constants:
/// `{ n: u32 }`. Workgroup size 64.
pub const TWOENTRY: GpuFirmware = GpuFirmware {
    name: "twoentry",
    source: Source::Wgsl,
    image: include_bytes!("../../../firmware/gpu/twoentry.wgsl"),
    entry_points: &["add_one", "square"],
};

/// `affine` (firmware/gpu/affine.wgsl): WGSL overrides, a uniform buffer
/// in bind group 1, and the bounds semantics. Entry 0 `affine`:
/// `y[i] = x[i] * mul + add + offset` for `i < arrayLength(&y)`; entry 1
/// `spill`: `y[i] = i as f32` for every invocation, unchecked in the source.
///
/// Overrides: `block` (workgroup size and workgroup array length, default
/// 64), `offset` (default 0.0). Bindings: group 0: 0 `x` (read), 1 `y`
/// (read-write); group 1: 0 uniform `{ mul: f32, add: f32 }`.
/// Reference: [`crate::reference::affine`].
pub const AFFINE: GpuFirmware = GpuFirmware {
    name: "affine",
    source: Source::Wgsl,
    image: include_bytes!("../../../firmware/gpu/affine.wgsl"),
    entry_points: &["affine", "spill"],
};

/// `histo` (firmware/gpu/histo.comp, SPIR-V), entry `main`: adds to
/// `bins[b]` the count of `i < n` with `(data[i] >> shift) % BINS == b`,
/// through a workgroup array of `BINS` counters.
///
/// Specialization constants: 0 `BINS` (default 16), 1 the workgroup size
/// in x (`local_size_x_id`, default 64). Bindings: set 0: 0 `data`
/// (read), 1 `bins` (read-write); set 1: 0 uniform `{ uint shift; uint n; }`.
/// Reference: [`crate::reference::histogram`].
pub const HISTO: GpuFirmware = GpuFirmware {
    name: "histo",
    source: Source::Spirv,
    image: include_bytes!(concat!(env!("OUT_DIR"), "/histo.spv")),
    entry_points: &["main"],
};

/// `invert` (firmware/gpu/invert.comp, SPIR-V), entry `main`: each texel
/// of the r32f storage image `dst` is `1 - src` at the same texel, read
/// through a texture and a sampler (nearest, at texel centres).
///
/// Bindings: set 0: 0 `texture2D src` (r32float), 1 `sampler`, 2
/// `image2D dst` (r32f, written). Workgroup size 8 x 8.
/// Reference: [`crate::reference::invert`].
pub const INVERT: GpuFirmware = GpuFirmware {
    name: "invert",
    source: Source::Spirv,
    image: include_bytes!(concat!(env!("OUT_DIR"), "/invert.spv")),
    entry_points: &["main"],
};

/// `histo` compiled for Vulkan 1.3 (SPIR-V 1.6): the same shader, its
/// workgroup size given by the `LocalSizeId` execution mode.
pub const HISTO_SPIRV16: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/histo.vk13.spv"));

/// Every GPU example firmware.
pub const ALL: &[GpuFirmware] = &[
    SAXPY, REDUCE, SPIN, MATMUL, TOUCH, TWOENTRY, AFFINE, HISTO, INVERT,
];

/// Look a GPU example up by name.
pub fn by_name(name: &str) -> Option<GpuFirmware> {
    ALL.iter().copied().find(|f| f.name == name)
}
