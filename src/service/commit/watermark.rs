//! How far this node's batches have landed, so readers skip rows of a
//! batch still being written.

use std::sync::atomic::{AtomicU64, Ordering};

/// The newest position (mailbox row or outbox id) of a batch that has fully
/// landed. On HBase a batch's rows become readable one by one while it is
/// written, and a failed batch lands later, when it is rolled forward
/// (store/hbase/intents.rs); readers ignore this node's rows above the
/// watermark, so they never see a later position before an earlier one.
///
/// It also knows the newest position this node's clock has issued. On a
/// ring, a mailbox this node took over may hold rows another node wrote at
/// positions above both (that node's clock ran ahead, as a restarted
/// node's does): those are complete, and are read at once.
#[derive(Debug)]
pub struct Watermark {
    complete: AtomicU64,
    issued: AtomicU64,
}

impl Watermark {
    /// Everything at or below `position` (the clock's lease at start) is
    /// already complete in the store.
    pub fn new(position: u64) -> Watermark {
        Watermark {
            complete: AtomicU64::new(position),
            issued: AtomicU64::new(position),
        }
    }

    pub fn get(&self) -> u64 {
        self.complete.load(Ordering::Acquire)
    }

    /// Whether a reader may see the row at `position`: not one of this
    /// node's batches still being written.
    pub fn visible(&self, position: u64) -> bool {
        position <= self.get() || position > self.issued.load(Ordering::Acquire)
    }

    /// Before a batch with positions up to `position` is written.
    pub(super) fn issue(&self, position: u64) {
        self.issued.fetch_max(position, Ordering::AcqRel);
    }

    pub(super) fn raise(&self, position: u64) {
        self.complete.fetch_max(position, Ordering::AcqRel);
    }
}
