//! The front ends: SPIR-V (specialized first) and WGSL (as naga or wgpu
//! spell it) parsed into a naga module.

use super::specialize::specialize_spirv;
use super::{chain, ShaderError};
use naga::Module;
use std::borrow::Cow;

/// WGSL as wgpu writes it: `var<push_constant>` is naga 30's
/// `var<immediate>` (padded with spaces so source locations stay right).
pub(super) fn wgpu_spellings(text: &str) -> Cow<'_, str> {
    const OLD: &str = "push_constant";
    if !text.contains(OLD) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(OLD) {
        let (before, after) = (&rest[..i], &rest[i + OLD.len()..]);
        let opens = before.trim_end().ends_with('<');
        let closes = after.trim_start().starts_with('>');
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let alone = !before.ends_with(ident) && !after.starts_with(ident);
        out.push_str(before);
        if opens && closes && alone {
            out.push_str("immediate    ");
        } else {
            out.push_str(OLD);
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Parse `shader` (SPIR-V with the specialization `values` substituted,
/// or WGSL text) into a module.
pub(super) fn front(
    shader: &[u8],
    spirv: bool,
    values: &[(String, f64)],
) -> Result<Module, ShaderError> {
    if spirv {
        let words = specialize_spirv(shader, values)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let opts = naga::front::spv::Options {
            adjust_coordinate_space: false,
            strict_capabilities: true,
            block_ctx_dump_prefix: None,
        };
        naga::front::spv::parse_u8_slice(&bytes, &opts).map_err(|e| ShaderError::Parse {
            lang: "SPIR-V",
            msg: chain(&e),
        })
    } else {
        let text = std::str::from_utf8(shader).map_err(|_| ShaderError::Format)?;
        let text = wgpu_spellings(text);
        naga::front::wgsl::parse_str(&text).map_err(|e| ShaderError::Parse {
            lang: "WGSL",
            msg: e.emit_to_string(&text).trim_end().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::shader::compile;
    use crate::shader::tests::LIMITS;

    /// wgpu's spelling of push constants is accepted as naga 30's.
    #[test]
    fn push_constant_spelling() {
        let src = b"struct P { n: u32 }\n var < push_constant > p: P;\n\
            @group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
            @compute @workgroup_size(1) fn main() { d[0] = p.n; }";
        assert_eq!(compile(src, &LIMITS).unwrap()[0].push_bytes, 4);
        // Only in `var<...>`: an identifier of that name stays.
        let src = b"@group(0) @binding(0) var<storage, read_write> push_constant: array<u32>;\n\
            @compute @workgroup_size(1) fn main() { push_constant[0] = 1u; }";
        assert!(compile(src, &LIMITS).is_ok());
    }
}
