//! Inline SVG charts for the HTML reports: plain markup, no script and no fetch, so a report is
//! one self-contained file. Three kinds: a success curve against theory with its 3σ band, bars
//! on a log scale, and per-pair timelines of route stretches.

use std::fmt::Write;

use crate::fastnet::{Episode, EpisodeKind};
use crate::grid::Curve;

/// Escapes text for SVG/HTML content and attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A linear or logarithmic mapping from data to pixels.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
    log: bool,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (v.max(self.lo).log10(), self.lo.log10(), self.hi.log10())
        } else {
            (v, self.lo, self.hi)
        };
        let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        self.px_lo + f.clamp(0.0, 1.0) * (self.px_hi - self.px_lo)
    }
}

/// Round tick values for a linear axis from 0 to `hi` (about five).
fn ticks(hi: f64) -> Vec<f64> {
    if hi <= 0.0 || !hi.is_finite() {
        return vec![0.0];
    }
    let raw = hi / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|t| *t <= hi * 1.0001)
        .collect()
}

/// A tick label without needless decimals.
fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

const CURVE_W: f64 = 560.0;
const CURVE_H: f64 = 280.0;
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 30.0;
const RIGHT: f64 = 16.0;

/// A birthday curve: the measured success fraction (a step line over `Curve::series`), the
/// theory (dashed) inside its 3σ band (shaded), and the checked points (green within the band,
/// red outside; hover for the figures). `unit` names the x axis.
pub fn curve_chart(c: &Curve, unit: &str) -> String {
    let series = if c.series.is_empty() {
        &c.points
    } else {
        &c.series
    };
    let x_hi = series
        .iter()
        .chain(&c.points)
        .map(|p| p.x)
        .fold(0.0, f64::max);
    let x = Scale {
        lo: 0.0,
        hi: x_hi,
        px_lo: LEFT,
        px_hi: CURVE_W - RIGHT,
        log: false,
    };
    let y = Scale {
        lo: 0.0,
        hi: 1.0,
        px_lo: CURVE_H - BOTTOM,
        px_hi: TOP,
        log: false,
    };
    let mut s = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CURVE_W}\" height=\"{CURVE_H}\" viewBox=\"0 0 {CURVE_W} {CURVE_H}\" role=\"img\"><title>{}: measured success against theory</title>",
        esc(&c.name)
    );
    axes(
        &mut s,
        &x,
        &y,
        &ticks(x_hi),
        &[0.0, 0.25, 0.5, 0.75, 1.0],
        unit,
        "success",
    );
    // The band: theory ± 3σ, clipped to [0, 1].
    let upper: Vec<String> = series
        .iter()
        .map(|p| pt(x.at(p.x), y.at((p.theory + p.tolerance).min(1.0))))
        .collect();
    let lower: Vec<String> = series
        .iter()
        .rev()
        .map(|p| pt(x.at(p.x), y.at((p.theory - p.tolerance).max(0.0))))
        .collect();
    let _ = write!(
        s,
        "<polygon class=\"band\" points=\"{} {}\" fill=\"#9ecae1\" fill-opacity=\"0.45\" stroke=\"none\"><title>theory ± 3σ</title></polygon>",
        upper.join(" "),
        lower.join(" ")
    );
    let theory: Vec<String> = series
        .iter()
        .map(|p| pt(x.at(p.x), y.at(p.theory)))
        .collect();
    let _ = write!(
        s,
        "<polyline class=\"theory\" points=\"{}\" fill=\"none\" stroke=\"#3182bd\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\"/>",
        theory.join(" ")
    );
    // Measured: a step line (the fraction holds until the next point).
    let mut steps = Vec::new();
    for (i, p) in series.iter().enumerate() {
        if i > 0 {
            steps.push(pt(x.at(p.x), y.at(series[i - 1].measured)));
        }
        steps.push(pt(x.at(p.x), y.at(p.measured)));
    }
    let _ = write!(
        s,
        "<polyline class=\"measured\" points=\"{}\" fill=\"none\" stroke=\"#222\" stroke-width=\"2\"/>",
        steps.join(" ")
    );
    for p in &c.points {
        let within = (p.measured - p.theory).abs() <= p.tolerance;
        let _ = write!(
            s,
            "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\" stroke=\"#222\"><title>{} {unit}: measured {:.3}, theory {:.3} ± {:.3}</title></circle>",
            if within { "within" } else { "outside" },
            x.at(p.x),
            y.at(p.measured),
            if within { "#74c476" } else { "#de2d26" },
            label(p.x),
            p.measured,
            p.theory,
            p.tolerance
        );
    }
    legend(
        &mut s,
        LEFT,
        8.0,
        &[
            ("#222", "measured"),
            ("#3182bd", "theory"),
            ("#9ecae1", "3σ band"),
        ],
    );
    s.push_str("</svg>");
    s
}

