//! The report: a text summary (operations, faults, violations with their
//! minimal histories, failover durations) and a timeline PNG of operations
//! against faults.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::checker::Checked;
use crate::history::{FaultEvent, Op, OpKind};
use crate::nemesis::Topology;

/// The slot a workload key (or a set's / model's history key) lives in.
pub fn slot_of(key: &str) -> u16 {
    let k = if key.starts_with("chaos:set:") || key.starts_with("chaos:model:") {
        // History keys name the hash tag the real keys share.
        format!("{{{key}}}")
    } else {
        key.to_string()
    };
    tessera_common::slot::key_slot(k.as_bytes())
}

/// For each fault that hit a shard leader: seconds from the fault to the
/// first acknowledged write on that shard invoked after it.
pub fn failovers(events: &[FaultEvent], history: &[Op], topo: &Topology) -> Vec<(String, u32, f64)> {
    let mut writes: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for o in history {
        if o.ok() && matches!(o.kind, OpKind::Write(_) | OpKind::Add(_)) && o.workload != "final" {
            if let Some(s) = topo.shard_of(slot_of(&o.key)) {
                writes.entry(s).or_default().push((o.call, o.ret));
            }
        }
    }
    for w in writes.values_mut() {
        w.sort_unstable();
    }
    let mut out = Vec::new();
    for e in events {
        for s in &e.led_shards {
            let first = writes.get(s).and_then(|w| w.iter().filter(|(c, _)| *c >= e.start).map(|(_, r)| *r).min());
            if let Some(r) = first {
                out.push((e.name.clone(), *s, (r - e.start) as f64 / 1e9));
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub struct Summary<'a> {
    pub seed: u64,
    pub driver: &'a str,
    pub nodes: usize,
    pub secs: f64,
    pub history: &'a [Op],
    pub events: &'a [FaultEvent],
    pub checked: &'a Checked,
    pub failovers: &'a [(String, u32, f64)],
    pub recoveries: &'a [f64],
    pub unhealthy: &'a [String],
    pub liveness: Result<f64, String>,
    pub final_reads: usize,
}

impl Summary<'_> {
    /// Whether the run found anything wrong.
    pub fn failed(&self) -> bool {
        !self.checked.violations.is_empty()
            || !self.checked.undecided.is_empty()
            || self.liveness.is_err()
            || !self.unhealthy.is_empty()
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tessera-chaos: seed {} driver {} nodes {} run {:.0} s",
            self.seed, self.driver, self.nodes, self.secs
        );
        let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for o in self.history {
            let e = per.entry(o.workload.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(o.ok());
        }
        let total_ok: usize = per.values().map(|v| v.1).sum();
        let _ = writeln!(
            s,
            "operations: {} ({} acknowledged, {} unknown)",
            self.history.len(),
            total_ok,
            self.history.len() - total_ok
        );
        for (w, (n, ok)) in &per {
            let _ = writeln!(s, "  {w:<7} {n:>8} ops, {ok:>8} ok, {:>6} unknown", n - ok);
        }
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for e in self.events {
            *kinds.entry(e.name.as_str()).or_default() += 1;
        }
        let _ = writeln!(
            s,
            "faults: {} ({})",
            self.events.len(),
            kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        );
        for e in self.events {
            let _ = writeln!(
                s,
                "  {:>7.1}s-{:>7.1}s {:<16} {}",
                e.start as f64 / 1e9,
                e.end as f64 / 1e9,
                e.name,
                e.detail.trim()
            );
        }
        let mut f: Vec<f64> = self.failovers.iter().map(|x| x.2).collect();
        f.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "failover (leader-hitting fault -> first acknowledged write on that shard): n {} p50 {:.2} s p99 {:.2} s max {:.2} s",
            f.len(),
            percentile(&f, 0.5),
            percentile(&f, 0.99),
            f.last().copied().unwrap_or(f64::NAN)
        );
        let mut r = self.recoveries.to_vec();
        r.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "recovery (heal -> every shard has 3 agreeing voters): p50 {:.2} s max {:.2} s",
            percentile(&r, 0.5),
            r.last().copied().unwrap_or(f64::NAN)
        );
        match &self.liveness {
            Ok(t) => {
                let _ = writeln!(s, "liveness: every shard took a write {t:.2} s after the final heal");
            }
            Err(e) => {
                let _ = writeln!(s, "LIVENESS VIOLATION: {e}");
            }
        }
        for u in self.unhealthy {
            let _ = writeln!(s, "LIVENESS VIOLATION: {u}");
        }
        let _ = writeln!(
            s,
            "checked: {} keys, {} final reads, {} violations, {} undecided",
            self.checked.keys,
            self.final_reads,
            self.checked.violations.len(),
            self.checked.undecided.len()
        );
        for v in &self.checked.violations {
            let _ = writeln!(s, "VIOLATION on {}: {}", v.key, v.what);
            for o in &v.history {
                let _ = writeln!(
                    s,
                    "    {:<7} worker {:<4} {:>10.6}s..{:>10.6}s {:?} {:?}",
                    o.workload,
                    o.worker,
                    o.call as f64 / 1e9,
                    o.ret as f64 / 1e9,
                    o.kind,
                    o.outcome
                );
            }
        }
        for k in &self.checked.undecided {
            let _ = writeln!(s, "UNDECIDED (search limit) on {k}");
        }
        let _ = writeln!(s, "result: {}", if self.failed() { "FAIL" } else { "PASS" });
        s
    }
}

