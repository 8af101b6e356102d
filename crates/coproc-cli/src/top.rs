//! `coproc top`: a live terminal view (ratatui on crossterm) of the
//! pcoprocs and vcoprocs this domain may see: each vcoproc's current share
//! of its device, state, faults and doorbell rate, from two listings a
//! refresh apart; sortable with keys, `q` quits. `--once` takes two
//! listings `--delay` apart and prints one frame (or, with `-o json`, the
//! rows) for scripts.

use coproc_cli::output::{sanitize, Format};
use coproc_client::{Client, ClientError};
use coproc_proto::{CoprocInfo, VcoprocInfo};
use ratatui::backend::{Backend, TestBackend};
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use ratatui::{Frame, Terminal};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Errors of `coproc top`.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The daemon refused or went away.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The delay is out of range.
    #[error("--delay {0} s: use 0.1 to 3600 seconds")]
    Delay(f64),
}

/// `coproc top` arguments.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Seconds between refreshes (and, with `--once`, between the two
    /// listings the rates come from).
    #[arg(short, long, default_value_t = 1.0)]
    pub delay: f64,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Initial sort: share, id, domain, faults, doorbells, firmware.
    #[arg(long, value_enum, default_value_t = SortKey::Share)]
    pub sort: SortKey,
}

/// What the vcoproc rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// Current share of the device, highest first (key `s`).
    Share,
    /// Vcoproc id (key `i`).
    Id,
    /// Domain (key `d`).
    Domain,
    /// Faults, most first (key `f`).
    Faults,
    /// Doorbells per second, most first (key `b`).
    Doorbells,
    /// Firmware label (key `n`).
    Firmware,
}

impl SortKey {
    /// The key that selects a sort.
    pub fn from_key(c: char) -> Option<SortKey> {
        Some(match c {
            's' => SortKey::Share,
            'i' => SortKey::Id,
            'd' => SortKey::Domain,
            'f' => SortKey::Faults,
            'b' => SortKey::Doorbells,
            'n' => SortKey::Firmware,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SortKey::Share => "share",
            SortKey::Id => "id",
            SortKey::Domain => "domain",
            SortKey::Faults => "faults",
            SortKey::Doorbells => "doorbells",
            SortKey::Firmware => "firmware",
        }
    }
}

/// One listing of the daemon.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// The pcoprocs.
    pub coprocs: Vec<CoprocInfo>,
    /// The vcoprocs.
    pub vcoprocs: Vec<VcoprocInfo>,
}

impl Snapshot {
    /// List the daemon now.
    pub fn take(c: &mut Client) -> Result<Snapshot, ClientError> {
        let coprocs = c.list_coprocs()?;
        let vcoprocs = c.list_vcoprocs(None, None)?;
        Ok(Snapshot {
            at: Instant::now(),
            coprocs,
            vcoprocs,
        })
    }
}

/// One vcoproc row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VRow {
    /// Vcoproc id.
    pub id: u32,
    /// Pcoproc.
    pub coproc: String,
    /// Domain (uid).
    pub domain: u32,
    /// Firmware label, sanitised.
    pub firmware: String,
    /// State.
    pub state: String,
    /// Device time over wall time since the previous listing, percent
    /// (none on the first).
    pub share_pct: Option<f64>,
    /// Slices per second since the previous listing.
    pub slices_per_s: Option<f64>,
    /// Doorbells per second since the previous listing.
    pub doorbells_per_s: Option<f64>,
    /// Faults so far.
    pub faults: u64,
    /// Whether it faulted since the previous listing.
    pub new_fault: bool,
    /// Bytes mapped.
    pub mapped_bytes: u64,
}

/// What a frame shows.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// The pcoprocs.
    pub pcoprocs: Vec<CoprocInfo>,
    /// The vcoprocs, sorted.
    pub vcoprocs: Vec<VRow>,
    /// The sort.
    pub sort: SortKey,
    /// Seconds between the two listings (none on the first).
    pub interval_s: Option<f64>,
}

