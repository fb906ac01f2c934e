//! The HTML status page for people (`GET /` on the admin listener).
//!
//! A pure function of a plain [`StatusView`]: the caller reads backends,
//! counters and the store, computes rates, and hands the numbers over; this
//! room only lays them out. The page carries its own CSS, loads nothing from
//! anywhere, needs no script, and reloads itself every five seconds. Every
//! string it prints goes through [`escape_html`].

use std::fmt::Write as _;
use std::sync::Arc;

use super::chart::{self, Series, COLOURS};
use crate::history::{Event, Sample, SAMPLE_SECS};

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 5;

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    /// tether's version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// Seconds since tether started.
    pub uptime_secs: u64,
    /// `sticky` or `rotate`.
    pub mode: &'static str,
    /// Live sessions in the store, all backends (including ones no longer configured).
    pub live_sessions: u64,
    /// `memory` or `redis`.
    pub store_kind: &'static str,
    /// One row per configured backend, in the order to show them.
    pub backends: Vec<BackendRow>,
    /// Now, in ms since the Unix epoch (the charts end here).
    pub now_ms: u64,
    /// The last 15 minutes, oldest first.
    pub samples: Vec<Sample>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
}

/// One backend's line in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRow {
    /// The operator's name.
    pub name: String,
    /// Where tether connects.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down`, `draining` or `disabled`.
    pub state: &'static str,
    /// Live sessions pinned there.
    pub sessions: u64,
    /// Requests proxied there since start.
    pub requests: u64,
    /// Requests that failed there (connect, timeout, broken response) since start.
    pub errors: u64,
    /// Requests per second over the last sample (NaN before the first).
    pub req_rate: f64,
    /// While draining with a deadline: seconds left.
    pub drain_secs_left: Option<f64>,
}

/// The whole page. Each backend's share of sessions is computed here, from
/// the rows' own session counts.
pub fn render(view: &StatusView) -> String {
    let mut o = String::with_capacity(8192 + view.backends.len() * 1024);
    let total_sessions: u64 = view.backends.iter().map(|b| b.sessions).sum();
    let total_requests: u64 = view.backends.iter().map(|b| b.requests).sum();
    let total_errors: u64 = view.backends.iter().map(|b| b.errors).sum();
    let total_rate: f64 = view.backends.iter().map(|b| b.req_rate).sum();
    let total_weight: u64 = view.backends.iter().map(|b| u64::from(b.weight)).sum();
    let up = view.backends.iter().filter(|b| b.state == "up").count();

    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<title>tether · status</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
  <h1>tether <span class="version">v{version}</span></h1>
  <p class="refresh">refreshes every {REFRESH_SECS} s</p>
</header>
<section class="tiles">
  <div class="tile"><span class="label">Uptime</span><span class="value">{uptime}</span></div>
  <div class="tile"><span class="label">Mode</span><span class="value">{mode}</span></div>
  <div class="tile"><span class="label">Live sessions</span><span class="value">{live}</span></div>
  <div class="tile"><span class="label">Store</span><span class="value">{store}</span></div>
  <div class="tile{health}"><span class="label">Backends up</span><span class="value">{up}<small> / {n}</small></span></div>
</section>
{charts}<table>
<thead>
<tr><th>Backend</th><th>Address</th><th>State</th><th class="num">Weight</th><th class="sessions">Live sessions</th><th class="num" title="over the last {SAMPLE_SECS} s">Req/s</th><th class="num">Requests</th><th class="num">Errors</th></tr>
</thead>
<tbody>
"#,
        version = escape_html(view.version),
        uptime = escape_html(&humanize_secs(view.uptime_secs)),
        mode = escape_html(view.mode),
        live = thousands(view.live_sessions),
        store = escape_html(view.store_kind),
        charts = charts(view),
        n = view.backends.len(),
        health = match up {
            _ if view.backends.is_empty() => "",
            0 => " bad",
            n if n < view.backends.len() => " warn",
            _ => "",
        },
    );

    if view.backends.is_empty() {
        o.push_str("<tr><td colspan=\"8\" class=\"empty\">No backends configured.</td></tr>\n");
    }
    for b in &view.backends {
        let share = ratio(b.sessions, total_sessions);
        let _ = writeln!(
            o,
            r#"<tr class="{class}"><td class="name">{name}</td><td class="addr">{addr}</td><td><span class="badge {class}">{state}</span></td><td class="num">{weight}</td><td class="sessions">{bar}</td><td class="num">{rate}</td><td class="num">{requests}</td>{errors}</tr>"#,
            class = state_class(b.state),
            name = escape_html(&b.name),
            addr = escape_html(&b.address),
            state = state_text(b),
            weight = b.weight,
            bar = session_bar(b.sessions, share),
            rate = rate(b.req_rate),
            requests = thousands(b.requests),
            errors = errors_cell(b.errors, b.requests),
        );
    }

    let _ = write!(
        o,
        r#"</tbody>
<tfoot>
<tr><td>Total</td><td class="addr">{n} backend{s}</td><td></td><td class="num">{total_weight}</td><td class="sessions">{bar}</td><td class="num">{rate}</td><td class="num">{requests}</td>{errors}</tr>
</tfoot>
</table>
{events}<footer>
  <a href="/metrics">/metrics</a> · <a href="/api/backends">/api/backends</a>
  <span class="hint">Sessions: live sessions pinned to each backend and their share. Errors: failed connects, timeouts and broken responses.</span>
</footer>
</main>
</body>
</html>
"#,
        events = events(view),
        n = view.backends.len(),
        s = if view.backends.len() == 1 { "" } else { "s" },
        bar = session_bar(total_sessions, if total_sessions > 0 { 1.0 } else { 0.0 }),
        rate = rate(total_rate),
        requests = thousands(total_requests),
        errors = errors_cell(total_errors, total_requests),
    );
    o
}

