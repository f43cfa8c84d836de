//! The Prometheus collectors, created once at start-up. Hot paths hold
//! handles, never look series up by name.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Buckets for request and stage latencies, in seconds (50 µs .. 60 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Request latency by route; a parked poll counts its whole hold.
    pub request_seconds: HistogramVec,
    /// A send's stages: `durable` (accepted until the fsync that holds it).
    pub stage_seconds: HistogramVec,
    /// From a message being durable to a parked poll handing it out.
    pub delivery_seconds: Histogram,
    /// Polls parked right now.
    pub parked_polls: IntGauge,
    /// How long polls stayed parked before answering.
    pub poll_wait_seconds: Histogram,
    /// Polls whose connection closed (client or an intermediary) before they answered.
    pub polls_abandoned: IntCounter,
    /// Polls refused because a per-user or per-node limit was reached.
    pub polls_refused: IntCounterVec,
    /// Polls cut (connection closed) at least a second into their hold and
    /// before it ended: the sign of a proxy's idle cut-off.
    pub poll_cuts: IntCounter,
    /// Polls held for less than asked because cuts were learned for the device.
    pub poll_holds_shortened: IntCounter,
    /// Sends refused by the per-user send rate limit.
    pub sends_rate_limited: IntCounter,
    /// Sends refused because the node had `limits.max_sends_in_flight`
    /// in progress.
    pub sends_shed: IntCounter,
    pub messages_accepted: IntCounter,
    pub duplicate_sends: IntCounter,
    /// Events handed to clients by polls.
    pub events_delivered: IntCounter,
    /// Store operation latency by operation.
    pub store_seconds: HistogramVec,
    /// Sends (commit requests) sharing one store write and fsync.
    pub commit_batch_size: Histogram,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    /// Outbox entries written but not yet applied.
    pub outbox_depth: IntGauge,
    /// Requests this node passed to the node owning them.
    pub requests_forwarded: IntCounter,
    /// Direct sends acknowledged before the recipient's owner took its
    /// copy (it stays in the durable outbox until it does).
    pub sends_acked_before_delivery: IntCounter,
    /// Pushed events dropped as repeats of ones already in the mailbox.
    pub pushed_repeats: IntCounter,
    /// Peers (this node included) in the ring this node serves by.
    pub ring_live_nodes: IntGauge,
}

// Constructors of the collectors below. Their names and help texts are
// constants, checked by the tests, so building one cannot fail at runtime.

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

/// A histogram of seconds, in the latency buckets.
fn latency(name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    Histogram::with_opts(opts).expect("valid metric")
}

fn latency_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    HistogramVec::new(opts, labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("carrier".into()), None).expect("a constant prefix is valid");
        let m = Metrics {
            requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            request_seconds: latency_vec(
                "http_request_duration_seconds",
                "HTTP request latency",
                &["route"],
            ),
            stage_seconds: latency_vec(
                "message_stage_seconds",
                "Time a message spends reaching each stage after it was accepted",
                &["stage"],
            ),
            delivery_seconds: latency(
                "message_delivery_seconds",
                "From a message being durable to a parked poll answering with it",
            ),
            parked_polls: gauge("parked_polls", "Polls parked now"),
            poll_wait_seconds: latency("poll_wait_seconds", "How long polls stayed parked"),
            polls_abandoned: counter(
                "polls_abandoned_total",
                "Polls whose connection closed before they answered",
            ),
            polls_refused: counter_vec(
                "polls_refused_total",
                "Polls refused by a parked-poll limit",
                &["limit"],
            ),
            poll_cuts: counter(
                "poll_cuts_total",
                "Polls cut by their connection closing before their hold ended",
            ),
            poll_holds_shortened: counter(
                "poll_holds_shortened_total",
                "Polls held for less than asked because the device's polls were cut before",
            ),
            sends_shed: counter(
                "sends_shed_total",
                "Sends refused at once because the node had its limit of sends in progress",
            ),
            sends_rate_limited: counter(
                "sends_rate_limited_total",
                "Sends refused by the per-user send rate limit",
            ),
            messages_accepted: counter(
                "messages_accepted_total",
                "Messages stored and acknowledged",
            ),
            duplicate_sends: counter(
                "duplicate_sends_total",
                "Sends answered from an earlier identical send",
            ),
            requests_forwarded: counter(
                "requests_forwarded_total",
                "Requests passed to the node that owns their user or conversation",
            ),
            sends_acked_before_delivery: counter(
                "sends_acked_before_delivery_total",
                "Direct sends acknowledged before the recipient's node took the copy (still in the outbox)",
            ),
            pushed_repeats: counter(
                "pushed_repeats_total",
                "Events pushed by a peer and dropped as repeats of recent ones",
            ),
            ring_live_nodes: gauge(
                "ring_live_nodes",
                "Nodes in the ring this node routes requests by, itself included",
            ),
            events_delivered: counter(
                "events_delivered_total",
                "Events handed to clients by polls",
            ),
            store_seconds: latency_vec(
                "store_operation_seconds",
                "Store operation latency",
                &["op"],
            ),
            commit_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "commit_batch_size",
                    "Commit requests sharing one store write and disk sync",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )
            .expect("valid metric"),
            cache_hits: counter_vec("cache_hits_total", "Reads answered by a cache", &["cache"]),
            cache_misses: counter_vec(
                "cache_misses_total",
                "Reads that went to the store",
                &["cache"],
            ),
            outbox_depth: gauge("outbox_depth", "Outbox entries not yet applied"),
            registry,
        };
        m.register_all();
        m.create_series();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_seconds.clone()),
            Box::new(self.stage_seconds.clone()),
            Box::new(self.delivery_seconds.clone()),
            Box::new(self.parked_polls.clone()),
            Box::new(self.poll_wait_seconds.clone()),
            Box::new(self.polls_abandoned.clone()),
            Box::new(self.polls_refused.clone()),
            Box::new(self.poll_cuts.clone()),
            Box::new(self.poll_holds_shortened.clone()),
            Box::new(self.sends_rate_limited.clone()),
            Box::new(self.sends_shed.clone()),
            Box::new(self.messages_accepted.clone()),
            Box::new(self.duplicate_sends.clone()),
            Box::new(self.events_delivered.clone()),
            Box::new(self.store_seconds.clone()),
            Box::new(self.commit_batch_size.clone()),
            Box::new(self.cache_hits.clone()),
            Box::new(self.cache_misses.clone()),
            Box::new(self.outbox_depth.clone()),
            Box::new(self.requests_forwarded.clone()),
            Box::new(self.sends_acked_before_delivery.clone()),
            Box::new(self.pushed_repeats.clone()),
            Box::new(self.ring_live_nodes.clone()),
        ];
        for c in collectors {
            self.registry
                .register(c)
                .expect("each collector is registered once");
        }
    }

    /// Series that dashboards expect to exist before the first event.
    fn create_series(&self) {
        self.stage_seconds.with_label_values(&["durable"]);
        for limit in ["user", "node"] {
            self.polls_refused.with_label_values(&[limit]);
        }
        for cache in ["mailbox", "history"] {
            self.cache_hits.with_label_values(&[cache]);
            self.cache_misses.with_label_values(&[cache]);
        }
    }

    /// Creates the latency series of every route label, so they exist
    /// from the start. The labels come from the router (`http::router`),
    /// which alone knows its routes.
    pub fn expect_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            self.request_seconds.with_label_values(&[route]);
        }
    }

    /// The text exposition of every collector.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed collectors.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