/// The view of `cur`, with rates since `prev`.
pub fn view(prev: Option<&Snapshot>, cur: &Snapshot, sort: SortKey) -> View {
    let secs = prev
        .map(|p| cur.at.saturating_duration_since(p.at).as_secs_f64())
        .filter(|&s| s > 0.0);
    let mut rows: Vec<VRow> = cur
        .vcoprocs
        .iter()
        .map(|v| {
            let before = prev.and_then(|p| p.vcoprocs.iter().find(|o| o.id == v.id));
            let rate = |f: &dyn Fn(&VcoprocInfo) -> u64| {
                let s = secs?;
                let b = before?;
                Some(f(v).saturating_sub(f(b)) as f64 / s)
            };
            VRow {
                id: v.id,
                coproc: sanitize(&v.coproc),
                domain: v.domain,
                firmware: sanitize(&v.firmware),
                state: sanitize(&v.state),
                share_pct: rate(&|i| i.run_ns).map(|ns_per_s| (ns_per_s / 1e7).min(100.0)),
                slices_per_s: rate(&|i| i.slices),
                doorbells_per_s: rate(&|i| i.doorbells),
                faults: v.faults,
                new_fault: before.is_some_and(|b| v.faults > b.faults),
                mapped_bytes: v.mapped_bytes,
            }
        })
        .collect();
    let key = |r: &VRow| -> (f64, f64) {
        match sort {
            SortKey::Share => (-r.share_pct.unwrap_or(0.0), 0.0),
            SortKey::Faults => (-(r.faults as f64), 0.0),
            SortKey::Doorbells => (-r.doorbells_per_s.unwrap_or(0.0), 0.0),
            SortKey::Domain => (f64::from(r.domain), 0.0),
            SortKey::Id | SortKey::Firmware => (0.0, 0.0),
        }
    };
    rows.sort_by(|a, b| {
        let by = key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal);
        let by = if sort == SortKey::Firmware {
            a.firmware.cmp(&b.firmware)
        } else {
            by
        };
        by.then(a.id.cmp(&b.id))
    });
    View {
        pcoprocs: cur
            .coprocs
            .iter()
            .map(|p| CoprocInfo {
                name: sanitize(&p.name),
                model: sanitize(&p.model),
                state: sanitize(&p.state),
                ..p.clone()
            })
            .collect(),
        vcoprocs: rows,
        sort,
        interval_s: secs,
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}{unit}"))
}

