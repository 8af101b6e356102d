//! The raw samples behind a benchmark's figures: `--samples FILE` writes
//! them as CSV, `--plot FILE.svg` draws them (latencies as a CDF, shares
//! per window). Benchmarks hand their samples here while they compute the
//! figures; nothing is kept unless one of the two options asked for it.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What a series holds, which decides how it is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One latency per event, in µs: drawn as a CDF.
    LatencyUs,
    /// One share per window (fraction of the device, 0..1): drawn against
    /// the window index.
    Share,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LatencyUs => "latency_us",
            Kind::Share => "share",
        }
    }
}

/// One named series of samples.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) values: Vec<f64>,
}

static ON: AtomicBool = AtomicBool::new(false);
static SINK: Mutex<Vec<Series>> = Mutex::new(Vec::new());

fn sink() -> std::sync::MutexGuard<'static, Vec<Series>> {
    SINK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keep the samples benchmarks record from now on.
pub(crate) fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Record a series (ignored unless [`enable`]d). `values` in the order
/// measured (latencies) or by window (shares).
pub(crate) fn record(name: &str, kind: Kind, values: &[f64]) {
    if ON.load(Ordering::Relaxed) {
        sink().push(Series {
            name: name.to_string(),
            kind,
            values: values.to_vec(),
        });
    }
}

/// The series recorded so far, taken.
pub(crate) fn take() -> Vec<Series> {
    std::mem::take(&mut *sink())
}

/// Write `series` as CSV: `series,kind,index,value`, one row per sample.
pub(crate) fn write_csv(path: &Path, series: &[Series]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "series,kind,index,value")?;
    for s in series {
        for (i, v) in s.values.iter().enumerate() {
            writeln!(out, "{},{},{i},{v}", s.name, s.kind.name())?;
        }
    }
    out.flush()
}

/// Errors of drawing a plot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    #[error("nothing to plot: this benchmark records no samples")]
    Empty,
    #[error("drawing {0}: {1}")]
    Draw(String, String),
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draw `series` into an SVG file: latency series as CDFs on a log µs
/// axis (one chart), share series against the window (another chart, below
/// it when both exist).
pub(crate) fn plot_svg(path: &Path, title: &str, series: &[Series]) -> Result<(), PlotError> {
    let lat: Vec<&Series> = series
        .iter()
        .filter(|s| s.kind == Kind::LatencyUs && !s.values.is_empty())
        .collect();
    let shares: Vec<&Series> = series
        .iter()
        .filter(|s| s.kind == Kind::Share && !s.values.is_empty())
        .collect();
    if lat.is_empty() && shares.is_empty() {
        return Err(PlotError::Empty);
    }
    let charts = u32::from(!lat.is_empty()) + u32::from(!shares.is_empty());
    let err =
        |e: &dyn std::fmt::Display| PlotError::Draw(path.display().to_string(), e.to_string());
    let root = SVGBackend::new(path, (900, 420 * charts)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((charts as usize, 1));
    let mut area = areas.iter();
    if let Some(a) = area.next().filter(|_| !lat.is_empty()) {
        draw_cdf(a, title, &lat).map_err(|e| err(&e))?;
    }
    if let Some(a) = area
        .next()
        .or_else(|| areas.first())
        .filter(|_| !shares.is_empty())
    {
        draw_shares(a, title, &shares).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_cdf(
    a: &Area<'_>,
    title: &str,
    lat: &[&Series],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let all = lat.iter().flat_map(|s| s.values.iter().copied());
    let lo = all
        .clone()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = all.fold(0.0f64, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (1e-3, 1.0)
    };
    let mut chart = ChartBuilder::on(a)
        .caption(format!("{title}: latency CDF"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_desc("µs (log scale)")
        .y_desc("fraction of samples ≤ x")
        .draw()?;
    for (i, s) in lat.iter().enumerate() {
        let mut v: Vec<f64> = s.values.iter().copied().filter(|x| *x > 0.0).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let points = v.iter().enumerate().map(|(k, x)| (*x, (k + 1) as f64 / n));
        line(&mut chart, i, &s.name, points.collect())?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn draw_shares(
    a: &Area<'_>,
    title: &str,
    shares: &[&Series],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let windows = shares.iter().map(|s| s.values.len()).max().unwrap_or(1);
    let top = shares
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.15;
    let mut chart = ChartBuilder::on(a)
        .caption(format!("{title}: share per window"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0usize..windows.max(2) - 1, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("window")
        .y_desc("share of the device")
        .draw()?;
    for (i, s) in shares.iter().enumerate() {
        line(
            &mut chart,
            i,
            &s.name,
            s.values.iter().copied().enumerate().collect(),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

type Chart<'a, 'b, X> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, RangedCoordf64>>;

/// Series `i` of a chart, named in its legend.
fn line<X: Ranged>(
    chart: &mut Chart<'_, '_, X>,
    i: usize,
    name: &str,
    points: Vec<(X::ValueType, f64)>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X::ValueType: Clone + 'static,
{
    let colour = COLOURS[i % COLOURS.len()];
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    Ok(())
}

/// The legend box of a chart.
fn legend<'b, X: Ranged>(
    chart: &mut Chart<'b, 'b, X>,
    at: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(at)
        .draw()
}
