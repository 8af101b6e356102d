// spin: a compute-bound load for benchmarks. For i < n: v = seed ^ i, then
// iters steps of the LCG v = v * 1664525 + 1013904223 (mod 2^32), and
// out[i] = v. Large iters make a long dispatch.
//
// Bindings: 0 = out (read_write). Immediates: { iters: u32, seed: u32, n: u32 }.
//
// The steps run 16 to a loop iteration, then the remainder in a second
// loop: llvmpipe (lavapipe) ends a loop nest after 65535 iterations, so a
// plain one-step loop would stop early there. Up to 65535 * 16 + 15 steps
// are exact everywhere; longer dispatches come from larger n.

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
        let blocks = p.iters / 16u;
        for (var k = 0u; k < blocks; k = k + 1u) {
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
            v = v * 1664525u + 1013904223u;
        }
        for (var k = 0u; k < p.iters % 16u; k = k + 1u) {
            v = v * 1664525u + 1013904223u;
        }
        out[i] = v;
    }
}
