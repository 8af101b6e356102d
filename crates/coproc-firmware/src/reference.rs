//! Host reference implementations of the example firmware's algorithms.
//! They are written from the algorithms' definitions, not from the C code;
//! CRC-32 comes from the `crc32fast` crate, an independent implementation.
//! The GPU examples' references ([`saxpy`], [`reduce_sum_groups`],
//! [`spin`], [`matmul_u32`], [`touch`]) are likewise written from the
//! definitions in [`crate::gpu`], not from the shaders.

// Host references compute in the firmware's own widths: the truncations and wraps are the algorithms' (fixed-point saturation, 32-bit LCGs).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

/// Most FIR taps the `fir` firmware accepts.
pub const FIR_MAX_TAPS: usize = 256;

/// Q15 FIR: `y[n] = sat16((sum_k h[k] * x[n-k] + 2^14) >> 15)`, `x[i<0] = 0`.
pub fn fir_q15(x: &[i16], h: &[i16]) -> Vec<i16> {
    (0..x.len())
        .map(|n| {
            let acc: i64 = h
                .iter()
                .enumerate()
                .filter(|&(k, _)| k <= n)
                .map(|(k, &hk)| i64::from(hk) * i64::from(x[n - k]))
                .sum();
            ((acc + (1 << 14)) >> 15).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
        })
        .collect()
}

/// CRC-32 (IEEE 802.3) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The `echo` firmware's answer to message number `seq` (1-based): words
/// 0..15 echoed, word 15 the count.
pub fn echo(words: &[u32; 16], seq: u32) -> [u32; 16] {
    let mut out = *words;
    out[15] = seq;
    out
}

/// The `hog` firmware's LCG state (`x = 1664525 x + 1013904223`, from 1)
/// after `steps` steps, by composing the affine map with itself
/// (O(log steps)).
pub fn hog_state(steps: u64) -> u32 {
    // (a, c) represents x -> a x + c (mod 2^32).
    let (mut a, mut c) = (1u32, 0u32);
    let (mut pa, mut pc) = (1_664_525u32, 1_013_904_223u32);
    let mut n = steps;
    while n > 0 {
        if n & 1 == 1 {
            // apply (pa, pc) after (a, c)
            a = pa.wrapping_mul(a);
            c = pa.wrapping_mul(c).wrapping_add(pc);
        }
        // square: (pa, pc) after itself
        pc = pa.wrapping_mul(pc).wrapping_add(pc);
        pa = pa.wrapping_mul(pa);
        n >>= 1;
    }
    a.wrapping_add(c)
}

/// Whether `state`, read from a running `hog`'s mailbox word 1, is one it
/// published, given its progress word 0 read before (`first`) and after
/// (`after`) the state. hog publishes the progress, then the state, so a
/// reader that races it sees a state from progress `first - 1` (the state
/// not yet updated) to `after` (any number of publications may pass
/// between two reads when the reader is descheduled). Progress counts
/// 2^16 steps and wraps at 16 bits.
pub fn hog_state_between(first: u32, state: u32, after: u32) -> bool {
    let span = after.wrapping_sub(first) & 0xffff;
    (0..=span + 1).any(|k| {
        let d = first.wrapping_sub(1).wrapping_add(k) & 0xffff;
        hog_state(u64::from(d) << 16) == state
    })
}

/// Where a list walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListWalk {
    /// Wrapping sum of the values visited.
    pub sum: u32,
    /// Nodes visited.
    pub count: u32,
    /// The pointer the walk stopped at: 0 at the end of the list, else the
    /// next node when the bound was reached.
    pub end: u32,
}