/// Series shown per chart at most; the rest are summed into "others".
const MAX_SERIES: usize = 6;
/// Events listed, newest first.
const EVENTS_SHOWN: usize = 20;

/// The four charts of the last 15 minutes.
fn charts(view: &StatusView) -> String {
    let line = |label: &str, colour, f: &dyn Fn(&Sample) -> Option<f64>| Series {
        label: label.to_owned(),
        colour,
        points: view.samples.iter().map(|s| (s.at_ms, f(s))).collect(),
    };
    let mut o = String::from("<section class=\"charts\">\n");
    o += &chart::render(
        "Requests",
        "per second",
        &[line("req/s", COLOURS[0], &|s| Some(s.req_rate))],
        view.now_ms,
    );
    o += &chart::render(
        "5xx responses",
        "per second",
        &[line("5xx/s", COLOURS[1], &|s| Some(s.err_rate))],
        view.now_ms,
    );
    o += &chart::render(
        "Upstream latency",
        "ms",
        &[
            line("p50", COLOURS[0], &|s| s.p50_ms),
            line("p99", COLOURS[1], &|s| s.p99_ms),
        ],
        view.now_ms,
    );
    o += &chart::render(
        "Live sessions",
        "per backend",
        &session_series(view),
        view.now_ms,
    );
    o.push_str("</section>\n");
    o
}

