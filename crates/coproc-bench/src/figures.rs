//! Helpers every benchmark uses to turn measurements into figures. The
//! benchmarks import this; it imports none of them.

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `x` rounded to three decimals, as figures are printed.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