fn pt(x: f64, y: f64) -> String {
    format!("{x:.1},{y:.1}")
}

/// Axes with ticks and labels.
#[allow(clippy::too_many_arguments)]
fn axes(s: &mut String, x: &Scale, y: &Scale, xt: &[f64], yt: &[f64], xl: &str, yl: &str) {
    let (x0, x1, y0, y1) = (x.px_lo, x.px_hi, y.px_lo, y.px_hi);
    let _ = write!(
        s,
        "<g class=\"axes\" stroke=\"#888\" stroke-width=\"1\"><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/></g><g font-size=\"11\" fill=\"#444\">"
    );
    for &t in xt {
        let px = x.at(t);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{y0}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#888\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 4.0,
            y0 + 16.0,
            label(t)
        );
    }
    for &t in yt {
        let py = y.at(t);
        let _ = write!(
            s,
            "<line x1=\"{x0}\" y1=\"{py:.1}\" x2=\"{x1}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            py + 4.0,
            label(t)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
        (x0 + x1) / 2.0,
        y0 + 32.0,
        esc(xl),
        (y0 + y1) / 2.0,
        esc(yl)
    );
}

/// A row of colour keys.
fn legend(s: &mut String, x: f64, y: f64, keys: &[(&str, &str)]) {
    let mut at = x;
    s.push_str("<g class=\"legend\" font-size=\"11\" fill=\"#444\">");
    for (colour, name) in keys {
        let _ = write!(
            s,
            "<rect x=\"{at:.1}\" y=\"{y:.1}\" width=\"12\" height=\"10\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            at + 16.0,
            y + 9.0,
            esc(name)
        );
        at += 28.0 + 6.5 * name.len() as f64;
    }
    s.push_str("</g>");
}

/// Room under the bars for their slanted labels.
const BAR_LABELS: f64 = 100.0;

/// One bar: its label, the value, and a whisker from `low` to `high`.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Under the bar.
    pub label: String,
    /// The bar's height.
    pub value: f64,
    /// The whisker's ends.
    pub low: f64,
    /// See `low`.
    pub high: f64,
}

