// affine: y[i] = x[i] * coeffs.mul + coeffs.add + offset for every i below
// arrayLength(&y) (the bound length: bind exactly the elements to write).
//
// Overrides: `block` (workgroup size and the workgroup tile's length,
// default 64), `offset` (default 0.0). Bindings: group 0 binding 0 =
// x (read), group 0 binding 1 = y (read-write), group 1 binding 0 =
// uniform Coeffs { mul: f32, add: f32 }.
//
// Entry `spill` writes y[i] = f32(i) for every invocation, with no bounds
// check in the source: what lands past the bound range is dropped.

override block: u32 = 64;
override offset: f32 = 0.0;

struct Coeffs {
    mul: f32,
    add: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(1) @binding(0) var<uniform> coeffs: Coeffs;

var<workgroup> tile: array<f32, block>;

@compute @workgroup_size(block)
fn affine(@builtin(global_invocation_id) g: vec3<u32>,
          @builtin(local_invocation_index) l: u32) {
    let i = g.x;
    let n = arrayLength(&y);
    if i < n {
        tile[l] = x[i];
    }
    workgroupBarrier();
    if i < n {
        y[i] = tile[l] * coeffs.mul + coeffs.add + offset;
    }
}

@compute @workgroup_size(64)
fn spill(@builtin(global_invocation_id) g: vec3<u32>) {
    y[g.x] = f32(g.x);
}