/// One line per backend, the largest first; past [`MAX_SERIES`] the rest
/// are summed into one "others" line.
fn session_series(view: &StatusView) -> Vec<Series> {
    let Some(last) = view.samples.last() else {
        return Vec::new();
    };
    let mut names: Vec<(Arc<str>, u64)> = last.sessions.clone();
    names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let keep = if names.len() <= MAX_SERIES {
        names.len()
    } else {
        MAX_SERIES - 1
    };
    let (shown, rest) = names.split_at(keep);
    // Backends keep their order from sample to sample, so a name is found
    // at its index in the last one unless a reload moved it.
    let index: std::collections::HashMap<&str, usize> = last
        .sessions
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (&**n, i))
        .collect();
    let value = |s: &Sample, name: &str| {
        let at = index.get(name).and_then(|&i| s.sessions.get(i));
        match at {
            Some((n, v)) if &**n == name => Some(*v as f64),
            _ => s
                .sessions
                .iter()
                .find(|(n, _)| &**n == name)
                .map(|(_, v)| *v as f64),
        }
    };
    let mut out: Vec<Series> = shown
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Series {
            label: name.to_string(),
            colour: COLOURS[i % COLOURS.len()],
            points: view
                .samples
                .iter()
                .map(|s| (s.at_ms, value(s, name)))
                .collect(),
        })
        .collect();
    if !rest.is_empty() {
        out.push(Series {
            label: format!("{} others", rest.len()),
            colour: COLOURS[COLOURS.len() - 1],
            points: view
                .samples
                .iter()
                .map(|s| {
                    let sum: f64 = rest.iter().filter_map(|(n, _)| value(s, n)).sum();
                    (s.at_ms, Some(sum))
                })
                .collect(),
        });
    }
    out
}

/// The recent events, newest first, with their UTC times.
fn events(view: &StatusView) -> String {
    let mut o = String::from("<section class=\"events\"><h2>Recent events</h2>\n<ul>\n");
    if view.events.is_empty() {
        o.push_str("<li class=\"empty\">Nothing has happened yet.</li>\n");
    }
    for e in view.events.iter().rev().take(EVENTS_SHOWN) {
        let _ = writeln!(
            o,
            r#"<li class="{class}"><time>{time}</time>{text}</li>"#,
            class = if e.warn { "warn" } else { "info" },
            time = clock_utc(e.at_ms),
            text = escape_html(&e.text),
        );
    }
    o.push_str("</ul></section>\n");
    o
}