/// Bars on a log scale (decades from the smallest positive value to the largest), each with a
/// min–max whisker; `unit` names the y axis, `format` writes a value for the hover text.
pub fn bar_chart(bars: &[Bar], unit: &str, format: impl Fn(f64) -> String) -> String {
    let w = (LEFT + RIGHT + 70.0 * bars.len() as f64).max(240.0);
    let h = 330.0;
    let positive = bars
        .iter()
        .flat_map(|b| [b.value, b.low, b.high])
        .filter(|v| *v > 0.0 && v.is_finite());
    let lo_v = positive.clone().fold(f64::INFINITY, f64::min);
    let hi_v = positive.fold(0.0, f64::max);
    let (lo, hi) = if hi_v > 0.0 {
        (
            10f64.powf(lo_v.log10().floor()),
            10f64.powf(hi_v.log10().ceil().max(lo_v.log10().floor() + 1.0)),
        )
    } else {
        (1.0, 10.0)
    };
    let y = Scale {
        lo,
        hi,
        px_lo: h - BAR_LABELS,
        px_hi: TOP,
        log: true,
    };
    let mut s = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h}\" viewBox=\"0 0 {w:.0} {h}\" role=\"img\"><title>{}</title>",
        esc(unit)
    );
    let (x0, x1, y0) = (LEFT, w - RIGHT, y.px_lo);
    let _ = write!(
        s,
        "<g stroke=\"#888\"><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{TOP}\"/></g><g font-size=\"11\" fill=\"#444\">"
    );
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        let py = y.at(decade);
        let _ = write!(
            s,
            "<line x1=\"{x0}\" y1=\"{py:.1}\" x2=\"{x1}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            py + 4.0,
            label(decade)
        );
        decade *= 10.0;
    }
    let _ = write!(
        s,
        "<text transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
        (y0 + TOP) / 2.0,
        esc(unit)
    );
    for (i, b) in bars.iter().enumerate() {
        let cx = LEFT + 35.0 + 70.0 * i as f64;
        let top = y.at(b.value);
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{top:.1}\" width=\"40\" height=\"{:.1}\" fill=\"#74c476\"><title>{}: {} (range {} – {})</title></rect>",
            cx - 20.0,
            (y0 - top).max(0.0),
            esc(&b.label),
            esc(&format(b.value)),
            esc(&format(b.low)),
            esc(&format(b.high))
        );
        let (wl, wh) = (y.at(b.low), y.at(b.high));
        let _ = write!(
            s,
            "<g stroke=\"#222\"><line x1=\"{cx:.1}\" y1=\"{wl:.1}\" x2=\"{cx:.1}\" y2=\"{wh:.1}\"/><line x1=\"{:.1}\" y1=\"{wl:.1}\" x2=\"{:.1}\" y2=\"{wl:.1}\"/><line x1=\"{:.1}\" y1=\"{wh:.1}\" x2=\"{:.1}\" y2=\"{wh:.1}\"/></g>",
            cx - 6.0,
            cx + 6.0,
            cx - 6.0,
            cx + 6.0
        );
        let _ = write!(
            s,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#444\" text-anchor=\"end\" transform=\"rotate(-30 {cx:.1} {:.1})\">{}</text>",
            y0 + 14.0,
            y0 + 14.0,
            esc(&b.label)
        );
    }
    s.push_str("</svg>");
    s
}

/// One pair's timeline: its name and node 0's and node 1's episodes.
#[derive(Debug, Clone)]
pub struct TimelineRow<'a> {
    /// Left of the stripes.
    pub label: String,
    /// Route stretches and doubts per node.
    pub episodes: &'a [Vec<Episode>; 2],
}

const STRIPE: f64 = 7.0;
const ROW: f64 = 2.0 * STRIPE + 8.0;
const LABEL_W: f64 = 300.0;
const TRACK_W: f64 = 600.0;

fn colour(kind: EpisodeKind) -> &'static str {
    match kind {
        EpisodeKind::Relay => "#bdbdbd",
        EpisodeKind::PeerRelay => "#9ecae1",
        EpisodeKind::Direct => "#74c476",
        EpisodeKind::InDoubt => "#fd8d3c",
    }
}