/// [`list_walk`] over a copy of the shared memory: `bytes` were at device
/// (and host) address `base`, so a pointer `p` names the node at offset
/// `p - base`; a pointer outside the copy, unaligned, or null-but-not-end
/// ends the walk with `Err(p)` as the firmware's fault would.
pub fn list_walk_in(bytes: &[u8], base: u64, head: u32, max: u32) -> Result<ListWalk, u32> {
    let word = |off: usize| {
        bytes
            .get(off..off + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    list_walk(
        |p| {
            let off = u64::from(p).checked_sub(base)?;
            if off % 4 != 0 {
                return None;
            }
            let off = usize::try_from(off).ok()?;
            Some([word(off)?, word(off.checked_add(4)?)?])
        },
        head,
        max,
    )
}

/// The `listwalk` firmware's walk: follow `next` pointers from `head`,
/// visiting at most `max` nodes, summing values. `node(p)` reads the node
/// at `p` as `[next, value]`, or `None` when `p` is not readable memory:
/// then the walk fails with that address, as the device faults there.
pub fn list_walk(
    node: impl Fn(u32) -> Option<[u32; 2]>,
    head: u32,
    max: u32,
) -> Result<ListWalk, u32> {
    let mut w = ListWalk {
        sum: 0,
        count: 0,
        end: head,
    };
    while w.end != 0 && w.count < max {
        let [next, value] = node(w.end).ok_or(w.end)?;
        w.sum = w.sum.wrapping_add(value);
        w.count += 1;
        w.end = next;
    }
    Ok(w)
}

/// Word `i` the `localbuf` firmware fills with for `seed`.
pub fn localbuf_word(seed: u32, i: u32) -> u32 {
    seed.wrapping_mul(2_654_435_761)
        .wrapping_add(i.wrapping_mul(40_503))
}

/// The `localbuf` firmware's answer to a fill of `words` words.
pub fn localbuf_sum(seed: u32, words: u32) -> u32 {
    (0..words).fold(0u32, |s, i| s.wrapping_add(localbuf_word(seed, i)))
}

/// A deterministic pseudo-random generator for test data (xorshift64*).
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `n` random Q15 samples.
    pub fn samples(&mut self, n: usize) -> Vec<i16> {
        (0..n).map(|_| self.next_u64() as i16).collect()
    }
}

/// What `pager` reports: the wrapping sum of the first word of each page.
pub fn pager_sum(first_words: &[u32]) -> u32 {
    first_words.iter().fold(0u32, |a, &w| a.wrapping_add(w))
}

/// The `scribble` firmware's checksum of one pass over `buf` (little-endian
/// 32-bit words): words 1.. folded as `c = (c ^ w) * 16777619` from
/// 2166136261; word 0 (the pass counter it writes) is left out.
pub fn scribble_checksum(buf: &[u8]) -> u32 {
    buf.chunks_exact(4)
        .skip(1)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .fold(2_166_136_261u32, |c, w| (c ^ w).wrapping_mul(16_777_619))
}

/// The `saxpy` GPU firmware: `a * x[i] + y[i]` for each `i`, over the
/// shorter of `x` and `y`. Computed as a separate multiply and add; a GPU
/// may fuse them, so compare with a tolerance.
pub fn saxpy(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(&x, &y)| a * x + y).collect()
}

/// The `reduce` GPU firmware's output: the wrapping sum of each run of
/// `group` elements of `input` (the last one possibly short, its missing
/// elements counting as 0), one per workgroup. The firmware's group is
/// 256; `input` is its first `n` elements.
///
/// # Panics
///
/// If `group` is 0.
pub fn reduce_sum_groups(input: &[u32], group: usize) -> Vec<u32> {
    assert!(group > 0, "group must be positive");
    input
        .chunks(group)
        .map(|c| c.iter().fold(0u32, |s, &v| s.wrapping_add(v)))
        .collect()
}

/// The `spin` GPU firmware's output for `i < n`: `seed ^ i` after `iters`
/// steps of `v = 1664525 v + 1013904223` (mod 2^32). Runs in O(n log
/// iters), composing the affine step with itself.
pub fn spin(seed: u32, iters: u32, n: usize) -> Vec<u32> {
    // (a, c) represents v -> a v + c (mod 2^32); find the map for `iters`.
    let (mut a, mut c) = (1u32, 0u32);
    let (mut pa, mut pc) = (1_664_525u32, 1_013_904_223u32);
    let mut k = iters;
    while k > 0 {
        if k & 1 == 1 {
            a = pa.wrapping_mul(a);
            c = pa.wrapping_mul(c).wrapping_add(pc);
        }
        pc = pa.wrapping_mul(pc).wrapping_add(pc);
        pa = pa.wrapping_mul(pa);
        k >>= 1;
    }
    (0..n)
        .map(|i| a.wrapping_mul(seed ^ i as u32).wrapping_add(c))
        .collect()
}

