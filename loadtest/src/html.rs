//! `--report FILE.html`: one self-contained page with the summary and four
//! charts drawn by plotters as inline SVG (latency percentiles over time,
//! throughput over time, parked polls over time, latency distribution).

use plotters::prelude::*;

use crate::report::RunResult;
use crate::stats::{Sample, histogram};

const W: u32 = 860;
const H: u32 = 320;

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let points = series.iter().flat_map(|s| s.2.iter());
        let x_max = points.clone().map(|p| p.0).fold(1e-9, f64::max);
        let y_max = points.map(|p| p.1).fold(1e-9, f64::max) * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, color, data) in series {
            let color = *color;
            c.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

fn over_time(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    samples.iter().map(|s| (s.t, f(s))).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole page.
pub fn render(r: &RunResult) -> anyhow::Result<String> {
    let s = &r.samples;
    let latency = chart(
        "Delivery latency over time (per second)",
        "seconds",
        "ms",
        &[
            ("p50", BLUE, over_time(s, |x| x.p50_ms)),
            ("p99", RED, over_time(s, |x| x.p99_ms)),
            ("p99.9", MAGENTA, over_time(s, |x| x.p999_ms)),
        ],
    )?;
    let throughput = chart(
        "Throughput over time",
        "seconds",
        "per second",
        &[
            ("sends issued", BLUE, over_time(s, |x| x.issued_per_s)),
            ("sends acked", GREEN, over_time(s, |x| x.acked_per_s)),
            ("deliveries", RED, over_time(s, |x| x.delivered_per_s)),
        ],
    )?;
    let parked = chart(
        "Parked polls over time",
        "seconds",
        "polls",
        &[("parked", BLUE, over_time(s, |x| x.parked as f64))],
    )?;
    // Distribution: latency at each percentile, x = nines (1 = 90 %,
    // 2 = 99 %, 3 = 99.9 %, ...).
    let mut h = histogram();
    r.delivery_histogram.into_histogram(&mut h);
    let mut ack = histogram();
    r.ack_histogram.into_histogram(&mut ack);
    let curve = |h: &hdrhistogram::Histogram<u64>| -> Vec<(f64, f64)> {
        if h.is_empty() {
            return Vec::new();
        }
        (0..=50)
            .map(|i| {
                let nines = f64::from(i) * 0.1;
                let q = 1.0 - 10f64.powf(-nines);
                (nines, h.value_at_quantile(q) as f64 / 1000.0)
            })
            .collect()
    };
    let distribution = chart(
        "Latency distribution (x: nines, 1 = p90, 2 = p99, 3 = p99.9)",
        "nines",
        "ms",
        &[
            ("send to delivery", RED, curve(&h)),
            ("send to ack", BLUE, curve(&ack)),
        ],
    )?;
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>carrier-loadtest: {scenario}</title>\
         <style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style>\
         </head><body>\n<h1>carrier-loadtest: {scenario} against {peer}</h1>\n<pre>{table}</pre>\n{latency}\n{throughput}\n{parked}\n{distribution}\n</body></html>\n",
        scenario = escape(&r.scenario),
        peer = escape(&r.peer),
        table = escape(&r.table()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_four_inline_charts() {
        let mut r = RunResult {
            scenario: "chat".into(),
            ..RunResult::default()
        };
        r.samples = (1..5)
            .map(|t| Sample {
                t: f64::from(t),
                issued_per_s: 100.0,
                p99_ms: 2.0,
                parked: 10,
                ..Sample::default()
            })
            .collect();
        let page = render(&r).unwrap();
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(page.contains("Parked polls over time"));
    }
}