/// Draw `v` on `f`.
pub fn draw(f: &mut Frame, v: &View) {
    let prows = u16::try_from(v.pcoprocs.len()).unwrap_or(u16::MAX);
    let [title, top, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(prows.saturating_add(3)),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(
        Line::from(format!(
            "coproc top: {} pcoprocs, {} vcoprocs, sorted by {}  (keys: s share, i id, d domain, f faults, b doorbells, n firmware, q quit)",
            v.pcoprocs.len(),
            v.vcoprocs.len(),
            v.sort.name()
        )),
        title,
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let p = Table::new(
        v.pcoprocs.iter().map(|p| {
            Row::new(vec![
                p.name.clone(),
                p.class.clone(),
                p.policy.clone(),
                p.vcoprocs.to_string(),
                format!("{:.1}%", p.utilisation_1s_pct),
                format!("{:.1}%", p.utilisation_10s_pct),
                p.state.clone(),
            ])
        }),
        [
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Min(8),
        ],
    )
    .header(
        Row::new([
            "NAME", "CLASS", "POLICY", "VCOPROCS", "UTIL 1S", "UTIL 10S", "STATE",
        ])
        .style(bold),
    )
    .block(Block::bordered().title("pcoprocs"));
    f.render_widget(p, top);
    let rows = v.vcoprocs.iter().map(|r| {
        let row = Row::new(vec![
            r.id.to_string(),
            r.coproc.clone(),
            r.domain.to_string(),
            r.firmware.clone(),
            r.state.clone(),
            opt(r.share_pct, "%"),
            opt(r.slices_per_s, ""),
            opt(r.doorbells_per_s, ""),
            r.faults.to_string(),
            crate::verbs::memory(r.mapped_bytes),
        ]);
        if r.new_fault {
            row.style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "ID",
            "COPROC",
            "DOMAIN",
            "FIRMWARE",
            "STATE",
            "SHARE",
            "SLICES/S",
            "DOORBELLS/S",
            "FAULTS",
            "MAPPED",
        ])
        .style(bold),
    )
    .block(Block::bordered().title("vcoprocs"));
    f.render_widget(t, bottom);
}

/// The frame of `v` drawn on a `width`-column buffer just tall enough.
pub fn render(v: &View, width: u16) -> Buffer {
    let rows = v.pcoprocs.len() + v.vcoprocs.len() + 1 + 3 + 3;
    let height = u16::try_from(rows).unwrap_or(u16::MAX);
    let mut t = Terminal::new(TestBackend::new(width, height)).expect("a test backend");
    t.draw(|f| draw(f, v)).expect("a test backend draws");
    t.backend().buffer().clone()
}

/// The text of a buffer, one line per row, trailing blanks trimmed.
pub fn text(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let line: String = (0..b.area.width).map(|x| b[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `coproc top`.
pub fn top(c: &mut Client, f: Format, a: &TopArgs) -> Result<bool, TopError> {
    if !(0.1..=3600.0).contains(&a.delay) {
        return Err(TopError::Delay(a.delay));
    }
    let delay = Duration::from_secs_f64(a.delay);
    if a.once {
        let first = Snapshot::take(c)?;
        std::thread::sleep(delay);
        let second = Snapshot::take(c)?;
        let v = view(Some(&first), &second, a.sort);
        match f {
            Format::Json => println!(
                "{}",
                serde_json::to_string(&v).map_err(|e| std::io::Error::other(e.to_string()))?
            ),
            Format::Table => print!("{}", text(&render(&v, 120))),
        }
        return Ok(true);
    }
    let mut terminal = ratatui::init();
    let r = live(c, &mut terminal, delay, a.sort);
    ratatui::restore();
    r.map(|()| true)
}

/// Refresh every `delay` until `q`, Esc or Ctrl-C.
fn live<B: Backend>(
    c: &mut Client,
    terminal: &mut Terminal<B>,
    delay: Duration,
    mut sort: SortKey,
) -> Result<(), TopError> {
    let mut prev: Option<Snapshot> = None;
    let mut cur = Snapshot::take(c)?;
    let mut due = Instant::now() + delay;
    loop {
        let v = view(prev.as_ref(), &cur, sort);
        terminal.draw(|f| draw(f, &v))?;
        let wait = due.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Char(ch) => {
                        if let Some(s) = SortKey::from_key(ch) {
                            sort = s;
                        }
                    }
                    _ => {}
                }
            }
            continue;
        }
        prev = Some(std::mem::replace(&mut cur, Snapshot::take(c)?));
        due = Instant::now() + delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coproc(name: &str, u1: f64) -> CoprocInfo {
        CoprocInfo {
            name: name.into(),
            class: "mcu".into(),
            model: "Cortex-M4".into(),
            policy: "rr".into(),
            vcoprocs: 2,
            utilisation_pct: u1,
            utilisation_1s_pct: u1,
            utilisation_10s_pct: u1 / 2.0,
            busy_ns: 0,
            iova_base: 0,
            iova_size: 0,
            memory_bytes: 0,
            limits: std::collections::BTreeMap::new(),
            features: Vec::new(),
            state: "running".into(),
            failure: None,
        }
    }

    fn vc(id: u32, fw: &str, run_ns: u64, doorbells: u64, faults: u64) -> VcoprocInfo {
        VcoprocInfo {
            id,
            coproc: "mcu0".into(),
            domain: 1000 + id,
            firmware: fw.into(),
            state: "running".into(),
            run_ns,
            slices: run_ns / 1_000_000,
            switches: 0,
            faults,
            mappings: 0,
            mapped_bytes: 1 << 20,
            exit_code: None,
            weight: 256,
            priority: 0,
            cap_pct: None,
            reservation_us: None,
            run_delay_max_ns: 0,
            doorbells,
            preemptions: 0,
            last_fault: None,
        }
    }

    fn snaps() -> (Snapshot, Snapshot) {
        let t0 = Instant::now();
        let a = Snapshot {
            at: t0,
            coprocs: vec![coproc("mcu0", 0.0)],
            vcoprocs: vec![vc(1, "hog", 0, 0, 0), vc(2, "evil\u{1b}[2J", 0, 10, 0)],
        };
        let b = Snapshot {
            at: t0 + Duration::from_secs(2),
            coprocs: vec![coproc("mcu0", 99.0)],
            // Over 2 s: vcoproc 1 ran 1.5 s (75 %), vcoproc 2 0.5 s (25 %)
            // and rang 40 doorbells (20/s) and faulted once.
            vcoprocs: vec![
                vc(1, "hog", 1_500_000_000, 0, 0),
                vc(2, "evil\u{1b}[2J", 500_000_000, 50, 1),
            ],
        };
        (a, b)
    }

    /// The cell text of row `y` of `b`, trimmed.
    fn row(b: &Buffer, y: u16) -> String {
        (0..b.area.width)
            .map(|x| b[(x, y)].symbol())
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    #[test]
    fn shares_and_rates_come_from_the_two_listings() {
        let (a, b) = snaps();
        let v = view(Some(&a), &b, SortKey::Share);
        assert_eq!(v.vcoprocs[0].id, 1);
        assert_eq!(v.vcoprocs[0].share_pct, Some(75.0));
        assert_eq!(v.vcoprocs[1].share_pct, Some(25.0));
        assert_eq!(v.vcoprocs[1].doorbells_per_s, Some(20.0));
        assert!(v.vcoprocs[1].new_fault && !v.vcoprocs[0].new_fault);
        // The first frame has no rates.
        let first = view(None, &b, SortKey::Share);
        assert_eq!(first.vcoprocs[0].share_pct, None);
    }

    #[test]
    fn the_frame_shows_each_table_with_its_cells() {
        let (a, b) = snaps();
        let buf = render(&view(Some(&a), &b, SortKey::Share), 120);
        assert!(row(&buf, 0).starts_with("coproc top: 1 pcoprocs, 2 vcoprocs, sorted by share"));
        // Row 1 is the pcoproc table's border, 2 its header, 3 mcu0.
        assert!(row(&buf, 2).contains("NAME") && row(&buf, 2).contains("UTIL 1S"));
        let p = row(&buf, 3);
        assert!(p.starts_with("│mcu0"), "{p}");
        assert!(
            p.contains("99.0%") && p.contains("49.5%") && p.contains("running"),
            "{p}"
        );
        // Then the vcoproc table: border at 5, header 6, rows 7 and 8.
        assert!(row(&buf, 6).contains("SHARE") && row(&buf, 6).contains("DOORBELLS/S"));
        let hog = row(&buf, 7);
        assert!(hog.starts_with("│1 "), "{hog}");
        assert!(
            hog.contains("hog") && hog.contains("75.0%") && hog.contains("1.0 MiB"),
            "{hog}"
        );
        // The cell under SHARE holds the share.
        let header = row(&buf, 6);
        let at = header.find("SHARE").unwrap();
        let col = u16::try_from(header[..at].chars().count()).unwrap();
        assert_eq!(buf[(col, 8)].symbol(), "2");
        assert_eq!(buf[(col + 1, 8)].symbol(), "5");
        // A domain's label cannot drive the terminal.
        let evil = row(&buf, 8);
        assert!(!evil.chars().any(char::is_control), "{evil:?}");
        assert!(evil.contains("evil\\u{1b}[2J"), "{evil}");
        // The faulted row is highlighted.
        assert!(buf[(2, 8)].modifier.contains(Modifier::REVERSED));
        assert!(!buf[(2, 7)].modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn keys_sort_the_rows() {
        let (a, b) = snaps();
        let ids = |k| {
            view(Some(&a), &b, k)
                .vcoprocs
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(SortKey::Share), [1, 2]);
        assert_eq!(ids(SortKey::Doorbells), [2, 1]);
        assert_eq!(ids(SortKey::Faults), [2, 1]);
        assert_eq!(ids(SortKey::Id), [1, 2]);
        assert_eq!(ids(SortKey::Firmware), [2, 1], "\"evil…\" before \"hog\"");
        assert_eq!(SortKey::from_key('b'), Some(SortKey::Doorbells));
        assert_eq!(SortKey::from_key('x'), None);
        let buf = render(&view(Some(&a), &b, SortKey::Doorbells), 120);
        assert!(row(&buf, 7).starts_with("│2 "));
        assert!(row(&buf, 0).contains("sorted by doorbells"));
    }
}