/// The `matmul` GPU firmware: `C = A B` over `u32` with wrapping
/// arithmetic, all row-major, `a` `m x k`, `b` `k x n`, the result `m x n`.
///
/// # Panics
///
/// If `a` or `b` is shorter than its shape says.
pub fn matmul_u32(a: &[u32], b: &[u32], m: usize, n: usize, k: usize) -> Vec<u32> {
    assert!(a.len() >= m * k, "a is shorter than m x k");
    assert!(b.len() >= k * n, "b is shorter than k x n");
    let mut c = vec![0u32; m * n];
    for row in 0..m {
        for col in 0..n {
            c[row * n + col] = (0..k).fold(0u32, |acc, j| {
                acc.wrapping_add(a[row * k + j].wrapping_mul(b[j * n + col]))
            });
        }
    }
    c
}

/// The `touch` GPU firmware: `data[i] * 2 + add` (wrapping) for each `i`.
pub fn touch(data: &[u32], add: u32) -> Vec<u32> {
    data.iter()
        .map(|&d| d.wrapping_mul(2).wrapping_add(add))
        .collect()
}

/// The discrete Fourier transform from its definition, in double precision:
/// `X[k] = Σ_n x[n]·e^{−2πikn/N}` over complex `(re, im)` pairs (O(N²); the
/// `fft` firmware computes the same with a radix-2 FFT in single precision).
pub fn dft(x: &[(f32, f32)]) -> Vec<(f64, f64)> {
    let n = x.len();
    (0..n)
        .map(|k| {
            x.iter()
                .enumerate()
                .fold((0.0, 0.0), |(re, im), (j, &(a, b))| {
                    // k·j mod n keeps the angle small and exact.
                    let t = -2.0 * std::f64::consts::PI * ((k * j) % n) as f64 / n as f64;
                    let (s, c) = t.sin_cos();
                    let (a, b) = (f64::from(a), f64::from(b));
                    (re + a * c - b * s, im + a * s + b * c)
                })
        })
        .collect()
}

/// The RBJ audio-EQ-cookbook second-order low-pass filter, in double
/// precision, from its definition: `w0 = 2π·f`, `α = sin(w0)/(2Q)`,
/// `b0 = b2 = (1 − cos w0)/2`, `b1 = 1 − cos w0`, `a0 = 1 + α`,
/// `a1 = −2 cos w0`, `a2 = 1 − α`, and
/// `y[n] = (b0·x[n] + b1·x[n−1] + b2·x[n−2] − a1·y[n−1] − a2·y[n−2]) / a0`
/// with zero initial state. `f` is the cut-off over the sample rate.
pub fn biquad_lowpass(x: &[f32], f: f64, q: f64) -> Vec<f64> {
    let w0 = 2.0 * std::f64::consts::PI * f;
    let (s, c) = w0.sin_cos();
    let alpha = s / (2.0 * q);
    let (b0, b1, b2) = ((1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0);
    let (a0, a1, a2) = (1.0 + alpha, -2.0 * c, 1.0 - alpha);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0, 0.0, 0.0, 0.0);
    x.iter()
        .map(|&xi| {
            let xi = f64::from(xi);
            let y = (b0 * xi + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2) / a0;
            (x2, x1, y2, y1) = (x1, xi, y1, y);
            y
        })
        .collect()
}

/// Sum of `i²` for `i` in `0..n`, as the `hello` firmware computes it
/// (wrapping 32-bit squares, 64-bit sum): `(n−1)·n·(2n−1)/6` while the
/// squares fit 32 bits.
pub fn hello_sum(n: u32) -> u64 {
    (0..n).map(|i| u64::from(i.wrapping_mul(i))).sum()
}

