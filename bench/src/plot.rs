//! Draws a benchmark run's `results.json` (written by scripts/bench.py) as
//! PNG plots beside it:
//!
//! - `throughput-clients.png`: requests/s against clients (pipeline 1), for
//!   GET, SET, AI.TENSORGET and AI.TENSORSET, Tessera and redis-server;
//! - `throughput-pipeline.png`: the same against pipeline depth (50 clients);
//! - `latency.png`: p50 and p99 of puts and linearizable gets against
//!   clients: Tessera, redis-server with `appendfsync always`, etcd.
//!
//! Points are the mean of a run's rounds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// A run's results.json; the plots go to its folder.
    results: PathBuf,
}

const COMMANDS: [&str; 4] = ["GET", "SET", "TENSORGET", "TENSORSET"];

/// One colour per side, the same in every plot.
fn color(side: &str) -> RGBColor {
    match side {
        "tessera" => RGBColor(31, 119, 180),
        "redis" => RGBColor(214, 39, 40),
        "redis-aof" => RGBColor(255, 127, 14),
        _ => RGBColor(44, 160, 44), // etcd
    }
}

fn label(side: &str) -> &str {
    match side {
        "redis" => "redis-server (RedisAI's stand-in)",
        "redis-aof" => "redis-server, appendfsync always",
        "etcd" => "etcd, 3 members",
        _ => "Tessera, 3 replicas",
    }
}

fn f(row: &Value, k: &str) -> f64 {
    row[k].as_f64().unwrap_or(f64::NAN)
}

/// Mean of `y` (times `scale`) over rounds, keyed by (side, x), for rows
/// `keep` selects.
fn series(
    rows: &[Value],
    keep: impl Fn(&Value) -> bool,
    x: &str,
    (y, scale): (&str, f64),
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut acc: BTreeMap<(String, u64), (f64, u32)> = BTreeMap::new();
    for r in rows.iter().filter(|r| keep(r)) {
        let e = acc.entry((r["side"].as_str().unwrap_or("?").to_string(), f(r, x) as u64)).or_default();
        e.0 += f(r, y) * scale;
        e.1 += 1;
    }
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((side, x), (sum, n)) in acc {
        out.entry(side).or_default().push((x as f64, sum / n as f64));
    }
    out
}

fn register_font() -> Result<()> {
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf to draw text with (scripts/setup.sh installs fonts-dejavu-core)")?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("font not usable"))
}

type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<WithKeyPoints<LogCoord<f64>>, RangedCoordf64>>;

/// A chart with a log-scale x axis labelled at the measured points and a
/// linear y axis from 0.
fn chart<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    title: &str,
    s: &BTreeMap<String, Vec<(f64, f64)>>,
    top: f64,
    (xd, yd): (&str, &str),
) -> Result<Chart<'a>> {
    let mut xs: Vec<f64> = s.values().flatten().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (lo, hi) = (xs[0], xs[xs.len() - 1]);
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale().with_key_points(xs), 0f64..top * 1.1)?;
    let digits = if top < 10.0 { 2 } else { 0 };
    c.configure_mesh()
        .x_desc(xd)
        .y_desc(yd)
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.digits$}"))
        .draw()?;
    Ok(c)
}

fn lines(c: &mut Chart<'_>, s: &BTreeMap<String, Vec<(f64, f64)>>, suffix: &str, width: u32) -> Result<()> {
    for (side, pts) in s {
        let col = color(side);
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(width)))?
            .label(format!("{}{suffix}", label(side)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], col.stroke_width(width)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled())))?;
    }
    Ok(())
}

fn legend(c: &mut Chart<'_>, pos: SeriesLabelPosition) -> Result<()> {
    c.configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

fn top(s: &BTreeMap<String, Vec<(f64, f64)>>) -> f64 {
    s.values().flatten().map(|p| p.1).fold(1.0, f64::max)
}

/// Requests/s of each command against `x` (`clients` at pipeline 1, or
/// `pipeline` at 50 clients), one panel per command.
fn throughput(rows: &[Value], path: &Path, x: &str, title: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.titled(title, ("sans-serif", 22))?;
    for (cmd, area) in COMMANDS.iter().zip(body.split_evenly((2, 2))) {
        let keep = |r: &Value| {
            r["part"] == "sweep"
                && r["command"] == *cmd
                && if x == "clients" { r["pipeline"] == 1 } else { r["clients"] == 50 }
        };
        let s = series(rows, keep, x, ("rps", 1.0));
        if s.is_empty() {
            continue; // nothing measured for this command
        }
        let name = if cmd.starts_with("TENSOR") { format!("AI.{cmd}") } else { format!("{cmd} 1 KiB") };
        let mut c = chart(&area, &name, &s, top(&s), (x, "requests/s"))?;
        lines(&mut c, &s, "", 2)?;
        legend(&mut c, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}

/// p50 (thick) and p99 (thin) of puts and gets against clients.
fn latency(rows: &[Value], path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.titled("Latency of 1 KiB puts and linearizable gets (ms; p50 thick, p99 thin)", ("sans-serif", 22))?;
    for (op, area) in ["put", "get"].iter().zip(body.split_evenly((1, 2))) {
        let keep = |r: &Value| r["part"] == "kv" && r["op"] == *op;
        let (p50, p99) =
            (series(rows, keep, "clients", ("p50_us", 1e-3)), series(rows, keep, "clients", ("p99_us", 1e-3)));
        if p50.is_empty() {
            continue;
        }
        let title = if *op == "put" { "put / SET" } else { "get / GET (linearizable)" };
        let mut c = chart(&area, title, &p50, top(&p99).max(top(&p50)), ("clients", "ms"))?;
        lines(&mut c, &p50, " p50", 3)?;
        for (side, pts) in &p99 {
            c.draw_series(LineSeries::new(pts.clone(), color(side).stroke_width(1)))?;
        }
        legend(&mut c, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let text = std::fs::read_to_string(&a.results).with_context(|| format!("reading {}", a.results.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    let rows = v["rows"].as_array().context("results.json: no rows")?;
    let dir = a.results.parent().unwrap_or(Path::new("."));
    register_font()?;
    let m = &v["machine"];
    let on = format!("{} vCPU, {}", m["cpus"], m["date"].as_str().unwrap_or(""));
    throughput(
        rows,
        &dir.join("throughput-clients.png"),
        "clients",
        &format!("Throughput vs clients, pipeline 1 ({on})"),
    )?;
    throughput(
        rows,
        &dir.join("throughput-pipeline.png"),
        "pipeline",
        &format!("Throughput vs pipeline depth, 50 clients ({on})"),
    )?;
    latency(rows, &dir.join("latency.png"))?;
    Ok(())
}
