//! A run's figures: the one struct the summary table, `--json` and
//! `--report` are made from, and that worker processes hand to the parent.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuUse;
use crate::failover::SendOutage;
use crate::oracle::Counts;
use crate::stats::{Percentiles, Recorded, Sample, histogram};

/// One ramp step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub rate: f64,
    pub achieved_rate: f64,
    pub errors: u64,
    pub lost: u64,
    pub delivery: Percentiles,
    pub ack: Percentiles,
    pub held: bool,
    #[serde(default)]
    pub cpu: CpuUse,
}

/// The idle scenario's memory figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Idle {
    pub polls: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_poll: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub peer: String,
    pub target: String,
    pub users: u64,
    pub devices: u64,
    pub conversations: u64,
    pub workers: u64,
    /// The offered rate (sends/s); a ramp's last step.
    pub rate: f64,
    pub send_seconds: f64,
    pub issued: u64,
    pub acked: u64,
    /// Acked sends per second, from the first send to the last ack.
    pub achieved_rate: f64,
    /// First deliveries to recipient devices, and per second.
    pub delivered: u64,
    pub delivered_rate: f64,
    pub send_errors: u64,
    pub poll_errors: u64,
    pub polls: u64,
    pub cut_polls: u64,
    pub replays: u64,
    pub receipts: u64,
    /// Moves of a device or a sender to the next target node.
    #[serde(default)]
    pub failovers: u64,
    /// Send attempts after each send's first (same message_id and body).
    #[serde(default)]
    pub send_retries: u64,
    /// Per user, the longest stretch from making a send attempt that
    /// failed to the ack of an attempt made at or after it: max and p99
    /// over sending users.
    #[serde(default)]
    pub send_outage: SendOutage,
    pub history_checked: u64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    pub verdict: Counts,
    /// Whether --allow-copy-reorder was given (see `Counts`).
    pub allow_copy_reorder: bool,
    pub clean: bool,
    /// Set when the run hit --max-seconds or could not set up.
    pub aborted: Option<String>,
    pub steps: Vec<Step>,
    pub highest_held_rate: Option<f64>,
    pub idle: Option<Idle>,
    /// CPU of the server (with --server-pid) and of this tool while
    /// sending and draining; one process's runs only.
    #[serde(default)]
    pub cpu: CpuUse,
    pub samples: Vec<Sample>,
    pub ack_histogram: Recorded,
    pub delivery_histogram: Recorded,
}

impl RunResult {
    /// Merges worker results into one (counters add, histograms merge,
    /// samples add by second).
    pub fn merge(parts: &[RunResult]) -> RunResult {
        let Some(first) = parts.first() else {
            return RunResult::default();
        };
        let mut out = first.clone();
        out.workers = parts.len() as u64;
        let (mut ack, mut delivery) = (histogram(), histogram());
        first.ack_histogram.into_histogram(&mut ack);
        first.delivery_histogram.into_histogram(&mut delivery);
        for p in &parts[1..] {
            out.users += p.users;
            out.devices += p.devices;
            out.conversations += p.conversations;
            out.rate += p.rate;
            out.send_seconds = out.send_seconds.max(p.send_seconds);
            out.issued += p.issued;
            out.acked += p.acked;
            out.delivered += p.delivered;
            out.send_errors += p.send_errors;
            out.poll_errors += p.poll_errors;
            out.polls += p.polls;
            out.cut_polls += p.cut_polls;
            out.replays += p.replays;
            out.receipts += p.receipts;
            out.failovers += p.failovers;
            out.send_retries += p.send_retries;
            out.history_checked += p.history_checked;
            out.verdict.add(&p.verdict);
            out.aborted = out.aborted.take().or_else(|| p.aborted.clone());
            p.ack_histogram.into_histogram(&mut ack);
            p.delivery_histogram.into_histogram(&mut delivery);
            for (i, s) in p.samples.iter().enumerate() {
                if let Some(o) = out.samples.get_mut(i) {
                    o.issued_per_s += s.issued_per_s;
                    o.acked_per_s += s.acked_per_s;
                    o.delivered_per_s += s.delivered_per_s;
                    o.errors += s.errors;
                    o.parked += s.parked;
                    // Percentiles do not add: keep the worst worker's.
                    o.p50_ms = o.p50_ms.max(s.p50_ms);
                    o.p99_ms = o.p99_ms.max(s.p99_ms);
                    o.p999_ms = o.p999_ms.max(s.p999_ms);
                }
            }
            if let (Some(a), Some(b)) = (out.idle.as_mut(), p.idle.as_ref()) {
                a.polls += b.polls;
            }
        }
        // Each worker saw the whole server's CPU, and only its own share of
        // the messages: no honest merged figure.
        out.cpu = CpuUse::default();
        out.send_outage =
            SendOutage::merge(&parts.iter().map(|p| &p.send_outage).collect::<Vec<_>>());
        let secs = out.send_seconds.max(1e-9);
        out.achieved_rate = out.acked as f64 / secs;
        out.delivered_rate = out.delivered as f64 / secs;
        out.ack = Percentiles::of(&ack);
        out.delivery = Percentiles::of(&delivery);
        out.ack_histogram = Recorded::of(&ack);
        out.delivery_histogram = Recorded::of(&delivery);
        out.judge();
        out
    }

    /// Sets `clean` from the verdict, the policy and whether it finished.
    pub fn judge(&mut self) {
        let verdict = if self.allow_copy_reorder {
            self.verdict.clean_allowing_copy_reorder()
        } else {
            self.verdict.clean()
        };
        self.clean = verdict && self.aborted.is_none();
    }

