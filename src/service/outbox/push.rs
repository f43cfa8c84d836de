//! The body of a push of outbox entries to the node owning their
//! mailboxes (`/internal/v1/appends`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::UserId;

/// One pushed entry: which outbox entry it is (so a repeat is recognised),
/// and what to append.
#[derive(Debug)]
pub struct Pushed {
    /// The outbox's node key and the entry's id.
    pub entry: ([u8; 8], u64),
    pub user: UserId,
    pub event: Bytes,
}

/// A push body: per entry, `len(u32) || outbox node key(8) || id(8) ||
/// cell`, the cell being `user(16) || event`, numbers big-endian.
pub fn encode<'a>(entries: impl Iterator<Item = ([u8; 8], u64, &'a [u8])>) -> Bytes {
    let mut body = BytesMut::new();
    for (node, id, cell) in entries {
        body.put_u32((16 + cell.len()) as u32);
        body.put_slice(&node);
        body.put_u64(id);
        body.put_slice(cell);
    }
    body.freeze()
}

/// The entries of a push body; `None` if it is malformed.
pub fn decode(body: &Bytes) -> Option<Vec<Pushed>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let len = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let frame = body.get(at..at.checked_add(len)?)?;
        let (node, rest) = frame.split_first_chunk::<8>()?;
        let (id, rest) = rest.split_first_chunk::<8>()?;
        let (user, _) = rest.split_first_chunk::<16>()?;
        entries.push(Pushed {
            entry: (*node, u64::from_be_bytes(*id)),
            user: UserId(uuid::Uuid::from_bytes(*user)),
            event: body.slice(at + 32..at + len),
        });
        at += len;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::outbox::row::outbox_cell;

    #[test]
    fn push_bodies_round_trip_and_reject_truncation() {
        let a = outbox_cell(UserId(uuid::Uuid::from_u128(1)), br#"{"type":"x"}"#);
        let b = outbox_cell(UserId(uuid::Uuid::from_u128(2)), b"{}");
        let body = encode([([1; 8], 7, a.as_ref()), ([2; 8], 9, b.as_ref())].into_iter());
        let entries = decode(&body).expect("well formed");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].user, UserId(uuid::Uuid::from_u128(1)));
        assert_eq!(entries[0].entry, ([1; 8], 7));
        assert_eq!(&entries[0].event[..], br#"{"type":"x"}"#);
        assert_eq!(entries[1].entry, ([2; 8], 9));
        assert_eq!(&entries[1].event[..], b"{}");
        for cut in 1..body.len() {
            if cut == 4 + 16 + a.len() {
                continue;
            }
            assert!(decode(&body.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(decode(&Bytes::from_static(&[0, 0, 0, 3, 1, 2, 3])).is_none());
    }
}
