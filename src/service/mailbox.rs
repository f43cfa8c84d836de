//! Reading a user's mailbox: the tail from the cache when it covers the
//! cursor, else the store.

use std::ops::Bound;

use super::cache::StoredEvent;
use super::{Error, Result, Service};
use crate::domain::{Position, UserId};
use crate::store::{Scan, Table, keys};

/// Events after a cursor, oldest first, and the cursor that follows them.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<StoredEvent>,
    pub cursor: Position,
}

impl Service {
    /// The position of the newest event (0 for an empty mailbox).
    ///
    /// A miss is remembered as an empty tail at that head (as `read_after`
    /// does when it finds nothing): a device's first poll takes the head,
    /// and its next poll, from that head, is then served from the cache
    /// instead of two more scans of the store.
    pub(crate) async fn head(&self, user: UserId) -> Result<Position> {
        if let Some(tail) = self.inner.mailbox_cache.get(&user) {
            return Ok(Position(tail.head()));
        }
        // Taken before the store is read (see `remember_empty`).
        let removals = self.inner.mailbox_cache.removals(&user);
        let (head, complete) = self.stored_head(user).await?;
        if complete {
            self.inner
                .mailbox_cache
                .remember_empty(user, head.0, removals);
        }
        Ok(head)
    }

    /// The newest complete position the store holds, which may be ahead of
    /// the cache, and whether it is the newest row there at all (false:
    /// one of this node's batches is landing above it).
    async fn stored_head(&self, user: UserId) -> Result<(Position, bool)> {
        let watermark = &self.inner.watermark;
        let newest = self
            .scan(Scan::prefix(Table::Mailboxes, user.0.as_bytes(), 1).rev())
            .await?
            .first()
            .and_then(|(row, _)| keys::trailing_u64(row));
        match newest {
            Some(p) if watermark.visible(p) => Ok((Position(p), true)),
            None => Ok((Position(0), true)),
            // One of this node's batches is landing: the head below it.
            Some(_) => {
                let mut scan = Scan::prefix(Table::Mailboxes, user.0.as_bytes(), 1).rev();
                scan.end = Bound::Included(keys::id_u64(user.0, watermark.get()));
                let newest = self.scan(scan).await?;
                let head = newest
                    .first()
                    .and_then(|(row, _)| keys::trailing_u64(row))
                    .unwrap_or(0);
                Ok((Position(head), false))
            }
        }
    }

    /// Up to `limit` events after `cursor`. A cursor ahead of the mailbox
    /// is refused: it was not issued for this user.
    pub(crate) async fn read_after(
        &self,
        user: UserId,
        cursor: Position,
        limit: usize,
    ) -> Result<Batch> {
        let metrics = &self.inner.metrics;
        // A cursor above the tail's head falls through to the store: the
        // committer makes a batch visible there a moment before it updates
        // the cache, and a reader may already hold a cursor from that window.
        if let Some(tail) = self.inner.mailbox_cache.get(&user)
            && cursor.0 >= tail.known_from
            && cursor.0 <= tail.head()
        {
            metrics.cache_hits.with_label_values(&["mailbox"]).inc();
            let events: Vec<StoredEvent> = tail
                .events
                .iter()
                .filter(|e| e.position > cursor.0)
                .take(limit)
                .cloned()
                .collect();
            let next = events.last().map_or(cursor, |e| Position(e.position));
            return Ok(Batch {
                events,
                cursor: next,
            });
        }
        metrics.cache_misses.with_label_values(&["mailbox"]).inc();
        // Taken before the store is read (see `remember_empty`).
        let removals = self.inner.mailbox_cache.removals(&user);

        let mut scan = Scan::prefix(Table::Mailboxes, user.0.as_bytes(), limit);
        scan.start = Bound::Excluded(keys::id_u64(user.0, cursor.0));
        let mut rows = self.scan(scan).await?;
        let found = !rows.is_empty();
        // Checked after the scan: rows it allows belong to batches that had
        // fully landed when the scan ran. Stop at the first it does not.
        let watermark = &self.inner.watermark;
        if let Some(cut) = rows
            .iter()
            .position(|(row, _)| keys::trailing_u64(row).is_none_or(|p| !watermark.visible(p)))
        {
            rows.truncate(cut);
        }
        if rows.is_empty() {
            let (head, _) = self.stored_head(user).await?;
            if cursor > head {
                return Err(Error::InvalidCursor);
            }
            // Only when the store held nothing after the cursor at all: a
            // row hidden because it was still landing must not be hidden
            // for good by the cache.
            if cursor == head && !found {
                self.inner
                    .mailbox_cache
                    .remember_empty(user, head.0, removals);
            }
            return Ok(Batch {
                events: Vec::new(),
                cursor,
            });
        }
        let mut events = Vec::with_capacity(rows.len());
        for (row, json) in rows {
            let position = keys::trailing_u64(&row)
                .ok_or_else(|| Error::Internal("short mailbox key".into()))?;
            events.push(StoredEvent {
                position,
                json,
                durable_at: None,
            });
        }
        let next = events.last().map_or(cursor, |e| Position(e.position));
        Ok(Batch {
            events,
            cursor: next,
        })
    }
}