/// The console line the `hello` firmware prints for `n`.
pub fn hello_line(n: u32) -> String {
    let sum = hello_sum(n);
    #[allow(clippy::cast_precision_loss)] // n ≤ 65536 is exact in f32
    let decay = (-(n as f32) / 65536.0).exp();
    format!(
        "hello: n={n} sum={sum} root={:.3} decay={:.3}",
        (sum as f64).sqrt(),
        decay
    )
}

/// `affine.wgsl`'s `affine` entry: `x[i] * mul + add + offset` for each
/// element of `x` (f32 arithmetic, in the shader's order).
pub fn affine(x: &[f32], mul: f32, add: f32, offset: f32) -> Vec<f32> {
    x.iter().map(|&v| v * mul + add + offset).collect()
}

/// `invert.comp`: `1 - v` for each texel.
pub fn invert(src: &[f32]) -> Vec<f32> {
    src.iter().map(|&v| 1.0 - v).collect()
}

/// `histo.comp`: counts of `(v >> shift) % bins` over `data`.
pub fn histogram(data: &[u32], shift: u32, bins: usize) -> Vec<u32> {
    let mut out = vec![0u32; bins];
    for &v in data {
        out[((v >> shift) % bins as u32) as usize] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fir_identity_and_saturation() {
        let x = [100i16, -200, 300, i16::MAX, i16::MIN];
        // h = [0.5 in Q15] halves (rounding half up).
        assert_eq!(fir_q15(&x, &[16384]), [50, -100, 150, 16384, -16384]);
        // Two taps of ~1.0 saturate.
        let y = fir_q15(&[i16::MAX, i16::MAX], &[i16::MAX, i16::MAX]);
        assert_eq!(y, [32766, i16::MAX]);
        let y = fir_q15(&[i16::MIN, i16::MIN], &[i16::MAX, i16::MAX]);
        assert_eq!(y[1], i16::MIN);
    }

    #[test]
    fn hog_states_read_while_it_runs_are_accepted_and_others_are_not() {
        // Published pairs (progress, state) for progress 1..=6.
        let pub_state = |d: u32| hog_state(u64::from(d) << 16);
        // Read in step: the state of the progress read, or the one before.
        assert!(hog_state_between(3, pub_state(3), 3));
        assert!(hog_state_between(3, pub_state(2), 3));
        // The reader was descheduled between its two reads: three more
        // publications passed.
        assert!(hog_state_between(3, pub_state(6), 6));
        assert!(!hog_state_between(3, pub_state(6), 5));
        assert!(!hog_state_between(3, pub_state(1), 6));
        assert!(!hog_state_between(3, pub_state(3) ^ 1, 6));
        // Around the 16-bit wrap.
        assert!(hog_state_between(0xffff, pub_state(0), 0));
        assert!(hog_state_between(0, pub_state(0xffff), 0));
        assert!(hog_state_between(0xfffe, pub_state(1), 1));
    }

    #[test]
    fn hog_state_matches_stepping() {
        let mut x = 1u32;
        for n in 0..5000u64 {
            assert_eq!(hog_state(n), x, "step {n}");
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        }
    }

    #[test]
    fn list_walk_in_reads_nodes_from_a_copy() {
        let words = [0x1008u32, 5, 0, 7, 0x2000, 1, 0x1002, 9];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let w = list_walk_in(&bytes, 0x1000, 0x1000, 10).unwrap();
        assert_eq!((w.sum, w.count, w.end), (12, 2, 0));
        assert_eq!(list_walk_in(&bytes, 0x1000, 0x1010, 10), Err(0x2000));
        assert_eq!(list_walk_in(&bytes, 0x1000, 0x1018, 10), Err(0x1002));
        assert_eq!(list_walk_in(&bytes, 0x1000, 0x0ff8, 10), Err(0x0ff8));
        assert_eq!(list_walk_in(&bytes, 0x1000, 0x101c, 10), Err(0x101c));
    }

    #[test]
    fn list_walk_follows_bounds_and_fails() {
        // 3 -> 1 -> 2 -> end, values 10x the index.
        let nodes = |p: u32| match p {
            1 => Some([2, 10]),
            2 => Some([0, 20]),
            3 => Some([1, 30]),
            4 => Some([4, 5]),
            5 => Some([99, 1]),
            _ => None,
        };
        let w = |sum, count, end| Ok(ListWalk { sum, count, end });
        assert_eq!(list_walk(nodes, 3, 100), w(60, 3, 0));
        assert_eq!(list_walk(nodes, 3, 2), w(40, 2, 2));
        assert_eq!(list_walk(nodes, 0, 100), w(0, 0, 0));
        assert_eq!(list_walk(nodes, 4, 7), w(35, 7, 4));
        assert_eq!(list_walk(nodes, 5, 7), Err(99));
        assert_eq!(
            localbuf_sum(7, 3),
            (0..3)
                .map(|i| localbuf_word(7, i))
                .fold(0u32, u32::wrapping_add)
        );
        assert_eq!(localbuf_word(1, 1), 2_654_435_761u32.wrapping_add(40_503));
    }

    #[test]
    fn scribble_checksum_skips_the_counter() {
        let mut b = [0u8; 12];
        b[4] = 1;
        let want = (0x811C_9DC5_u32 ^ 1)
            .wrapping_mul(16_777_619)
            .wrapping_mul(16_777_619);
        assert_eq!(scribble_checksum(&b), want);
        b[0] = 0xff;
        assert_eq!(scribble_checksum(&b), want);
    }

    #[test]
    fn saxpy_small() {
        let y = saxpy(2.0, &[1.0, -0.5, 3.0], &[10.0, 1.0, -6.0]);
        assert_eq!(y, [12.0, 0.0, 0.0]);
        assert_eq!(saxpy(1.0, &[1.0, 2.0], &[1.0]), [2.0]);
    }

    #[test]
    fn reduce_sum_groups_wraps_and_pads() {
        assert_eq!(reduce_sum_groups(&[1, 2, 3, 4, 5], 2), [3, 7, 5]);
        assert_eq!(reduce_sum_groups(&[u32::MAX, 2, 7], 4), [8]);
        assert_eq!(reduce_sum_groups(&[], 256), Vec::<u32>::new());
    }

    #[test]
    fn spin_matches_stepping() {
        let lcg = |v: u32| v.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        assert_eq!(spin(5, 0, 3), [5, 4, 7]);
        assert_eq!(spin(0, 1, 2), [1_013_904_223, 1_015_568_748]);
        for iters in 0..300u32 {
            let want: Vec<u32> = (0..4u32)
                .map(|i| (0..iters).fold(0xdead_beef ^ i, |v, _| lcg(v)))
                .collect();
            assert_eq!(spin(0xdead_beef, iters, 4), want, "iters {iters}");
        }
    }

    #[test]
    fn matmul_u32_small_and_wrapping() {
        // [1 2 3; 4 5 6] x [7 8; 9 10; 11 12] = [58 64; 139 154]
        let c = matmul_u32(&[1, 2, 3, 4, 5, 6], &[7, 8, 9, 10, 11, 12], 2, 2, 3);
        assert_eq!(c, [58, 64, 139, 154]);
        // 1 x 2 times 2 x 1: 2^31 * 2 + 3 * 1 wraps to 3.
        assert_eq!(matmul_u32(&[1 << 31, 3], &[2, 1], 1, 1, 2), [3]);
        // k = 0: zeros.
        assert_eq!(matmul_u32(&[], &[], 2, 1, 0), [0, 0]);
    }

    #[test]
    fn touch_doubles_and_adds() {
        assert_eq!(touch(&[0, 1, 5, 0x8000_0001], 3), [3, 5, 13, 5]);
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn images_are_arm_elf() {
        for fw in crate::ALL {
            assert_eq!(&fw.elf[..4], b"\x7fELF", "{}", fw.name);
            assert_eq!(fw.elf[4], 1, "{} is ELF32", fw.name);
            assert_eq!(
                u16::from_le_bytes([fw.elf[18], fw.elf[19]]),
                40,
                "{} is EM_ARM",
                fw.name
            );
        }
    }
}
