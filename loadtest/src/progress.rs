//! The live progress line (indicatif): elapsed, send rate, parked polls,
//! p99 so far, errors. Drawn on stderr, and only on a terminal.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::Engine;
use crate::stats::Sample;

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        if quiet {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar: Some(bar) }
    }

    /// A phase change ("sending", "draining", ...).
    pub fn say(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_owned());
        }
    }

    /// Samples `engine` once a second until it stops: into this line, and,
    /// in a worker process, onto stdout for the parent to merge.
    pub fn follow(&self, engine: &Arc<Engine>, worker: bool) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(engine.clone().sampler(Duration::from_secs(1), move |e, s| {
            progress.sample(e, s);
            if worker {
                crate::worker_protocol::emit_progress(e, s);
            }
        }))
    }

    pub fn sample(&self, engine: &Engine, s: &Sample) {
        if let Some(bar) = &self.bar {
            bar.set_message(line(engine.rec.p99_ms(), s));
        }
    }

    /// Shows `text` as the line (merged worker figures).
    pub fn set(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_owned());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The text of the line, also used for merged worker figures.
pub fn line(p99_so_far_ms: f64, s: &Sample) -> String {
    format!(
        "sent {:>7.0}/s  acked {:>7.0}/s  delivered {:>7.0}/s  parked {:>6}  p99 {:>7.2} ms (now {:.2})  errors {}",
        s.issued_per_s,
        s.acked_per_s,
        s.delivered_per_s,
        s.parked,
        p99_so_far_ms,
        s.p99_ms,
        s.errors
    )
}