/// Timelines over `duration_s` seconds: per row a stripe for node 0 above one for node 1,
/// grey on DERP, blue on a peer relay, green direct, orange while the direct path was in
/// doubt (drawn over the route). Hover a stretch for its times.
pub fn timelines(rows: &[TimelineRow], duration_s: f64) -> String {
    let w = LABEL_W + TRACK_W + RIGHT;
    let h = TOP + ROW * rows.len() as f64 + 44.0;
    let x = Scale {
        lo: 0.0,
        hi: duration_s,
        px_lo: LABEL_W,
        px_hi: LABEL_W + TRACK_W,
        log: false,
    };
    let mut s = format!(
        "<svg class=\"chart timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\"><title>routes over time per pair</title>"
    );
    for (i, r) in rows.iter().enumerate() {
        let top = TOP + ROW * i as f64;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#444\" text-anchor=\"end\">{}</text>",
            LABEL_W - 8.0,
            top + STRIPE + 4.0,
            esc(&r.label)
        );
        for (node, eps) in r.episodes.iter().enumerate() {
            let y = top + STRIPE * node as f64;
            // Routes first, doubts over them.
            let ordered = eps
                .iter()
                .filter(|e| e.kind != EpisodeKind::InDoubt)
                .chain(eps.iter().filter(|e| e.kind == EpisodeKind::InDoubt));
            for e in ordered {
                let (a, b) = (x.at(e.from_s), x.at(e.to_s));
                // A doubt of a few milliseconds still shows.
                let width = (b - a).max(if e.kind == EpisodeKind::InDoubt {
                    1.5
                } else {
                    0.0
                });
                let _ = write!(
                    s,
                    "<rect class=\"{:?}\" x=\"{a:.2}\" y=\"{y:.1}\" width=\"{width:.2}\" height=\"{STRIPE}\" fill=\"{}\"><title>node{node} {}: {:.3} s – {:.3} s</title></rect>",
                    e.kind,
                    colour(e.kind),
                    match e.kind {
                        EpisodeKind::Relay => "DERP",
                        EpisodeKind::PeerRelay => "peer relay",
                        EpisodeKind::Direct => "direct",
                        EpisodeKind::InDoubt => "direct path in doubt",
                    },
                    e.from_s,
                    e.to_s
                );
            }
        }
    }
    let y0 = TOP + ROW * rows.len() as f64;
    let _ = write!(
        s,
        "<g stroke=\"#888\"><line x1=\"{LABEL_W}\" y1=\"{y0:.1}\" x2=\"{:.1}\" y2=\"{y0:.1}\"/></g><g font-size=\"11\" fill=\"#444\">",
        LABEL_W + TRACK_W
    );
    for t in ticks(duration_s) {
        let px = x.at(t);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{y0:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#888\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} s</text>",
            y0 + 4.0,
            y0 + 16.0,
            label(t)
        );
    }
    s.push_str("</g>");
    legend(
        &mut s,
        LABEL_W,
        y0 + 24.0,
        &[
            (colour(EpisodeKind::Relay), "DERP"),
            (colour(EpisodeKind::PeerRelay), "peer relay"),
            (colour(EpisodeKind::Direct), "direct"),
            (colour(EpisodeKind::InDoubt), "in doubt"),
        ],
    );
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::CurvePoint;

    fn curve() -> Curve {
        let point = |x: f64, measured: f64| CurvePoint {
            x,
            measured,
            theory: x / 100.0,
            tolerance: 0.1,
        };
        Curve {
            name: "easy–hard <test>".into(),
            seeds: 100,
            succeeded: 90,
            points: vec![point(25.0, 0.2), point(50.0, 0.9), point(100.0, 1.0)],
            series: (0..=10)
                .map(|i| point(i as f64 * 10.0, i as f64 / 10.0))
                .collect(),
            median_s: Some(1.0),
            peak_sessions: 10,
            consistent: false,
        }
    }

    /// Parses the whole document: unbalanced or mismatched tags and bad attributes fail.
    pub(crate) fn well_formed(svg: &str) {
        let mut r = quick_xml::Reader::from_str(svg);
        let mut depth = 0i32;
        loop {
            match r.read_event().expect("well-formed SVG") {
                quick_xml::events::Event::Start(e) => {
                    depth += 1;
                    for a in e.attributes() {
                        a.expect("well-formed attribute");
                    }
                }
                quick_xml::events::Event::End(_) => depth -= 1,
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0, "every element closed");
    }

    /// The numbers in an attribute list like `points="x,y x,y"`.
    fn coords(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let at = svg
            .find(&format!("class=\"{class}\" points=\""))
            .expect(class);
        let rest = &svg[at + class.len() + 17..];
        let list = &rest[..rest.find('"').unwrap()];
        list.split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_curve_is_well_formed_svg_with_its_band_and_verdicts() {
        let svg = curve_chart(&curve(), "probes");
        well_formed(&svg);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"));
        assert!(svg.contains("easy–hard &lt;test&gt;"), "names are escaped");
        // 25 probes: 0.2 measured against 0.25 ± 0.1 is within; 50: 0.9 against 0.5 is not.
        assert_eq!(svg.matches("class=\"within\"").count(), 2);
        assert_eq!(svg.matches("class=\"outside\"").count(), 1);
        // The band runs above the theory line at every x and below it on the way back.
        let theory = coords(&svg, "theory");
        let band = coords(&svg, "band");
        assert_eq!(band.len(), 2 * theory.len());
        for (i, t) in theory.iter().enumerate() {
            let (up, down) = (band[i], band[band.len() - 1 - i]);
            assert_eq!(up.0, t.0);
            assert!(up.1 <= t.1 && down.1 >= t.1, "{up:?} {t:?} {down:?}");
        }
        // Theory 0 at x = 0 sits on the x axis; theory 1 at the right end at the top.
        assert_eq!(theory[0], (LEFT, CURVE_H - BOTTOM));
        assert_eq!(theory[theory.len() - 1], (CURVE_W - RIGHT, TOP));
    }

    #[test]
    fn bars_sit_on_a_log_scale_with_whiskers() {
        let bars = [
            Bar {
                label: "LAN".into(),
                value: 50_000.0,
                low: 40_000.0,
                high: 60_000.0,
            },
            Bar {
                label: "absurd".into(),
                value: 50.0,
                low: 10.0,
                high: 80.0,
            },
        ];
        let svg = bar_chart(&bars, "goodput, kbit/s", |v| format!("{v:.0}"));
        well_formed(&svg);
        // Decades 10 … 100k: five gridlines, and the tall bar is three decades taller.
        assert_eq!(svg.matches("stroke=\"#eee\"").count(), 5);
        let heights: Vec<f64> = svg
            .match_indices("class=\"bar\"")
            .map(|(i, _)| {
                let h = &svg[i..];
                let h = &h[h.find("height=\"").unwrap() + 8..];
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        let decade = (330.0 - BAR_LABELS - TOP) / 4.0;
        assert!(
            (heights[0] - heights[1] - 3.0 * decade).abs() < 0.2,
            "{heights:?}"
        );
    }

    #[test]
    fn timelines_draw_doubts_over_routes() {
        let eps = [
            vec![
                Episode {
                    from_s: 0.0,
                    to_s: 2.0,
                    kind: EpisodeKind::Relay,
                },
                Episode {
                    from_s: 2.0,
                    to_s: 60.0,
                    kind: EpisodeKind::Direct,
                },
                Episode {
                    from_s: 30.0,
                    to_s: 30.001,
                    kind: EpisodeKind::InDoubt,
                },
            ],
            vec![],
        ];
        let svg = timelines(
            &[TimelineRow {
                label: "easy × hard".into(),
                episodes: &eps,
            }],
            60.0,
        );
        well_formed(&svg);
        let direct = svg.find("class=\"Direct\"").unwrap();
        let doubt = svg.find("class=\"InDoubt\"").unwrap();
        assert!(doubt > direct, "the doubt is drawn after (over) the route");
        // Half-way through 600 px from the label column, and visible though 1 ms long.
        assert!(svg[doubt..].starts_with(&format!(
            "class=\"InDoubt\" x=\"{:.2}\" y=\"{TOP:.1}\" width=\"1.50\"",
            LABEL_W + 300.0
        )));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(60.0), vec![0.0, 20.0, 40.0, 60.0]);
        assert_eq!(ticks(1024.0), vec![0.0, 250.0, 500.0, 750.0, 1000.0]);
        assert_eq!(ticks(0.0), vec![0.0]);
    }
}
