#version 450
// invert: dst = 1 - src for each texel of an r32f image, reading src
// through a texture and a sampler (nearest, at texel centres).
//
// Bindings (set 0): 0 = texture2D src (r32float texels), 1 = sampler,
// 2 = r32f storage image dst (written).

layout(local_size_x = 8, local_size_y = 8) in;

layout(set = 0, binding = 0) uniform texture2D src;
layout(set = 0, binding = 1) uniform sampler smp;
layout(set = 0, binding = 2, r32f) uniform writeonly image2D dst;

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    ivec2 size = imageSize(dst);
    if (p.x >= size.x || p.y >= size.y) {
        return;
    }
    vec2 uv = (vec2(p) + 0.5) / vec2(size);
    float v = textureLod(sampler2D(src, smp), uv, 0.0).r;
    imageStore(dst, p, vec4(1.0 - v));
}
