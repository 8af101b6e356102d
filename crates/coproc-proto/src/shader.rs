//! A `vulkan` firmware image with specialization values: the shader module
//! (WGSL text or SPIR-V) preceded by the values a domain sets for its WGSL
//! `override`s or SPIR-V specialization constants, for every entry point
//! or for one. A plain shader module is still an image: it uses the
//! defaults.
//!
//! Layout (little endian):
//!
//! ```text
//! magic   4 bytes  C0 'S' 'P' 'C'   (0xC0 never starts UTF-8 text or SPIR-V)
//! count   u32      values that follow (at most MAX_VALUES)
//! value × count:
//!   entry_len u16  bytes of the entry point name (0: every entry point)
//!   name_len  u16  bytes of the constant's name or decimal id (1..=MAX_NAME)
//!   value     f64  bits; booleans are 0 or 1, integers must be exact
//!   entry     entry_len bytes of UTF-8
//!   name      name_len bytes of UTF-8
//! shader  the rest: the module itself
//! ```
//!
//! The device decodes it with [`decode`] (hostile input: bounded, never
//! panics); the SDK builds it with [`Specialized`].

use thiserror::Error;

/// First bytes of a specialized image.
pub const MAGIC: [u8; 4] = [0xC0, b'S', b'P', b'C'];
/// Most values one image carries.
pub const MAX_VALUES: u32 = 1024;
/// Longest name (constant or entry point), bytes.
pub const MAX_NAME: usize = 256;

/// Why a specialized image does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// Shorter than its header or values say.
    #[error("specialization header truncated")]
    Truncated,
    /// More values than [`MAX_VALUES`].
    #[error("{0} specialization values (most: {MAX_VALUES})")]
    TooMany(u32),
    /// A name empty, too long or not UTF-8.
    #[error(
        "specialization constant or entry point name empty, over {MAX_NAME} bytes or not UTF-8"
    )]
    Name,
    /// The same constant set twice for the same entry point.
    #[error("specialization constant {0:?} set twice")]
    Duplicate(String),
}

/// One value: `name` (a WGSL override's name or `@id`, a SPIR-V
/// specialization constant's `SpecId` or debug name) = `value`, for entry
/// point `entry` or for all (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecValue {
    /// The entry point it applies to (`None`: all; a per-entry value wins).
    pub entry: Option<String>,
    /// The constant's name or decimal id.
    pub name: String,
    /// The value (booleans 0 or 1).
    pub value: f64,
}

/// A shader module and specialization values, as the SDK builds it.
///
/// ```
/// use coproc_proto::shader::{decode, Specialized};
/// let image = Specialized::new(b"/* WGSL */")
///     .set("block", 64.0)
///     .set_for("main", "scale", 2.5)
///     .image();
/// let (values, shader) = decode(&image).unwrap();
/// assert_eq!(shader, b"/* WGSL */");
/// assert_eq!(values.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Specialized {
    shader: Vec<u8>,
    values: Vec<SpecValue>,
}

impl Specialized {
    /// The module (WGSL text or SPIR-V bytes), no values yet (defaults).
    pub fn new(shader: &[u8]) -> Specialized {
        Specialized {
            shader: shader.to_vec(),
            values: Vec::new(),
        }
    }

    /// Set constant `name` (name or decimal id) for every entry point.
    #[must_use]
    pub fn set(mut self, name: &str, value: f64) -> Specialized {
        self.values.push(SpecValue {
            entry: None,
            name: name.into(),
            value,
        });
        self
    }

    /// Set constant `name` for entry point `entry` only.
    #[must_use]
    pub fn set_for(mut self, entry: &str, name: &str, value: f64) -> Specialized {
        self.values.push(SpecValue {
            entry: Some(entry.into()),
            name: name.into(),
            value,
        });
        self
    }

