//! Pictures of a schedule: a Chrome trace (opens in Perfetto or chrome://tracing) and an SVG
//! timeline with one lane per processor, one box per subgraph.

use std::fmt::Write as _;

use super::dag::{Dag, Kind, Processor};
use super::schedule::Schedule;

fn lane(p: Processor) -> usize {
    match p {
        Processor::Accel => 0,
        Processor::Cpu => 1,
    }
}

fn lane_name(p: Processor) -> &'static str {
    match p {
        Processor::Accel => "accelerator",
        Processor::Cpu => "CPU",
    }
}

/// Chrome trace events of several schedules of one DAG (one process per schedule, one thread
/// per processor); times in ms.
pub fn chrome_trace(dag: &Dag, schedules: &[(&str, &Schedule)]) -> String {
    let mut events = Vec::new();
    for (pid, (name, s)) in schedules.iter().enumerate() {
        events.push(serde_json::json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}));
        for p in [Processor::Accel, Processor::Cpu] {
            events.push(serde_json::json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": lane(p), "args": {"name": lane_name(p)}}));
        }
        for sp in &s.spans {
            let n = &dag.nodes[sp.node];
            events.push(serde_json::json!({
                "ph": "X",
                "name": format!("{} c{} l{}", n.kind.name(), n.chunk, n.layer),
                "cat": n.kind.name(),
                "pid": pid,
                "tid": lane(sp.processor),
                "ts": sp.start * 1e3,
                "dur": (sp.end - sp.start) * 1e3,
                "args": {"chunk": n.chunk, "layer": n.layer},
            }));
        }
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"}).to_string()
}

/// Fill colour by kind; chunks alternate between a full and a lighter shade.
fn colour(kind: Kind, chunk: usize) -> &'static str {
    let light = chunk % 2 == 1;
    match (kind, light) {
        (Kind::Qkv, false) => "#1f77b4",
        (Kind::Qkv, true) => "#7fb2d9",
        (Kind::OFfn, false) => "#2ca02c",
        (Kind::OFfn, true) => "#8fd18f",
        (Kind::Attention, false) => "#d62728",
        (Kind::Attention, true) => "#ef8a8b",
        (Kind::ShadowQkv | Kind::ShadowOFfn, false) => "#9467bd",
        (Kind::ShadowQkv | Kind::ShadowOFfn, true) => "#c9b3de",
    }
}

/// An SVG timeline: one panel per schedule, on a shared time axis.
pub fn timeline_svg(dag: &Dag, title: &str, schedules: &[(&str, &Schedule)]) -> String {
    let (width, left, lane_h, panel_gap, top) = (1200.0f64, 110.0, 26.0, 34.0, 46.0);
    let end = schedules.iter().map(|(_, s)| s.makespan).fold(0.0, f64::max).max(1e-9);
    let x = |t: f64| left + (width - left - 20.0) * t / end;
    let panel_h = 2.0 * lane_h + panel_gap;
    let height = top + schedules.len() as f64 * panel_h + 50.0;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#, escape(title));
    for (i, (name, s)) in schedules.iter().enumerate() {
        let y0 = top + i as f64 * panel_h;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}: {:.1} ms, accelerator bubbles {:.1}%</text>"#,
            y0 - 6.0,
            escape(name),
            s.makespan,
            100.0 * s.accel_bubble_rate()
        );
        for p in [Processor::Accel, Processor::Cpu] {
            let y = y0 + lane(p) as f64 * lane_h;
            let _ = writeln!(svg, r##"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f2f2f2"/>"##, width - left - 20.0, lane_h - 4.0);
            let _ = writeln!(svg, r#"<text x="10" y="{:.1}">{}</text>"#, y + lane_h * 0.6, lane_name(p));
        }
        for sp in &s.spans {
            let n = &dag.nodes[sp.node];
            let y = y0 + lane(sp.processor) as f64 * lane_h;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.0}" width="{:.1}" height="{:.0}" fill="{}"><title>{} c{} l{}: {:.1}-{:.1} ms</title></rect>"#,
                x(sp.start),
                (x(sp.end) - x(sp.start)).max(0.3),
                lane_h - 4.0,
                colour(n.kind, n.chunk),
                n.kind.name(),
                n.chunk,
                n.layer,
                sp.start,
                sp.end
            );
        }
    }
    // Time axis and legend.
    let axis_y = top + schedules.len() as f64 * panel_h - panel_gap + 14.0;
    let step = nice_step(end / 8.0);
    let mut t = 0.0;
    while t <= end + 1e-9 {
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{axis_y:.1}" text-anchor="middle">{t} ms</text>"#, x(t));
        t += step;
    }
    let legend = [(Kind::Qkv, "q/k/v (accelerator)"), (Kind::OFfn, "o_proj + FFN (accelerator)"), (Kind::Attention, "attention (CPU)"), (Kind::ShadowQkv, "shadow outliers (CPU)")];
    for (i, (k, label)) in legend.iter().enumerate() {
        let lx = left + i as f64 * 210.0;
        let _ = writeln!(svg, r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{label}</text>"#, axis_y + 12.0, colour(*k, 0), lx + 16.0, axis_y + 22.0);
    }
    let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}">odd chunks lighter</text>"#, left + 4.0 * 210.0, axis_y + 22.0);
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefill::schedule::{simulate, OutOfOrder};

    #[test]
    fn trace_and_timeline_hold_every_subgraph() {
        let dag = Dag::new(2, 2, &[true, false]);
        let cost: Vec<f64> = (0..dag.len()).map(|i| 1.0 + i as f64).collect();
        let s = simulate(&dag, &cost, &mut OutOfOrder);
        let trace: serde_json::Value = serde_json::from_str(&chrome_trace(&dag, &[("ooo", &s)])).unwrap();
        let boxes: Vec<&serde_json::Value> = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(boxes.len(), dag.len());
        let total: f64 = boxes.iter().map(|e| e["dur"].as_f64().unwrap()).sum();
        assert!((total - cost.iter().sum::<f64>() * 1e3).abs() < 1e-6);
        let svg = timeline_svg(&dag, "t <&>", &[("ooo", &s)]);
        assert_eq!(svg.matches("<title>").count(), dag.len());
        assert!(svg.contains("t &lt;&amp;&gt;") && svg.ends_with("</svg>\n"));
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(160.0), 200.0);
    }
}
