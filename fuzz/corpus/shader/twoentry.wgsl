// Two entry points in one module, sharing binding 0 (read_write u32 data)
// and the immediates { n: u32 }; pipeline indices follow this order:
//   0: add_one  data[i] = data[i] + 1 for i < n
//   1: square   data[i] = data[i] * data[i] (wrapping) for i < n

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> data: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn add_one(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < p.n {
        data[i] = data[i] + 1u;
    }
}

@compute @workgroup_size(64)
fn square(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < p.n {
        data[i] = data[i] * data[i];
    }
}
