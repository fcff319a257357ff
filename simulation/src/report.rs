//! `--report DIR`: report.json and a self-contained report.html (a grid of scenarios × seeds
//! coloured by outcome).

use std::path::Path;
use std::time::Duration;

use crate::grid::GridReport;
use crate::scenario::Outcome;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes both files; with `grid`, the NAT × NAT grid and birthday curves come first.
pub fn write(
    dir: &Path,
    outcomes: &[Outcome],
    wall: Duration,
    grid: Option<&GridReport>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::json!({
        "runs": outcomes.len(),
        "passed": outcomes.iter().filter(|o| o.passed).count(),
        "wall_seconds": wall.as_secs_f64(),
        "outcomes": outcomes,
        "grid": grid,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let grid_html = grid.map(GridReport::html).unwrap_or_default();
    std::fs::write(dir.join("report.html"), html(outcomes, wall, &grid_html))?;
    Ok(())
}

/// A row's verdict: a netcheck's NAT, or the two routes of a mesh run.
fn verdict_of(r: &serde_json::Value) -> String {
    if r.get("route_a").is_some() {
        return format!(
            "mesh · routes: {} / {}",
            r["route_a"].as_str().unwrap_or("?"),
            r["route_b"].as_str().unwrap_or("?")
        );
    }
    let varies = match r["mapping_varies_by_dest_ip"].as_bool() {
        Some(v) => v.to_string(),
        None => "unknown".into(),
    };
    format!(
        "{} · mapping varies: {varies} · filtering: {} · ports: {}",
        r["nat_type"].as_str().unwrap_or("?"),
        r["filtering"].as_str().unwrap_or("?"),
        r["port_allocation"]["kind"].as_str().unwrap_or("?")
    )
}

fn html(outcomes: &[Outcome], wall: Duration, grid: &str) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for o in outcomes {
        if !scenarios.contains(&o.scenario.as_str()) {
            scenarios.push(&o.scenario);
        }
        if !seeds.contains(&o.seed) {
            seeds.push(o.seed);
        }
    }
    seeds.sort();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let mut rows = String::new();
    for s in &scenarios {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == *s).collect();
        let ok = mine.iter().filter(|o| o.passed).count();
        let verdict = mine
            .iter()
            .find_map(|o| o.result.as_ref())
            .map(verdict_of)
            .unwrap_or_else(|| "no STUN answer (UDP blocked)".into());
        rows.push_str(&format!(
            "<tr><th class=\"name\">{}<div class=\"verdict\">{}</div></th><td class=\"sum {}\">{ok}/{}</td>",
            esc(s),
            esc(&verdict),
            if ok == mine.len() { "pass" } else { "fail" },
            mine.len()
        ));
        for seed in &seeds {
            match mine.iter().find(|o| o.seed == *seed) {
                None => rows.push_str("<td></td>"),
                Some(o) => {
                    let mut title = format!(
                        "seed {}\nsimulated {:.2} s, wall {} ms\ntrace {}\n",
                        o.seed,
                        o.sim_ms as f64 / 1000.0,
                        o.wall_ms,
                        &o.trace_hash[..16]
                    );
                    if let Some(r) = &o.result {
                        title.push_str(&format!(
                            "global {} · nat {} · filtering {}\n",
                            r["global_v4"], r["nat_type"], r["filtering"]
                        ));
                    }
                    for (name, b) in &o.boxes {
                        title.push_str(&format!(
                            "{name}: peak {} sessions, {} filtered\n",
                            b.peak_sessions, b.dropped_filtered
                        ));
                    }
                    for m in &o.mismatches {
                        title.push_str(&format!(
                            "MISMATCH {}: expected {}, got {}\n",
                            m.field, m.expected, m.got
                        ));
                    }
                    if let Some(e) = &o.error {
                        title.push_str(&format!("ERROR {e}\n"));
                    }
                    rows.push_str(&format!(
                        "<td class=\"{}\" title=\"{}\">{}</td>",
                        if o.passed { "pass" } else { "fail" },
                        esc(&title),
                        o.sim_ms / 100
                    ));
                }
            }
        }
        rows.push_str("</tr>\n");
    }
    let head: String = seeds.iter().map(|s| format!("<th>{s}</th>")).collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>burrow simulation report</title>
<style>
{style}</style></head><body>
<h1>burrow simulation report</h1>
{grid}
<h2>Scenarios: netcheck per preset, and mesh pairs</h2>
<p><b>{passed}/{total}</b> runs passed in {wall:.1} s wall time. Cells: one run per seed, coloured by outcome;
the number is simulated time in tenths of a second; hover a cell for its figures.</p>
<p class="legend"><span class="pass" style="background:#c8ebc9">expectations held</span><span style="background:#f6b6b0">expectation failed</span></p>
<table><thead><tr><th class="name">scenario</th><th>passed</th>{head}</tr></thead>
<tbody>
{rows}</tbody></table>
</body></html>
"#,
        total = outcomes.len(),
        wall = wall.as_secs_f64(),
        style = STYLE,
    )
}

/// The reports' style sheet.
pub const STYLE: &str = "\
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px 6px; text-align: center; }
th.name { text-align: left; font-weight: 600; }
.verdict { font-weight: normal; color: #555; font-size: 12px; }
td.pass { background: #c8ebc9; }
td.fail { background: #f6b6b0; font-weight: 700; }
td.sum { font-weight: 700; }
td.direct { background: #c8ebc9; }
td.relay { background: #e2e2e2; }
td.longrun { background: #c9ddf2; }
table.grid td { min-width: 64px; font-size: 12px; }
th.col { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: 600; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 8px; }
.figure { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
details summary { font-weight: 600; margin: 8px 0 2px; cursor: pointer; }
";

#[cfg(test)]
mod tests {
    use super::verdict_of;

    #[test]
    fn mesh_rows_name_their_routes_and_netcheck_rows_their_nat() {
        let mesh = serde_json::json!({ "route_a": "direct", "route_b": "relay" });
        assert_eq!(verdict_of(&mesh), "mesh · routes: direct / relay");
        let netcheck = serde_json::json!({
            "nat_type": "easy", "mapping_varies_by_dest_ip": false,
            "filtering": "address-dependent", "port_allocation": { "kind": "preserving" }
        });
        assert_eq!(
            verdict_of(&netcheck),
            "easy · mapping varies: false · filtering: address-dependent · ports: preserving"
        );
        let unknown = serde_json::json!({ "nat_type": "blocked" });
        assert!(verdict_of(&unknown).contains("mapping varies: unknown"));
    }
}
