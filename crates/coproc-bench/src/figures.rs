//! Helpers every benchmark uses to turn measurements into figures. The
//! benchmarks import this; it imports none of them.

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `q` quantile (0..=1) of `sorted` by nearest rank: the sample at
/// index round((n - 1) q). NaN for no samples.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let last = sorted.len() - 1;
    // q in 0..=1 and the index rounded from at most `last`: no truncation.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((last as f64 * q.clamp(0.0, 1.0)).round() as usize).min(last);
    sorted[i]
}

/// `x` rounded to one decimal.
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` rounded to three decimals, as figures are printed.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
