//! Draws the comparison's results (`target/bench-results/compare.json`, as
//! written by `benches/compare.rs`) as one self-contained SVG chart, for
//! `docs/BENCHMARKS.md`.
//!
//! ```text
//! cargo run -p workerbus-benches --bin chart -- [input.json] [output.svg]
//! ```
//!
//! The paths default to `target/bench-results/compare.json` and
//! `docs/benchmarks.svg` and are taken relative to the workspace root.
//!
//! One panel per scenario the targets are about, each on its own linear
//! scale: a bar per subject at its median over the rounds, a whisker from
//! the round's minimum to its maximum, and the median printed beside it.
//! The SVG is written by hand, so that a chart needs no plotting library.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Deserialize;

/// The part of `compare.json` the chart reads.
#[derive(Debug, Deserialize)]
struct Report {
    rounds: u32,
    figures: Vec<Figure>,
}

/// One scenario's figures for one subject, over every round.
#[derive(Debug, Deserialize)]
struct Figure {
    scenario: String,
    subject: String,
    unit: String,
    median: f64,
    values: Vec<f64>,
}

/// One panel of the chart: a scenario, and optionally a second one whose
/// bars share its scale (the raw streaming beside the 1 MiB call, which a
/// target compares it with).
#[derive(Debug)]
struct Panel {
    title: &'static str,
    scenario: &'static str,
    beside: Option<Beside>,
    lower_is_better: bool,
}

/// A scenario drawn in another's panel; its subjects' labels get `prefix`,
/// since its subjects' names ("1 MiB writes") say nothing on their own.
#[derive(Debug)]
struct Beside {
    scenario: &'static str,
    prefix: &'static str,
}

const PANELS: &[Panel] = &[
    Panel {
        title: "64 B calls, 64 in flight",
        scenario: "64 B x 64 in flight",
        beside: None,
        lower_is_better: false,
    },
    Panel {
        title: "64 B calls one at a time: p50 latency",
        scenario: "64 B sequential: p50 latency",
        beside: None,
        lower_is_better: true,
    },
    Panel {
        title: "64 KiB calls, 64 in flight",
        scenario: "64 KiB x 64 in flight",
        beside: None,
        lower_is_better: false,
    },
    Panel {
        title: "1 MiB request and response",
        scenario: "1 MiB request and response",
        beside: Some(Beside {
            scenario: "raw Unix-socket streaming",
            prefix: "raw streaming, ",
        }),
        lower_is_better: false,
    },
];

/// Who a subject is, which sets its bar's colour: workerbus stands out,
/// what it is measured against stays in greys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Workerbus,
    Peer,
    Baseline,
}

impl Kind {
    fn of(subject: &str) -> Kind {
        if subject.starts_with("workerbus") {
            Kind::Workerbus
        } else if subject.starts_with("tonic") || subject.starts_with("tarpc") {
            Kind::Peer
        } else {
            Kind::Baseline
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Workerbus => "#2f6fd0",
            Kind::Peer => "#8a9099",
            Kind::Baseline => "#c3c8ce",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Kind::Workerbus => "workerbus",
            Kind::Peer => "peers",
            Kind::Baseline => "baselines",
        }
    }
}

// The geometry, in pixels. The labels' column fits the longest subject
// name ("raw streaming, 1 MiB writes, 1 MiB buffer"); the room right of
// the scale fits a printed value with its unit.
const WIDTH: f64 = 900.0;
const MARGIN: f64 = 20.0;
const BAR_X: f64 = 300.0;
const VALUE_ROOM: f64 = 130.0;
const BAR_HEIGHT: f64 = 16.0;
const ROW: f64 = 24.0;
const PANEL_HEADER: f64 = 30.0;
const PANEL_GAP: f64 = 30.0;