    /// The summary table printed at the end of every run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<28} {v}");
        };
        row(
            "scenario",
            format!("{} against {} at {}", self.scenario, self.peer, self.target),
        );
        row(
            "layout",
            format!(
                "{} users, {} devices, {} conversations, {} process(es)",
                self.users,
                self.devices,
                self.conversations,
                self.workers.max(1)
            ),
        );
        if let Some(idle) = &self.idle {
            row("parked polls", idle.polls.to_string());
            row(
                "server RSS",
                format!("{} KiB -> {} KiB", idle.rss_before_kib, idle.rss_after_kib),
            );
            row("per parked poll", format!("{:.2} KiB", idle.kib_per_poll));
        } else {
            row(
                "offered / achieved",
                format!(
                    "{:.0} sends/s / {:.0} acked/s over {:.1} s",
                    self.rate, self.achieved_rate, self.send_seconds
                ),
            );
            row(
                "sends",
                format!(
                    "{} issued, {} acked, {} errors",
                    self.issued, self.acked, self.send_errors
                ),
            );
            row(
                "deliveries",
                format!(
                    "{} to recipients ({:.0}/s), {} redelivered",
                    self.delivered, self.delivered_rate, self.verdict.duplicated
                ),
            );
            row("delivery latency", pct(&self.delivery));
            if self.workers <= 1 {
                row("CPU while sending", self.cpu.text());
            }
            row("ack latency", pct(&self.ack));
            row(
                "polls",
                format!(
                    "{} polls, {} cut, {} errors",
                    self.polls, self.cut_polls, self.poll_errors
                ),
            );
            row(
                "replays / receipts",
                format!(
                    "{} replayed sends, {} read receipts",
                    self.replays, self.receipts
                ),
            );
            row(
                "failover",
                format!(
                    "{} failovers to the next target, {} send retries",
                    self.failovers, self.send_retries
                ),
            );
            let o = &self.send_outage;
            row(
                "send outage per user",
                format!(
                    "max {:.0} ms, p99 {:.0} ms over {} sending users ({} had one, {} never recovered)",
                    o.max_ms, o.p99_ms, o.users, o.users_with_outage, o.unrecovered
                ),
            );
        }
        for s in &self.steps {
            row(
                &format!("step {:.0}/s", s.rate),
                format!(
                    "achieved {:.0}/s, p99 {:.2} ms, errors {}, lost {}: {}{}",
                    s.achieved_rate,
                    s.delivery.p99_ms,
                    s.errors,
                    s.lost,
                    if s.held { "held" } else { "broke" },
                    s.cpu
                        .server_us_per_message
                        .map_or(String::new(), |us| format!(", server {us:.0} µs/message")),
                ),
            );
        }
        if !self.steps.is_empty() {
            row(
                "highest rate that held",
                self.highest_held_rate
                    .map_or("none".into(), |r| format!("{r:.0} sends/s")),
            );
        }
        let v = &self.verdict;
        row(
            "oracle",
            format!(
                "lost {} ({} deliveries), reordered {} (own copies {}{}), gaps {}, corrupted {}, early receipts {}, history mismatches {} ({} conversations checked, {} unreadable), unacked {}, unknown outcome {} ({} of them landed)",
                v.lost_messages,
                v.lost_deliveries,
                v.reordered,
                v.copies_reordered,
                if self.allow_copy_reorder {
                    ", allowed"
                } else {
                    ""
                },
                v.gaps,
                v.corrupted,
                v.early_receipts,
                v.history_mismatches,
                self.history_checked,
                v.history_unread,
                v.unacked,
                v.unknown,
                v.unknown_landed
            ),
        );
        if let Some(why) = &self.aborted {
            row("aborted", why.clone());
        }
        row(
            "verdict",
            if self.clean {
                "CLEAN".into()
            } else {
                "NOT CLEAN".into()
            },
        );
        t
    }
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} (n = {})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(acked: u64, latency_us: u64, lost: u64) -> RunResult {
        let mut h = histogram();
        h.record_n(latency_us, acked).unwrap();
        let mut r = RunResult {
            acked,
            delivered: acked,
            send_seconds: 10.0,
            samples: vec![Sample {
                t: 1.0,
                acked_per_s: acked as f64 / 10.0,
                parked: 5,
                ..Sample::default()
            }],
            delivery_histogram: Recorded::of(&h),
            ..RunResult::default()
        };
        r.verdict.lost_messages = lost;
        r
    }

    #[test]
    fn merging_workers_adds_counts_and_merges_histograms() {
        let merged = RunResult::merge(&[part(100, 1_000, 0), part(300, 9_000, 0)]);
        assert_eq!(merged.workers, 2);
        assert_eq!(merged.acked, 400);
        assert_eq!(merged.achieved_rate, 40.0);
        assert_eq!(merged.samples[0].parked, 10);
        assert_eq!(merged.delivery.count, 400);
        // A quarter of deliveries took ~1 ms, the rest ~9 ms.
        assert!(merged.delivery.p50_ms > 8.0 && merged.delivery.p50_ms < 10.0);
        assert!(merged.clean);
        let lossy = RunResult::merge(&[part(100, 1_000, 0), part(100, 1_000, 2)]);
        assert_eq!(lossy.verdict.lost_messages, 2);
        assert!(!lossy.clean);
    }
}
