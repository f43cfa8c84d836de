//! Health probes: each peer's `/healthz`, every `probe_interval`. A peer
//! that fails `down_after` probes in a row leaves the newest view; one
//! answer puts it back. The loop also notices when this process itself
//! stood still (SIGSTOP, a stalled VM) for longer than its peers wait
//! before declaring it dead, and then makes it rejoin.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::Method;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Cluster;

pub async fn run(cluster: Arc<Cluster>, stop: CancellationToken) {
    let n = cluster.peers().len();
    let mut failures = vec![0u32; n];
    let mut live = vec![true; n];
    let mut ticker = tokio::time::interval(cluster.settings.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    cluster.tick();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let stood_still = last.elapsed() > cluster.pause_limit();
        last = Instant::now();
        if stood_still {
            tracing::warn!(
                limit_ms = cluster.pause_limit().as_millis() as u64,
                "this node stood still longer than its peers wait: rejoining"
            );
            cluster.set_joined(false);
        }
        cluster.tick();

        let mut probes = JoinSet::new();
        for (i, peer) in cluster.peers().iter().enumerate() {
            if i == cluster.me_index() {
                continue;
            }
            let cluster = cluster.clone();
            let addr = peer.addr;
            probes.spawn(async move {
                let answer = cluster
                    .client
                    .call(
                        addr,
                        Method::GET,
                        "/healthz",
                        &[],
                        Bytes::new(),
                        cluster.settings.probe_timeout,
                    )
                    .await;
                (i, matches!(answer, Ok(a) if a.status.is_success()))
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((i, ok)) = done else { continue };
            if ok {
                failures[i] = 0;
                live[i] = true;
            } else {
                failures[i] += 1;
                if failures[i] >= cluster.settings.down_after {
                    live[i] = false;
                }
            }
        }
        if cluster.set_newest(live.clone(), stood_still) {
            let down: Vec<&str> = cluster
                .peers()
                .iter()
                .zip(&live)
                .filter(|(_, l)| !**l)
                .map(|(p, _)| p.id.as_str())
                .collect();
            tracing::info!(?down, "ring changed");
        }
    }
}