// The styles of the texts, as SVG attributes.
const TITLE: &str = r#"font-size="18" font-weight="600""#;
const NOTE: &str = r##"font-size="12" fill="#555""##;
const PANEL_TITLE: &str = r#"font-size="15" font-weight="600""#;
const PANEL_NOTE: &str = r##"font-size="13" fill="#555" text-anchor="end""##;
const LABEL: &str = r#"font-size="13" text-anchor="end""#;
const VALUE: &str = r#"font-size="12""#;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args_os().skip(1);
    let input = root.join(
        args.next()
            .unwrap_or("target/bench-results/compare.json".into()),
    );
    let output = root.join(args.next().unwrap_or("docs/benchmarks.svg".into()));
    let report = std::fs::read_to_string(&input)
        .map_err(|error| error.to_string())
        .and_then(|json| serde_json::from_str::<Report>(&json).map_err(|error| error.to_string()));
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!(
                "reading {}: {error}\n(`cargo bench -p workerbus-benches --bench compare` writes it)",
                input.display()
            );
            std::process::exit(1);
        }
    };
    if let Err(error) = std::fs::write(&output, render(&report)) {
        eprintln!("writing {}: {error}", output.display());
        std::process::exit(1);
    }
    println!("written to {}", output.display());
}

/// The figures of `panel` present in `report`, each with its label.
fn panel_rows<'r>(report: &'r Report, panel: &Panel) -> Vec<(String, &'r Figure)> {
    let mut rows: Vec<(String, &Figure)> = report
        .figures
        .iter()
        .filter(|figure| figure.scenario == panel.scenario)
        .map(|figure| (figure.subject.clone(), figure))
        .collect();
    if let Some(beside) = &panel.beside {
        rows.extend(
            report
                .figures
                .iter()
                .filter(|figure| figure.scenario == beside.scenario)
                .map(|figure| (format!("{}{}", beside.prefix, figure.subject), figure)),
        );
    }
    rows
}

/// The whole chart as SVG text.
fn render(report: &Report) -> String {
    let panels: Vec<(&Panel, Vec<(String, &Figure)>)> = PANELS
        .iter()
        .map(|panel| (panel, panel_rows(report, panel)))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let mut kinds: Vec<Kind> = panels
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(_, figure)| Kind::of(&figure.subject)))
        .collect();
    kinds.sort_by_key(|kind| *kind as u8);
    kinds.dedup();

    let mut body = String::new();
    let mut y = 34.0;
    text(
        &mut body,
        MARGIN,
        y,
        TITLE,
        "workerbus beside its baselines and peers",
    );
    y += 22.0;
    let rounds = report.rounds;
    let note = format!(
        "Bars: median of {rounds} rounds. Whiskers: minimum to maximum. Each panel has its own linear scale."
    );
    text(&mut body, MARGIN, y, NOTE, &note);
    // The legend, right-aligned on the title's line. Text cannot be measured
    // here, so each entry's width is a generous 8 px a character. (Writes
    // to a `String`, here and below, cannot fail.)
    let mut x = WIDTH - MARGIN;
    for kind in kinds.iter().rev() {
        text(&mut body, x, 30.0, LABEL, kind.legend());
        x -= 8.0 * kind.legend().len() as f64 + 6.0;
        let _ = write!(
            body,
            r#"<rect x="{:.1}" y="20" width="12" height="12" fill="{}"/>"#,
            x - 12.0,
            kind.colour()
        );
        x -= 30.0;
    }
    y += 16.0;

    for (panel, rows) in &panels {
        y += PANEL_GAP;
        let better = if panel.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        text(&mut body, MARGIN, y, PANEL_TITLE, panel.title);
        let note = format!("{}, {better}", rows[0].1.unit);
        text(&mut body, WIDTH - MARGIN, y, PANEL_NOTE, &note);
        y += PANEL_HEADER - 18.0;
        let top = y;
        let largest = rows
            .iter()
            .flat_map(|(_, figure)| figure.values.iter().chain([&figure.median]))
            .fold(0.0, |largest: f64, value| largest.max(*value));
        let scale =
            (WIDTH - MARGIN - VALUE_ROOM - BAR_X) / if largest > 0.0 { largest } else { 1.0 };
        for (label, figure) in rows {
            let (min, max) = figure
                .values
                .iter()
                .fold((figure.median, figure.median), |(min, max), value| {
                    (min.min(*value), max.max(*value))
                });
            let middle = y + ROW / 2.0;
            text(&mut body, BAR_X - 10.0, middle + 4.5, LABEL, label);
            let _ = write!(
                body,
                r#"<rect x="{BAR_X}" y="{:.1}" width="{:.1}" height="{BAR_HEIGHT}" fill="{}"/>"#,
                middle - BAR_HEIGHT / 2.0,
                figure.median * scale,
                Kind::of(&figure.subject).colour()
            );
            // The whisker: a line from min to max with a cap at each end.
            let (from, to) = (BAR_X + min * scale, BAR_X + max * scale);
            let _ = write!(
                body,
                r##"<path d="M{from:.1} {middle:.1}H{to:.1}M{from:.1} {:.1}v8M{to:.1} {:.1}v8" stroke="#222" stroke-width="1.2" fill="none"/>"##,
                middle - 4.0,
                middle - 4.0
            );
            // The value goes past the whisker rather than on the bar's end,
            // so that the whisker never runs through its digits.
            let value = format!("{} {}", figure_text(figure.median), figure.unit);
            text(&mut body, to + 6.0, middle + 4.0, VALUE, &value);
            y += ROW;
        }
        let _ = write!(
            body,
            r##"<path d="M{BAR_X} {top:.1}V{y:.1}" stroke="#888" stroke-width="1"/>"##
        );
    }
    let height = y + MARGIN;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"{FONT}\" role=\"img\">\
         \n<title>workerbus benchmarks</title>\
         \n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n{body}\n</svg>\n"
    )
}