/// Draws acknowledged and unknown operations per half second, with the
/// faults as shaded bands, into `path`.
pub fn timeline(path: &Path, history: &[Op], events: &[FaultEvent], secs: f64) -> anyhow::Result<()> {
    // Text needs a font; plotters gets one registered from the system.
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
    let Some(font) = font else { anyhow::bail!("no DejaVuSans.ttf to draw text with") };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("font not usable"))?;
    let bucket = 0.5;
    let n = (secs / bucket).ceil() as usize + 1;
    let (mut ok, mut unknown) = (vec![0u32; n], vec![0u32; n]);
    for o in history.iter().filter(|o| o.workload != "final") {
        let b = ((o.ret as f64 / 1e9) / bucket) as usize;
        if b < n {
            if o.ok() {
                ok[b] += 1;
            } else {
                unknown[b] += 1;
            }
        }
    }
    let top = ok.iter().chain(&unknown).copied().max().unwrap_or(1).max(1) as f64 / bucket * 1.15;
    let root = BitMapBackend::new(path, (1600, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("tessera-chaos: operations per second vs faults", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..secs, 0f64..top)?;
    chart.configure_mesh().x_desc("seconds").y_desc("ops/s").draw()?;
    // One colour per kind of fault, named in the legend; bands are also
    // labelled where there are few enough to read (long runs have hundreds).
    let palette = [
        RGBColor(255, 200, 200),
        RGBColor(200, 200, 255),
        RGBColor(255, 230, 170),
        RGBColor(210, 240, 210),
        RGBColor(230, 200, 250),
        RGBColor(200, 240, 245),
        RGBColor(250, 210, 180),
        RGBColor(220, 220, 220),
        RGBColor(245, 245, 170),
        RGBColor(190, 225, 200),
    ];
    let mut kinds: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for (k, kind) in kinds.iter().enumerate() {
        let color = palette[k % palette.len()];
        let bands = events.iter().filter(|e| e.name == *kind).map(|e| {
            let (a, b) = (e.start as f64 / 1e9, e.end.max(e.start) as f64 / 1e9);
            Rectangle::new([(a, 0.0), (b, top)], color.filled())
        });
        chart
            .draw_series(bands)?
            .label(*kind)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    if events.len() <= 24 {
        for (i, e) in events.iter().enumerate() {
            chart.draw_series(std::iter::once(Text::new(
                e.name.clone(),
                (e.start as f64 / 1e9, top * (0.97 - 0.05 * (i % 3) as f64)),
                ("sans-serif", 13).into_font(),
            )))?;
        }
    }
    let series = |v: &[u32]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(i, c)| (i as f64 * bucket, *c as f64 / bucket)).collect()
    };
    chart
        .draw_series(LineSeries::new(series(&ok), GREEN.stroke_width(2)))?
        .label("acknowledged")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_series(LineSeries::new(series(&unknown), RED.stroke_width(2)))?
        .label("failed / timed out (unknown)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
