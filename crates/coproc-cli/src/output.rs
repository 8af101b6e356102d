//! Output formats: aligned tables for people, JSON for programs.

use clap::ValueEnum;
use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};

/// How to print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON: an object, or an array of objects for listings (docs/cli.md).
    Json,
}

/// `cell` safe to print on a terminal: control characters (escape
/// sequences, carriage returns, line feeds) are shown escaped, so text that
/// came from a domain (a firmware label, a fault message) can neither
/// drive the terminal nor forge rows.
pub fn sanitize(cell: &str) -> String {
    if !cell.chars().any(char::is_control) {
        return cell.to_string();
    }
    cell.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rows under a header as text (comfy-table, no borders), each column as
/// wide as its widest cell, two spaces apart; columns whose cells all look
/// numeric are right-aligned. Every cell is [`sanitize`]d.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c)).collect())
        .collect();
    let numeric = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_digit() || ".-%".contains(ch))
    };
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for r in &rows {
        t.add_row(r.iter().map(String::as_str));
    }
    let last = header.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { 2 }));
        col.set_constraint(ColumnConstraint::ContentWidth);
        let all_numeric = !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.get(i).is_some_and(|c| numeric(c) || c == "-"))
            && rows.iter().any(|r| r.get(i).is_some_and(|c| numeric(c)));
        if all_numeric {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Print [`render_table`].
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

/// Nanoseconds since the Unix epoch as an RFC 3339 UTC timestamp with
/// nanoseconds, e.g. `2026-12-05T03:12:19.123456789Z`.
#[must_use]
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, for
    // dates from 1970 on).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    use super::{render_table, rfc3339, sanitize};

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(sanitize("crc32 v1"), "crc32 v1");
        let s = sanitize("x\u{1b}]0;owned\u{7}\r\nmcu0  7  root");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(s, "x\\u{1b}]0;owned\\u{7}\\r\\nmcu0  7  root");
        assert_eq!(sanitize("\u{9b}2J"), "\\u{9b}2J");
    }

    #[test]
    fn tables_align_and_escape_domain_text() {
        let t = render_table(
            &["id", "firmware"],
            &[
                vec!["7".into(), "crc\u{1b}[2J\nmcu0 9".into()],
                vec!["12".into(), "echo".into()],
            ],
        );
        assert_eq!(t, "ID  FIRMWARE\n 7  crc\\u{1b}[2J\\nmcu0 9\n12  echo\n");
    }

    #[test]
    fn wall_clock_times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_764_904_339_123_456_789),
            "2025-12-05T03:12:19.123456789Z"
        );
        // 2000-02-29 (a leap day of a century leap year).
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