/// `HH:MM:SS` UTC of a time in ms since the Unix epoch.
fn clock_utc(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

/// The state badge's text: a drain with a deadline says what is left.
fn state_text(b: &BackendRow) -> String {
    match b.drain_secs_left {
        Some(left) if left > 0.0 => format!(
            "{} · {} left",
            escape_html(b.state),
            humanize_secs(left.ceil() as u64)
        ),
        Some(_) => format!("{} · deadline passed", escape_html(b.state)),
        None => escape_html(b.state),
    }
}

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A CSS class chosen from a closed set, so a state string never reaches an
/// attribute unescaped.
fn state_class(state: &str) -> &'static str {
    match state {
        "up" => "up",
        "down" => "down",
        "draining" => "draining",
        "disabled" => "disabled",
        _ => "unknown",
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn session_bar(sessions: u64, share: f64) -> String {
    let pct = (share.clamp(0.0, 1.0) * 100.0).round();
    format!(
        r#"<span class="bar"><span class="fill" style="width:{pct}%"></span></span><span class="count">{count}</span><span class="pct">{pct}%</span>"#,
        count = thousands(sessions),
    )
}

fn errors_cell(errors: u64, requests: u64) -> String {
    if errors == 0 {
        return "<td class=\"num\">0</td>".to_owned();
    }
    let pct = ratio(errors, requests) * 100.0;
    let pct = if pct < 0.1 {
        "&lt;0.1".to_owned()
    } else if pct < 10.0 {
        format!("{pct:.1}")
    } else {
        format!("{pct:.0}")
    };
    format!(
        r#"<td class="num err">{}<span class="pct">{pct}%</span></td>"#,
        thousands(errors)
    )
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One decimal below 10/s, whole numbers above; a dash when not a number.
fn rate(r: f64) -> String {
    if !r.is_finite() || r < 0.0 {
        "–".to_owned()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else {
        thousands(r.round() as u64)
    }
}

/// The two largest units: `3d 4h`, `4h 12m`, `12m 5s`, `5s`.
fn humanize_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 20px 20px 16px; }
header { display: flex; align-items: baseline; justify-content: space-between; margin-bottom: 14px; }
h1 { margin: 0; font-size: 22px; font-weight: 700; letter-spacing: -0.01em; }
.version { font-size: 13px; font-weight: 500; color: #57606a; background: #e7ebef;
  border-radius: 10px; padding: 2px 8px; margin-left: 6px; vertical-align: 3px; }
.refresh { margin: 0; color: #6e7781; font-size: 12px; }
.tiles { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; margin-bottom: 16px; }
.tile { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 10px 14px; }
.tile .label { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #6e7781; }
.tile .value { display: block; font-size: 20px; font-weight: 600; margin-top: 2px; }
.tile.warn { border-color: #f0d878; background: #fffbe6; }
.tile.bad { border-color: #ffcecb; background: #fff5f4; }
.tile small { font-size: 14px; font-weight: 500; color: #6e7781; }
table { width: 100%; table-layout: auto; border-collapse: separate; border-spacing: 0; background: #fff;
  border: 1px solid #d8dee4; border-radius: 8px; overflow: hidden; }
th, td { padding: 9px 12px; text-align: left; white-space: nowrap; }
th { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #57606a;
  background: #f6f8fa; border-bottom: 1px solid #d8dee4; font-weight: 600; }
tbody td { border-bottom: 1px solid #eaeef2; }
tbody tr:last-child td { border-bottom: none; }
tbody tr:hover td { background: #f6f8fa; }
tfoot td { background: #f6f8fa; border-top: 1px solid #d8dee4; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { font-weight: 600; }
td.addr { color: #57606a; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
tfoot td.addr { font-family: inherit; font-size: 14px; font-weight: 500; }
tr.disabled td.name, tr.down td.name { color: #57606a; }
.badge { display: inline-block; min-width: 96px; text-align: center; font-size: 12px; font-weight: 600;
  border-radius: 12px; padding: 2px 10px; border: 1px solid transparent; }
.badge::before { content: ""; display: inline-block; width: 7px; height: 7px; border-radius: 50%;
  background: currentColor; margin-right: 6px; vertical-align: 1px; }
.badge.up { color: #116329; background: #dafbe1; border-color: #aceebb; }
.badge.draining { color: #7d4e00; background: #fff8c5; border-color: #f0d878; }
.badge.disabled { color: #57606a; background: #eaeef2; border-color: #d0d7de; }
.badge.down { color: #b0121b; background: #ffebe9; border-color: #ffcecb; }
.badge.unknown { color: #57606a; background: #fff; border-color: #d0d7de; }
td.sessions, th.sessions { width: 260px; }
.bar { display: inline-block; width: 110px; height: 8px; background: #eaeef2; border-radius: 4px;
  overflow: hidden; vertical-align: middle; margin-right: 10px; }
.fill { display: block; height: 100%; background: #0969da; border-radius: 4px; }
tfoot .fill { background: #8c959f; }
.count { display: inline-block; min-width: 48px; text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
.pct { color: #6e7781; font-size: 12px; margin-left: 6px; font-weight: 400; font-variant-numeric: tabular-nums; }
td.sessions .pct { display: inline-block; min-width: 34px; }
tr.draining .fill { background: #bf8700; }
td.err { color: #b0121b; }
.empty { text-align: center; color: #6e7781; padding: 24px; }
footer { margin-top: 12px; font-size: 12px; color: #6e7781; }
footer a { color: #0969da; text-decoration: none; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
footer a:hover { text-decoration: underline; }
.hint { float: right; }
.charts { display: grid; grid-template-columns: repeat(2, 1fr); gap: 10px; margin-bottom: 16px; }
.chart { margin: 0; background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 8px 10px 6px; }
.chart figcaption { font-size: 12px; font-weight: 600; color: #1f2328; }
.chart .unit { font-weight: 400; color: #6e7781; }
.chart svg { display: block; width: 100%; height: auto; }
.chart .grid { stroke: #eaeef2; stroke-width: 1; }
.chart text { font-size: 10px; fill: #6e7781; }
.chart .ylabel { text-anchor: end; }
.legend { font-size: 11px; color: #57606a; }
.legend span { margin-right: 10px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 3px; vertical-align: 3px; margin-right: 4px; }
.events { margin-top: 16px; background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 8px 14px; }
.events h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: #57606a; margin: 4px 0 6px; }
.events ul { list-style: none; margin: 0; padding: 0; }
.events li { padding: 3px 0; border-bottom: 1px solid #eaeef2; }
.events li:last-child { border-bottom: none; }
.events time { display: inline-block; width: 76px; color: #6e7781; font-variant-numeric: tabular-nums; }
.events li.warn { color: #b0121b; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: &'static str, sessions: u64) -> BackendRow {
        BackendRow {
            name: name.to_owned(),
            address: "127.0.0.1:9001".to_owned(),
            weight: 2,
            state,
            sessions,
            requests: 1000,
            errors: 3,
            req_rate: 12.5,
            drain_secs_left: None,
        }
    }

    fn view(backends: Vec<BackendRow>) -> StatusView {
        StatusView {
            version: "0.1.0",
            uptime_secs: 3 * 86_400 + 4 * 3600 + 5,
            mode: "sticky",
            live_sessions: 42,
            store_kind: "memory",
            backends,
            now_ms: 0,
            samples: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The `<tr>` that names `name`.
    fn row_of<'a>(page: &'a str, name: &str) -> &'a str {
        page.lines()
            .find(|l| l.contains(&format!("<td class=\"name\">{name}</td>")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{page}"))
    }

    #[test]
    fn every_backend_appears_with_state_and_sessions() {
        let page = render(&view(vec![
            row("app-1", "up", 1234),
            row("app-2", "draining", 7),
            row("app-3", "down", 0),
            row("app-4", "disabled", 0),
        ]));
        for (name, state, sessions) in [
            ("app-1", "up", "1,234"),
            ("app-2", "draining", "7"),
            ("app-3", "down", "0"),
            ("app-4", "disabled", "0"),
        ] {
            let r = row_of(&page, name);
            assert!(
                r.contains(&format!(r#"<span class="badge {state}">{state}</span>"#)),
                "{r}"
            );
            assert!(
                r.contains(&format!(r#"<span class="count">{sessions}</span>"#)),
                "{r}"
            );
        }
        assert!(page.contains("3d 4h"), "humanised uptime");
        assert!(page.contains(">42<"), "live sessions");
        assert!(page.contains(">sticky<") && page.contains(">memory<"));
        assert!(page.contains("v0.1.0"));
        assert!(page.contains("<td>Total</td>"));
        assert!(
            page.contains(r#"<span class="count">1,241</span>"#),
            "total"
        );
        assert!(page.contains("4,000"), "total requests");
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut r = row("<script>alert('x')</script>", "up", 1);
        r.address = "\"><img src=x onerror=1>&".to_owned();
        let page = render(&view(vec![r]));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("&quot;&gt;&lt;img src=x onerror=1&gt;&amp;"));
    }

    #[test]
    fn unknown_state_gets_a_neutral_class() {
        let page = render(&view(vec![row("a", "\"weird", 1)]));
        assert!(page.contains(r#"<span class="badge unknown">&quot;weird</span>"#));
    }

    #[test]
    fn self_contained_and_refreshing() {
        let page = render(&view(vec![row("a", "up", 1)]));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "{page}"
        );
        assert!(!page.contains("<script") && !page.contains("<link"));
        assert!(!page.contains("//"), "no protocol-relative URLs either");
        assert!(page.contains(r#"<meta http-equiv="refresh" content="5">"#));
        assert!(page.contains(r#"<a href="/metrics">"#));
        assert!(page.contains(r#"<a href="/api/backends">"#));
    }

    #[test]
    fn backends_up_tile_warns() {
        let all = render(&view(vec![row("a", "up", 1), row("b", "up", 1)]));
        assert!(all.contains(r#"<div class="tile"><span class="label">Backends up"#));
        let some = render(&view(vec![row("a", "up", 1), row("b", "down", 0)]));
        assert!(some.contains(r#"<div class="tile warn"><span class="label">Backends up"#));
        let none = render(&view(vec![row("a", "down", 1)]));
        assert!(none.contains(r#"<div class="tile bad"><span class="label">Backends up"#));
    }

    #[test]
    fn empty_pool_renders() {
        let page = render(&view(vec![]));
        assert!(page.contains("No backends configured."));
        assert!(page.contains("0 backends"));
    }

    #[test]
    fn shares_and_errors() {
        let mut a = row("a", "up", 3);
        a.errors = 0;
        let b = row("b", "up", 1);
        let page = render(&view(vec![a, b]));
        assert!(row_of(&page, "a").contains("width:75%"));
        assert!(row_of(&page, "a").contains(r#"<td class="num">0</td>"#));
        assert!(row_of(&page, "b").contains("width:25%"));
        assert!(row_of(&page, "b").contains(r#"3<span class="pct">0.3%</span>"#));
    }

    fn sample(at_ms: u64, sessions: Vec<(&str, u64)>) -> Sample {
        Sample {
            at_ms,
            req_rate: 10.0,
            err_rate: 0.0,
            p50_ms: Some(2.0),
            p99_ms: None,
            sessions: sessions.into_iter().map(|(n, v)| (n.into(), v)).collect(),
            backend_rates: Vec::new(),
        }
    }

    #[test]
    fn four_charts_and_the_events_newest_first() {
        let mut v = view(vec![row("a", "up", 1)]);
        v.now_ms = 3_600_000;
        v.samples = vec![
            sample(3_595_000, vec![("a", 1)]),
            sample(3_600_000, vec![("a", 2)]),
        ];
        v.events = vec![
            Event {
                at_ms: 3_590_000,
                warn: false,
                text: "first".into(),
            },
            Event {
                at_ms: 3_599_000,
                warn: true,
                text: "<b>second</b>".into(),
            },
        ];
        let page = render(&v);
        assert_eq!(page.matches("<svg").count(), 4, "{page}");
        let first = page.find("first").unwrap();
        let second = page.find("&lt;b&gt;second&lt;/b&gt;").expect("escaped");
        assert!(second < first, "newest first");
        assert!(
            page.contains(r#"<li class="warn"><time>00:59:59</time>"#),
            "{page}"
        );
        let empty = render(&view(vec![]));
        assert!(empty.contains("Nothing has happened yet."));
        assert_eq!(empty.matches("<svg").count(), 4, "charts draw empty too");
    }

    #[test]
    fn many_backends_share_one_others_line() {
        let names: Vec<String> = (0..200).map(|i| format!("b{i:03}")).collect();
        let sessions: Vec<(&str, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u64))
            .collect();
        let mut v = view(names.iter().map(|n| row(n, "up", 1)).collect());
        v.samples = vec![sample(0, sessions)];
        let series = session_series(&v);
        let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            ["b199", "b198", "b197", "b196", "b195", "195 others"]
        );
        let others: f64 = (0..195).map(f64::from).sum();
        assert_eq!(series[5].points, [(0, Some(others))]);
        let few = view(vec![row("a", "up", 1)]);
        assert!(session_series(&few).is_empty(), "no sample yet, no lines");
    }

    #[test]
    fn a_drain_deadline_shows_in_the_badge() {
        let mut r = row("a", "draining", 1);
        r.drain_secs_left = Some(754.2);
        let page = render(&view(vec![r.clone()]));
        assert!(page.contains(">draining · 12m 35s left<"), "{page}");
        r.drain_secs_left = Some(0.0);
        let page = render(&view(vec![r]));
        assert!(page.contains(">draining · deadline passed<"), "{page}");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(humanize_secs(5), "5s");
        assert_eq!(humanize_secs(65), "1m 5s");
        assert_eq!(humanize_secs(3600 + 120), "1h 2m");
        assert_eq!(humanize_secs(86_400 * 2 + 3600), "2d 1h");
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(3.44), "3.4");
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(f64::NAN), "–");
        assert_eq!(escape_html("a&b"), "a&amp;b");
    }
}
