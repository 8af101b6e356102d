#version 450
// histo: a histogram with specialization constants and a uniform block.
//
// Specialization constants: 0 = BINS (default 16; sizes the shared array),
// 1 = the workgroup size in x (local_size_x_id, default 64).
// Bindings: set 0 binding 0 = data (read), set 0 binding 1 = bins (BINS
// words, read-write, added to); set 1 binding 0 = uniform Params
// { uint shift; uint n; }. Element i < n counts in bin (data[i] >> shift) % BINS.

layout(local_size_x = 64, local_size_x_id = 1) in;
layout(constant_id = 0) const uint BINS = 16;

layout(std430, set = 0, binding = 0) readonly buffer Data { uint data[]; };
layout(std430, set = 0, binding = 1) buffer Bins { uint bins[]; };
layout(std140, set = 1, binding = 0) uniform Params {
    uint shift;
    uint n;
} p;

shared uint local_bins[BINS];

void main() {
    uint l = gl_LocalInvocationID.x;
    for (uint b = l; b < BINS; b += gl_WorkGroupSize.x) {
        local_bins[b] = 0u;
    }
    barrier();
    uint i = gl_GlobalInvocationID.x;
    if (i < p.n) {
        atomicAdd(local_bins[(data[i] >> p.shift) % BINS], 1u);
    }
    barrier();
    for (uint b = l; b < BINS; b += gl_WorkGroupSize.x) {
        atomicAdd(bins[b], local_bins[b]);
    }
}
