//! Output formats: aligned tables for people, JSON for programs.

use clap::ValueEnum;

/// How to print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON object.
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

/// Print rows under a header, each column as wide as its widest cell;
/// numeric-looking cells are right-aligned. Every cell is [`sanitize`]d.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c)).collect())
        .collect();
    let rows = &rows;
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_digit() || ".-%".contains(ch))
    };
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, &w)| {
                if numeric(c) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(sanitize("crc32 v1"), "crc32 v1");
        let s = sanitize("x\u{1b}]0;owned\u{7}\r\nmcu0  7  root");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(s, "x\\u{1b}]0;owned\\u{7}\\r\\nmcu0  7  root");
        assert_eq!(sanitize("\u{9b}2J"), "\\u{9b}2J");
    }
}
