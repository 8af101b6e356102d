// spin: a compute-bound load for benchmarks. For i < n: v = seed ^ i, then
// iters steps of the LCG v = v * 1664525 + 1013904223 (mod 2^32), and
// out[i] = v. Large iters make a long dispatch.
//
// Bindings: 0 = out (read_write). Immediates: { iters: u32, seed: u32, n: u32 }.

struct Params {
    iters: u32,
    seed: u32,
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn spin(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < p.n {
        var v = p.seed ^ i;
        for (var k = 0u; k < p.iters; k = k + 1u) {
            v = v * 1664525u + 1013904223u;
        }
        out[i] = v;
    }
}
