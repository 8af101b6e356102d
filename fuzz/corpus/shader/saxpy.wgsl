// saxpy: y[i] = a * x[i] + y[i] for i < n.
//
// Bindings: 0 = x (read), 1 = y (read_write). Immediates (push constants):
// { a: f32, n: u32 }. One invocation per element, 64 per workgroup.

struct Params {
    a: f32,
    n: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn saxpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < p.n {
        y[i] = p.a * x[i] + y[i];
    }
}
