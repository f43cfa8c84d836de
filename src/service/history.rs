//! Reading a conversation's messages, newest first.

use std::collections::VecDeque;
use std::ops::Bound;

use bytes::Bytes;

use super::cache::Page;
use super::conversations::Membership;
use super::{Result, Service};
use crate::domain::{ConversationId, Seq, UserId};
use crate::store::{Scan, Table, keys};

/// Messages a cache fill reads; the cache keeps this many per conversation.
const FILL: usize = 100;

/// Which messages a history request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The newest, skipping `offset` of them.
    Newest { offset: u64 },
    /// Those before this seq.
    Before(Seq),
}

impl Service {
    /// At most `limit` messages of `conv`, newest first.
    pub async fn history(
        &self,
        user: UserId,
        conv: ConversationId,
        limit: usize,
        window: Window,
    ) -> Result<Vec<Bytes>> {
        let (_, membership) = self.membership(user, conv).await?;
        let visible_to = match membership {
            Membership::Former(seq) => Some(seq),
            _ => None,
        };
        if visible_to.is_none() {
            let page = match self.inner.history_cache.get(&conv) {
                Some(page) => {
                    self.inner
                        .metrics
                        .cache_hits
                        .with_label_values(&["history"])
                        .inc();
                    Some(page)
                }
                None => {
                    self.inner
                        .metrics
                        .cache_misses
                        .with_label_values(&["history"])
                        .inc();
                    self.fill_history(conv).await?
                }
            };
            if let Some(page) = page
                && let Some(messages) = serve_from(&page, limit, window)
            {
                return Ok(messages);
            }
        }

        let head = match visible_to {
            Some(seq) => seq,
            None => self.newest_seq(conv).await?,
        };
        let upper = upper_seq(head, window);
        if upper == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let scan = Scan {
            table: Table::Messages,
            start: Bound::Included(keys::id_u64(conv.0, 1)),
            end: Bound::Included(keys::id_u64(conv.0, upper)),
            reverse: true,
            limit,
        };
        Ok(self.scan(scan).await?.into_iter().map(|(_, m)| m).collect())
    }

    /// Reads the newest page into the cache, under the sequencer lock so no
    /// send can commit between the read and the fill.
    async fn fill_history(&self, conv: ConversationId) -> Result<Option<std::sync::Arc<Page>>> {
        let _lock = self.inner.sequencer.lock(conv).await;
        if let Some(page) = self.inner.history_cache.get(&conv) {
            return Ok(Some(page));
        }
        let rows = self
            .scan(Scan::prefix(Table::Messages, conv.0.as_bytes(), FILL).rev())
            .await?;
        let mut messages = VecDeque::with_capacity(rows.len());
        for (row, json) in rows.into_iter().rev() {
            if let Some(seq) = keys::trailing_u64(&row) {
                messages.push_back((seq, json));
            }
        }
        if messages.is_empty() {
            return Ok(None);
        }
        self.inner.history_cache.fill(conv, messages);
        Ok(self.inner.history_cache.get(&conv))
    }

    async fn newest_seq(&self, conv: ConversationId) -> Result<Seq> {
        let newest = self
            .scan(Scan::prefix(Table::Messages, conv.0.as_bytes(), 1).rev())
            .await?;
        Ok(newest
            .first()
            .and_then(|(row, _)| keys::trailing_u64(row))
            .unwrap_or(0))
    }
}

/// The highest seq a window can return in a conversation whose newest is `head`.
fn upper_seq(head: Seq, window: Window) -> Seq {
    match window {
        Window::Newest { offset } => head.saturating_sub(offset),
        Window::Before(seq) => head.min(seq.saturating_sub(1)),
    }
}

/// The window from a cached page, if the page holds all of it. Seqs have
/// no gaps, so the page's last seq is the conversation's head.
fn serve_from(page: &Page, limit: usize, window: Window) -> Option<Vec<Bytes>> {
    let upper = upper_seq(page.last_seq(), window);
    if upper == 0 || limit == 0 {
        return Some(Vec::new());
    }
    let lower = upper.saturating_sub(limit as u64 - 1).max(1);
    if lower < page.first_seq() {
        return None;
    }
    let first = page.first_seq();
    let range = (lower - first) as usize..=(upper - first) as usize;
    Some(
        page.messages
            .range(range)
            .rev()
            .map(|(_, m)| m.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(first: Seq, last: Seq) -> Page {
        Page {
            messages: (first..=last)
                .map(|s| (s, Bytes::from(s.to_string())))
                .collect(),
        }
    }

    fn seqs(v: Option<Vec<Bytes>>) -> Option<Vec<u64>> {
        v.map(|v| {
            v.iter()
                .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
                .collect()
        })
    }

    #[test]
    fn windows_from_a_page() {
        let p = page(1, 10);
        assert_eq!(
            seqs(serve_from(&p, 3, Window::Newest { offset: 0 })),
            Some(vec![10, 9, 8])
        );
        assert_eq!(
            seqs(serve_from(&p, 3, Window::Newest { offset: 8 })),
            Some(vec![2, 1])
        );
        assert_eq!(
            seqs(serve_from(&p, 3, Window::Newest { offset: 10 })),
            Some(vec![])
        );
        assert_eq!(seqs(serve_from(&p, 2, Window::Before(4))), Some(vec![3, 2]));
        assert_eq!(seqs(serve_from(&p, 2, Window::Before(1))), Some(vec![]));
        assert_eq!(
            seqs(serve_from(&p, 5, Window::Before(99))),
            Some(vec![10, 9, 8, 7, 6])
        );
    }

    #[test]
    fn a_page_that_lacks_older_messages_says_so() {
        let p = page(5, 10);
        assert_eq!(serve_from(&p, 10, Window::Newest { offset: 0 }), None);
        assert_eq!(
            seqs(serve_from(&p, 6, Window::Newest { offset: 0 })).map(|v| v.len()),
            Some(6)
        );
        assert_eq!(serve_from(&p, 1, Window::Before(5)), None);
    }
}
