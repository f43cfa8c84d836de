//! The outbox's row format, written by the committer and read by the
//! worker: one owner, one parser.
//!
//! Key `node key(8) || id(8)` (the id is a clock position, so a node's
//! entries sort oldest first); cell `user(16) || event JSON`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::UserId;
use crate::store::keys;

/// The outbox row key of this node's entry `id`.
pub fn outbox_row(node_key: [u8; 8], id: u64) -> Vec<u8> {
    let mut row = Vec::with_capacity(16);
    row.extend_from_slice(&node_key);
    row.extend_from_slice(&id.to_be_bytes());
    row
}

/// The entry id an outbox row key names.
pub fn entry_id(row: &[u8]) -> Option<u64> {
    keys::trailing_u64(row)
}

/// The outbox cell: `user(16) || event JSON`.
pub fn outbox_cell(user: UserId, event: &[u8]) -> Bytes {
    let mut cell = BytesMut::with_capacity(16 + event.len());
    cell.put_slice(user.0.as_bytes());
    cell.put_slice(event);
    cell.freeze()
}

/// The mailbox an outbox cell is for; `None` if the cell is malformed.
pub fn cell_user(cell: &[u8]) -> Option<UserId> {
    let (user, _) = cell.split_first_chunk::<16>()?;
    Some(UserId(uuid::Uuid::from_bytes(*user)))
}

/// The mailbox and the event of an outbox cell.
pub fn parse_cell(cell: &Bytes) -> Option<(UserId, Bytes)> {
    Some((cell_user(cell)?, cell.slice(16..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_rows_round_trip() {
        let user = UserId(uuid::Uuid::from_u128(7));
        let cell = outbox_cell(user, b"{}");
        assert_eq!(parse_cell(&cell), Some((user, Bytes::from_static(b"{}"))));
        assert_eq!(cell_user(b"short"), None);
        assert_eq!(entry_id(&outbox_row([3; 8], 99)), Some(99));
    }
}