/// Appends a `<text>` element at (`x`, `y`) in `style` (one of the
/// styles above: its attributes).
fn text(svg: &mut String, x: f64, y: f64, style: &str, content: &str) {
    let _ = write!(
        svg,
        "\n<text x=\"{x:.1}\" y=\"{y:.1}\" {style}>{}</text>",
        escape(content)
    );
}

/// `text` with the characters XML gives a meaning escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value as the bench's table prints it, with thousands separated, so
/// that large rates read at a glance.
fn figure_text(value: f64) -> String {
    if value < 10.0 {
        return format!("{value:.2}");
    }
    if value < 1000.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{value:.0}");
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
      "rounds": 3,
      "seconds_per_figure": 0.05,
      "figures": [
        {"scenario": "64 B x 64 in flight", "subject": "workerbus thread driver", "unit": "calls/s", "median": 200000, "values": [150000, 200000, 250000]},
        {"scenario": "64 B x 64 in flight", "subject": "tokio mpsc + oneshot", "unit": "calls/s", "median": 1600000, "values": [1500000, 1600000, 1700000]},
        {"scenario": "1 MiB request and response", "subject": "workerbus process driver", "unit": "MB/s", "median": 1700, "values": [1400, 1700, 3100]},
        {"scenario": "raw Unix-socket streaming", "subject": "1 MiB writes", "unit": "MB/s", "median": 4300, "values": [4300]},
        {"scenario": "spawn to first answer", "subject": "workerbus thread driver", "unit": "µs", "median": 190, "values": [190]}
      ]
    }"#;

    #[test]
    fn draws_every_subject_of_the_charted_scenarios() {
        let report: Report = serde_json::from_str(SMALL).unwrap();
        let svg = render(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        for name in [
            "workerbus thread driver",
            "tokio mpsc + oneshot",
            "workerbus process driver",
            "raw streaming, 1 MiB writes",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        // Four bars, plus the background and two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 4 + 3);
        assert!(svg.contains("1,600,000 calls/s"));
        assert!(svg.contains("MB/s, higher is better"));
    }

    #[test]
    fn leaves_out_what_is_not_in_the_file() {
        let report: Report = serde_json::from_str(SMALL).unwrap();
        let svg = render(&report);
        assert!(!svg.contains("p50 latency"));
        assert!(!svg.contains("64 KiB"));
        assert!(!svg.contains("spawn"));
        assert!(!svg.contains(">peers</text>"));
    }

    #[test]
    fn escapes_names_and_groups_digits() {
        assert_eq!(escape("a & <b>"), "a &amp; &lt;b&gt;");
        assert_eq!(figure_text(1234567.8), "1,234,568");
        assert_eq!(figure_text(12.345), "12.3");
        assert_eq!(figure_text(5.938), "5.94");
    }
}
