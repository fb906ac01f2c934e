//! Small inline SVG line charts for the status page: a pure function of the
//! points, no script and nothing loaded from anywhere. The x axis is the
//! last [`WINDOW_SECS`] up to `now`; the y axis starts at 0 and ends at a
//! round number above the largest value.

use std::fmt::Write as _;

use super::page::escape_html;
use crate::history::WINDOW_SECS;

/// Width and height of the drawing, in SVG units (it scales to its box).
const W: f64 = 480.0;
const H: f64 = 150.0;
/// Room for the y labels on the left and the x labels below.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 8.0;

/// Colours for series, in order (colour-blind friendly, Okabe–Ito).
pub const COLOURS: [&str; 7] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#6e7781",
];

/// One line: a label for the legend, a colour, and points `(at_ms, value)`;
/// a `None` value breaks the line (no data in that interval).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub label: String,
    /// A CSS colour from [`COLOURS`].
    pub colour: &'static str,
    /// Oldest first.
    pub points: Vec<(u64, Option<f64>)>,
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (at least 1).
pub fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

/// `12`, `1.5`, `2k`, `1.5M`: a short axis label.
fn short(v: f64) -> String {
    let (v, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if v.fract() == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// An SVG chart titled `title` (with `unit` after it) ending at `now_ms`.
pub fn render(title: &str, unit: &str, series: &[Series], now_ms: u64) -> String {
    let mut o = String::with_capacity(2048);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = nice_ceiling(max);
    let window_ms = WINDOW_SECS as f64 * 1000.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x =
        |t: u64| LEFT + pw * (1.0 - (now_ms.saturating_sub(t) as f64 / window_ms)).clamp(0.0, 1.0);
    let y = |v: f64| TOP + ph * (1.0 - (v / top).clamp(0.0, 1.0));
    let _ = write!(
        o,
        r#"<figure class="chart"><figcaption>{title} <span class="unit">{unit}</span></figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{title}">"#,
        title = escape_html(title),
        unit = escape_html(unit),
    );
    for frac in [0.0, 0.5, 1.0] {
        let gy = y(top * frac);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{LEFT}" y1="{gy:.1}" x2="{x2}" y2="{gy:.1}"/><text class="ylabel" x="{lx}" y="{ty:.1}">{label}</text>"#,
            x2 = W - RIGHT,
            lx = LEFT - 6.0,
            ty = gy + 4.0,
            label = short(top * frac),
        );
    }
    for (i, label) in ["-15m", "-10m", "-5m", "now"].iter().enumerate() {
        let gx = LEFT + pw * i as f64 / 3.0;
        // The outer labels keep inside the drawing.
        let anchor = match i {
            0 => "start",
            3 => "end",
            _ => "middle",
        };
        let _ = write!(
            o,
            r#"<text class="xlabel" x="{gx:.1}" y="{ty}" text-anchor="{anchor}">{label}</text>"#,
            ty = H - 4.0,
        );
    }
    for s in series {
        // Each run of points with values is one polyline.
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, o: &mut String| {
            if run.len() == 1 {
                // A lone point still shows, as a dot.
                let (cx, cy) = run[0].split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    o,
                    r#"<circle cx="{cx}" cy="{cy}" r="2" fill="{}"/>"#,
                    s.colour
                );
            } else if run.len() > 1 {
                let _ = write!(
                    o,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
                    s.colour,
                    run.join(" ")
                );
            }
            run.clear();
        };
        for &(t, v) in &s.points {
            match v {
                Some(v) => run.push(format!("{:.1},{:.1}", x(t), y(v))),
                None => flush(&mut run, &mut o),
            }
        }
        flush(&mut run, &mut o);
    }
    o.push_str("</svg>");
    if series.len() > 1 {
        o.push_str(r#"<div class="legend">"#);
        for s in series {
            let _ = write!(
                o,
                r#"<span><i style="background:{}"></i>{}</span>"#,
                s.colour,
                escape_html(&s.label)
            );
        }
        o.push_str("</div>");
    }
    o.push_str("</figure>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_y_axis_ends_at_a_round_number() {
        for (v, want) in [
            (0.0, 1.0),
            (0.3, 1.0),
            (1.0, 1.0),
            (1.2, 2.0),
            (2.0, 2.0),
            (3.0, 5.0),
            (7.0, 10.0),
            (12.0, 20.0),
            (480.0, 500.0),
            (501.0, 1000.0),
            (f64::NAN, 1.0),
        ] {
            assert_eq!(nice_ceiling(v), want, "{v}");
        }
        assert_eq!(short(2000.0), "2k");
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2.5), "2.5");
    }

    fn series(points: Vec<(u64, Option<f64>)>) -> Series {
        Series {
            label: "a".into(),
            colour: COLOURS[0],
            points,
        }
    }

    #[test]
    fn points_map_onto_the_window_and_gaps_break_the_line() {
        let now = 1_000_000_000;
        let win = WINDOW_SECS * 1000;
        let s = series(vec![
            (now - win, Some(0.0)),
            (now - win / 2, Some(10.0)),
            (now - win / 3, None),
            (now, Some(5.0)),
        ]);
        let svg = render("Requests", "/s", &[s], now);
        // Oldest at the left edge on the floor; the 10 at the top (10 is its own ceiling).
        assert!(svg.contains(r#"points="44.0,132.0 258.0,8.0""#), "{svg}");
        // After the gap the lone last point is a dot at the right edge, halfway up.
        assert!(svg.contains(r#"<circle cx="472.0" cy="70.0""#), "{svg}");
        assert!(svg.contains(">10<") && svg.contains(">5<") && svg.contains(">0<"));
        assert!(!svg.contains("legend"), "one series needs no legend");
    }

    #[test]
    fn titles_and_labels_are_escaped() {
        let mut s = series(vec![]);
        s.label = "<b>".into();
        let svg = render("<x>", "&", &[s.clone(), s], 0);
        assert!(!svg.contains("<b>") && !svg.contains("<x>"), "{svg}");
        assert!(svg.contains("&lt;x&gt;") && svg.contains("&amp;"));
    }
}
