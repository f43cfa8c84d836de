//! The stream's row formats: change rows (`group_changes`), reader rows
//! (`group_readers`), and the body of a wake between nodes.

use bytes::Bytes;

use crate::domain::{ConversationId, StreamPos};
use crate::store::keys;

/// The key of a change row.
pub fn change_row(g: ConversationId, pos: StreamPos) -> Vec<u8> {
    let mut row = keys::id_u64(g.0, pos.seq);
    row.extend_from_slice(&pos.sub.to_be_bytes());
    row
}

/// The place a change row's key names.
pub fn change_pos(row: &[u8]) -> Option<StreamPos> {
    read_pos(row.get(16..)?)
}

fn put_pos(out: &mut Vec<u8>, pos: StreamPos) {
    out.extend_from_slice(&pos.seq.to_be_bytes());
    out.extend_from_slice(&pos.sub.to_be_bytes());
}

fn read_pos(b: &[u8]) -> Option<StreamPos> {
    Some(StreamPos {
        seq: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
        sub: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
    })
}

/// A reader row's value: `after`, then `until` once the user left.
pub fn reader_value(after: StreamPos, until: Option<StreamPos>) -> Bytes {
    let mut out = Vec::with_capacity(24);
    put_pos(&mut out, after);
    if let Some(until) = until {
        put_pos(&mut out, until);
    }
    Bytes::from(out)
}

pub fn parse_reader_value(b: &[u8]) -> Option<(StreamPos, Option<StreamPos>)> {
    let after = read_pos(b)?;
    let until = match b.len() {
        12 => None,
        24 => Some(read_pos(&b[12..])?),
        _ => return None,
    };
    Some((after, until))
}

/// A wake body: the conversation (16 bytes), then seq (8) and sub (4).
pub fn wake_body(g: ConversationId, pos: StreamPos) -> Bytes {
    let mut body = Vec::with_capacity(28);
    body.extend_from_slice(g.0.as_bytes());
    put_pos(&mut body, pos);
    Bytes::from(body)
}

pub fn parse_wake(body: &[u8]) -> Option<(ConversationId, StreamPos)> {
    if body.len() != 28 {
        return None;
    }
    let g = uuid::Uuid::from_slice(&body[..16]).ok()?;
    Some((ConversationId(g), read_pos(&body[16..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64, sub: u32) -> StreamPos {
        StreamPos { seq, sub }
    }

    #[test]
    fn reader_rows_round_trip() {
        let v = reader_value(pos(7, 1), None);
        assert_eq!(parse_reader_value(&v), Some((pos(7, 1), None)));
        let v = reader_value(pos(7, 1), Some(pos(9, 2)));
        assert_eq!(parse_reader_value(&v), Some((pos(7, 1), Some(pos(9, 2)))));
        assert_eq!(parse_reader_value(b"short"), None);
    }
}
