// reduce_sum: each workgroup of 256 invocations sums (wrapping u32 addition)
// its 256 input elements, elements at index >= n counting as 0, with a
// tree reduction in workgroup memory, and writes out[workgroup_id.x].
//
// Bindings: 0 = input (read), 1 = out (read_write). Immediates: { n: u32 }.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
var<immediate> p: Params;

var<workgroup> partial: array<u32, 256>;

@compute @workgroup_size(256)
fn reduce_sum(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    var v = 0u;
    if gid.x < p.n {
        v = input[gid.x];
    }
    partial[lid] = v;
    workgroupBarrier();

    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if lid < stride {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }

    if lid == 0u {
        out[wid.x] = partial[0];
    }
}
