var<immediate> p: array<u32, 80>;
@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(1)
fn main() { y[0] = p[70]; }
