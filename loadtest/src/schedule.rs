//! The open-loop scheduler: send number `i` is due at `start + i / rate` by
//! the wall clock, and is issued then whether or not earlier sends have been
//! answered. A slow server therefore cannot slow the offered load down (no
//! coordinated omission), and latency is measured from the due time, so any
//! lag of the scheduler itself counts against the target, not for it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Calls `issue(i, due)` for every send due within `duration` at `rate` per
/// second, each at its due time. `issue` must not wait (it spawns). Returns
/// how many were issued (fewer only when `stop` fires).
pub async fn open_loop<F>(
    rate: f64,
    duration: Duration,
    stop: &CancellationToken,
    mut issue: F,
) -> u64
where
    F: FnMut(u64, Instant),
{
    if rate <= 0.0 {
        return 0;
    }
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut i = 0;
    while i < total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Everything due by now goes out at once: at high rates several
        // sends share one timer tick.
        let now = Instant::now();
        while i < total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > now {
                break;
            }
            issue(i, due);
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::client::{Pool, Sources};

    #[tokio::test(start_paused = true)]
    async fn issues_at_the_rate_by_the_clock() {
        let stop = CancellationToken::new();
        let start = Instant::now();
        let mut dues = Vec::new();
        let n = open_loop(100.0, Duration::from_secs(2), &stop, |i, due| {
            dues.push((i, due))
        })
        .await;
        assert_eq!(n, 200);
        assert_eq!(dues.len(), 200);
        assert_eq!(dues[150].1 - start, Duration::from_millis(1500));
    }

    /// A fake endpoint that reads requests and never answers: a closed-loop
    /// client with a few connections would issue a handful of requests; the
    /// open-loop scheduler issues all of them on time.
    #[tokio::test]
    async fn a_slow_endpoint_does_not_reduce_the_issued_rate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicU64::new(0));
        let counter = arrived.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut counted = false;
                    // Read the request, count it, then hold the socket
                    // without answering until the test ends.
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !counted {
                            counted = true;
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });

        let pool = Arc::new(Pool::new(&[addr], 1000));
        let sources = Arc::new(Sources::new(&[addr], 1));
        let stop = CancellationToken::new();
        let rate = 200.0;
        let issued = open_loop(rate, Duration::from_secs(1), &stop, |_, _| {
            let pool = pool.clone();
            let sources = sources.clone();
            tokio::spawn(async move {
                let req = hyper::Request::post("/v1/messages")
                    .header("host", "x")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                let _ = pool.call(0, &sources, req, Duration::from_secs(30)).await;
            });
        })
        .await;
        assert_eq!(issued, 200);
        // Not one request has been answered; still, all of them reach the
        // endpoint (allow a moment for the last connections to open).
        for _ in 0..100 {
            if arrived.load(Ordering::SeqCst) >= issued {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(arrived.load(Ordering::SeqCst), issued);
    }
}
