//! Figures: HdrHistograms of send-ack and send-to-delivery latency (in
//! microseconds, per phase so the ramp can judge each step), counters, and
//! a once-a-second time series for the progress line and the report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies above this are clamped (every run is bounded well below it).
const MAX_MICROS: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")
}

/// Counters any task bumps without a lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub issued: AtomicU64,
    pub acked: AtomicU64,
    pub send_errors: AtomicU64,
    /// First deliveries to recipient devices (timed ones).
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub poll_errors: AtomicU64,
    /// Polls on the wire now.
    pub parked: AtomicU64,
    pub polls: AtomicU64,
    pub cut_polls: AtomicU64,
    pub replays: AtomicU64,
    pub receipts: AtomicU64,
    /// Moves of a device or a sender to the next target node.
    pub failovers: AtomicU64,
    /// Send attempts after a send's first (same message_id).
    pub send_retries: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One second of the run, for charts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub issued_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    pub errors: u64,
    pub parked: u64,
    /// Delivery latency percentiles of the deliveries in this second (ms).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// A histogram as (value, count) pairs, so worker processes can hand theirs
/// to the parent as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recorded(pub Vec<(u64, u64)>);

impl Recorded {
    pub fn of(h: &Histogram<u64>) -> Recorded {
        Recorded(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn into_histogram(&self, h: &mut Histogram<u64>) {
        for &(v, n) in &self.0 {
            let _ = h.record_n(v.clamp(1, MAX_MICROS), n);
        }
    }
}

/// Latency histograms for one phase (the whole run, or one ramp step).
#[derive(Debug)]
pub struct Phase {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            ack: histogram(),
            delivery: histogram(),
        }
    }
}

/// The histograms, behind one lock taken once per ack or poll batch.
#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phases: Vec<Phase>,
    /// Deliveries since the last sample.
    interval: Histogram<u64>,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new(Inner {
                phases: vec![Phase::new()],
                interval: histogram(),
            }),
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn phase(inner: &mut Inner, tag: u32) -> &mut Phase {
        let i = tag as usize;
        while inner.phases.len() <= i {
            inner.phases.push(Phase::new());
        }
        &mut inner.phases[i]
    }

    pub fn ack(&self, tag: u32, latency: Duration) {
        let mut inner = self.lock();
        let _ = Self::phase(&mut inner, tag).ack.record(micros(latency));
    }

    pub fn deliveries(&self, batch: &[(u32, Duration)]) {
        if batch.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for &(tag, latency) in batch {
            let us = micros(latency);
            let _ = Self::phase(&mut inner, tag).delivery.record(us);
            let _ = inner.interval.record(us);
        }
    }

    /// Percentiles (ms) of deliveries since the last call, and resets them.
    pub fn take_interval(&self) -> (f64, f64, f64) {
        let mut inner = self.lock();
        let h = &inner.interval;
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        let out = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (q(0.5), q(0.99), q(0.999))
        };
        inner.interval.reset();
        out
    }

    /// The p99 so far of every delivery (ms), for the progress line.
    pub fn p99_ms(&self) -> f64 {
        let inner = self.lock();
        let mut all = histogram();
        for p in &inner.phases {
            let _ = all.add(&p.delivery);
        }
        all.value_at_quantile(0.99) as f64 / 1000.0
    }

    /// A copy of one phase's histograms.
    pub fn phase_copy(&self, tag: u32) -> (Histogram<u64>, Histogram<u64>) {
        let mut inner = self.lock();
        let p = Self::phase(&mut inner, tag);
        (p.ack.clone(), p.delivery.clone())
    }

    /// Every phase merged.
    pub fn totals(&self) -> (Histogram<u64>, Histogram<u64>) {
        let inner = self.lock();
        let (mut ack, mut delivery) = (histogram(), histogram());
        for p in &inner.phases {
            let _ = ack.add(&p.ack);
            let _ = delivery.add(&p.delivery);
        }
        (ack, delivery)
    }
}

/// Latency percentiles in milliseconds, as the summary and JSON show them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_round_trips_a_histogram() {
        let mut h = histogram();
        for v in [5, 50, 500, 5000, 5000] {
            h.record(v).unwrap();
        }
        let mut back = histogram();
        Recorded::of(&h).into_histogram(&mut back);
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }
}
