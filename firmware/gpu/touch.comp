#version 450
// touch: data[i] = data[i] * 2 + add (wrapping) for i < n.
//
// Bindings (set 0): 0 = data (read-write). Push constants: { uint n; uint add; }.

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(std430, set = 0, binding = 0) buffer Data { uint data[]; };

layout(push_constant) uniform Params {
    uint n;
    uint add;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < p.n) {
        data[i] = data[i] * 2u + p.add;
    }
}