    /// The image to load (the plain module when no value is set).
    pub fn image(&self) -> Vec<u8> {
        if self.values.is_empty() {
            return self.shader.clone();
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(
            &u32::try_from(self.values.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for v in &self.values {
            let entry = v.entry.as_deref().unwrap_or("");
            out.extend_from_slice(&u16::try_from(entry.len()).unwrap_or(u16::MAX).to_le_bytes());
            out.extend_from_slice(
                &u16::try_from(v.name.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes(),
            );
            out.extend_from_slice(&v.value.to_bits().to_le_bytes());
            out.extend_from_slice(entry.as_bytes());
            out.extend_from_slice(v.name.as_bytes());
        }
        out.extend_from_slice(&self.shader);
        out
    }
}

/// Split an image into its specialization values and the module. An image
/// without [`MAGIC`] is a plain module with no values.
pub fn decode(image: &[u8]) -> Result<(Vec<SpecValue>, &[u8]), SpecError> {
    if !image.starts_with(&MAGIC) {
        return Ok((Vec::new(), image));
    }
    let mut rest = &image[MAGIC.len()..];
    let mut take = |n: usize| -> Result<&[u8], SpecError> {
        if rest.len() < n {
            return Err(SpecError::Truncated);
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let u16_at = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as usize;
    let count_bytes = take(4)?;
    let count = u32::from_le_bytes([
        count_bytes[0],
        count_bytes[1],
        count_bytes[2],
        count_bytes[3],
    ]);
    if count > MAX_VALUES {
        return Err(SpecError::TooMany(count));
    }
    let text = |b: &[u8], empty_ok: bool| -> Result<String, SpecError> {
        if b.len() > MAX_NAME || (b.is_empty() && !empty_ok) {
            return Err(SpecError::Name);
        }
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| SpecError::Name)
    };
    let mut values: Vec<SpecValue> = Vec::new();
    for _ in 0..count {
        let head = take(12)?;
        let (el, nl) = (u16_at(&head[0..2]), u16_at(&head[2..4]));
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&head[4..12]);
        let value = f64::from_bits(u64::from_le_bytes(bits));
        let entry = text(take(el)?, true)?;
        let name = text(take(nl)?, false)?;
        let entry = (!entry.is_empty()).then_some(entry);
        if values.iter().any(|v| v.entry == entry && v.name == name) {
            return Err(SpecError::Duplicate(name));
        }
        values.push(SpecValue { entry, name, value });
    }
    Ok((values, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_plain_images() {
        let img = Specialized::new(b"abc")
            .set("n", 3.0)
            .set_for("main", "0", -1.5)
            .image();
        let (v, s) = decode(&img).unwrap();
        assert_eq!(s, b"abc");
        assert_eq!(
            v,
            vec![
                SpecValue {
                    entry: None,
                    name: "n".into(),
                    value: 3.0
                },
                SpecValue {
                    entry: Some("main".into()),
                    name: "0".into(),
                    value: -1.5
                }
            ]
        );
        assert_eq!(decode(b"plain").unwrap(), (vec![], &b"plain"[..]));
        assert_eq!(Specialized::new(b"x").image(), b"x");
    }

    #[test]
    fn hostile_headers() {
        let img = Specialized::new(b"").set("abc", 1.0).image();
        for cut in MAGIC.len()..img.len() {
            assert_eq!(decode(&img[..cut]), Err(SpecError::Truncated), "cut {cut}");
        }
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&many), Err(SpecError::TooMany(u32::MAX)));
        let twice = Specialized::new(b"").set("a", 1.0).set("a", 2.0).image();
        assert_eq!(decode(&twice), Err(SpecError::Duplicate("a".into())));
        let empty = Specialized::new(b"").set("", 1.0).image();
        assert_eq!(decode(&empty), Err(SpecError::Name));
    }

    proptest::proptest! {
        /// Any bytes after the magic decode or are refused, never panic;
        /// what decodes encodes back to the same values and module.
        #[test]
        fn hostile_images(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut img = MAGIC.to_vec();
            img.extend_from_slice(&body);
            if let Ok((values, shader)) = decode(&img) {
                let mut again = Specialized::new(shader);
                for v in &values {
                    again = match &v.entry {
                        Some(e) => again.set_for(e, &v.name, v.value),
                        None => again.set(&v.name, v.value),
                    };
                }
                // (A module itself starting with the magic is no shader.)
                if !shader.starts_with(&MAGIC) {
                    let image = again.image();
                    let (v2, s2) = decode(&image).unwrap();
                    proptest::prop_assert_eq!(s2, shader);
                    proptest::prop_assert_eq!(v2.len(), values.len());
                }
            }
        }
    }
}
