#version 450
// matmul: C = A * B over uint in wrapping arithmetic, A m x k, B k x n,
// C m x n, all row-major. One invocation per element of C: row =
// gl_GlobalInvocationID.y, col = gl_GlobalInvocationID.x; 8x8 workgroups.
//
// Bindings (set 0): 0 = A (readonly), 1 = B (readonly), 2 = C.
// Push constants: { uint m; uint n; uint k; }.

layout(local_size_x = 8, local_size_y = 8, local_size_z = 1) in;

layout(std430, set = 0, binding = 0) readonly buffer BufA { uint a[]; };
layout(std430, set = 0, binding = 1) readonly buffer BufB { uint b[]; };
layout(std430, set = 0, binding = 2) buffer BufC { uint c[]; };

layout(push_constant) uniform Params {
    uint m;
    uint n;
    uint k;
} p;

void main() {
    uint row = gl_GlobalInvocationID.y;
    uint col = gl_GlobalInvocationID.x;
    if (row < p.m && col < p.n) {
        uint acc = 0u;
        for (uint j = 0u; j < p.k; j++) {
            acc += a[row * p.k + j] * b[j * p.n + col];
        }
        c[row * p.n + col] = acc;
    }
}
