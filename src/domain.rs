//! The things Carrier talks about: ids, sequence numbers, cursors, messages
//! and mailbox events. Wire shapes are the ones in the API contract.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                parse_canonical_uuid(s).map($name)
            }
        }
    };
}

id_type!(
    /// A user, as named by the `sub` claim of its token.
    UserId
);
id_type!(
    /// A conversation: derived from the pair for direct ones, the group's id for groups.
    ConversationId
);
id_type!(
    /// A message, chosen by the sending client; the idempotency key.
    MessageId
);
id_type!(
    /// A group; also its conversation's id.
    GroupId
);

/// The text is not a UUID in its canonical hyphenated form.
#[derive(Debug, PartialEq, Eq)]
pub struct BadId;

/// Accepts only the canonical hyphenated form (any case), as the contract says.
fn parse_canonical_uuid(s: &str) -> Result<Uuid, BadId> {
    if s.len() != 36 {
        return Err(BadId);
    }
    Uuid::try_parse(s).map_err(|_| BadId)
}

/// Fixed namespace for direct conversation ids (a v4 drawn once, never to change).
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_7a2e_93b4_4f0e_8a61_c0a7_1e55_d2b9);

impl ConversationId {
    /// The direct conversation of two users: the same whoever writes first.
    pub fn direct(a: UserId, b: UserId) -> ConversationId {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(lo.0.as_bytes());
        name[16..].copy_from_slice(hi.0.as_bytes());
        ConversationId(Uuid::new_v5(&DIRECT_NAMESPACE, &name))
    }
}

impl GroupId {
    /// Whether this id has the shape of a direct conversation's (UUIDv5).
    /// No group may have one: the two kinds of id must never meet.
    pub fn is_direct_shaped(&self) -> bool {
        self.0.get_version_num() == 5
    }
}

impl From<GroupId> for ConversationId {
    fn from(g: GroupId) -> Self {
        ConversationId(g.0)
    }
}

/// A message's place in its conversation: 1, 2, 3, ... with no gaps.
pub type Seq = u64;

/// A position in a user's mailbox; strictly increasing per user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// A place in a large group's stream (read by its members, not copied to
/// their mailboxes): the message `seq`, or with `sub` > 0 the `sub`-th
/// membership change after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPos {
    pub seq: Seq,
    pub sub: u32,
}

impl StreamPos {
    /// After every change that follows message `seq`.
    pub fn end_of(seq: Seq) -> StreamPos {
        StreamPos { seq, sub: u32::MAX }
    }
}

/// Where a device is in what it receives: its mailbox position and, for
/// each large group it reads, the last place it got there (groups absent
/// start where the user joined). On the wire an opaque string: 16 hex
/// digits, then `.` and 56 more per large group, so clients never do
/// arithmetic on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub mailbox: Position,
    /// Sorted by conversation id, each at most once.
    pub groups: Vec<(ConversationId, StreamPos)>,
}

impl Cursor {
    pub fn at(mailbox: Position) -> Cursor {
        Cursor {
            mailbox,
            groups: Vec::new(),
        }
    }

    pub fn group(&self, conv: ConversationId) -> Option<StreamPos> {
        self.groups
            .binary_search_by_key(&conv, |(c, _)| *c)
            .ok()
            .map(|i| self.groups[i].1)
    }

    pub fn set_group(&mut self, conv: ConversationId, pos: StreamPos) {
        match self.groups.binary_search_by_key(&conv, |(c, _)| *c) {
            Ok(i) => self.groups[i].1 = pos,
            Err(i) => self.groups.insert(i, (conv, pos)),
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.mailbox.0)?;
        for (conv, pos) in &self.groups {
            write!(f, ".{}{:016x}{:08x}", conv.0.simple(), pos.seq, pos.sub)?;
        }
        Ok(())
    }
}

/// The cursor text is not one Carrier issued.
#[derive(Debug, PartialEq, Eq)]
pub struct BadCursor;

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Most large groups one cursor carries; more is not a cursor we issued.
const MAX_CURSOR_GROUPS: usize = 4096;

impl FromStr for Cursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let mut parts = s.split('.');
        let mailbox = parts.next().ok_or(BadCursor)?;
        if mailbox.len() != 16 || !lower_hex(mailbox) {
            return Err(BadCursor);
        }
        let mut cursor = Cursor::at(Position(
            u64::from_str_radix(mailbox, 16).map_err(|_| BadCursor)?,
        ));
        for part in parts {
            if part.len() != 56 || !lower_hex(part) || cursor.groups.len() >= MAX_CURSOR_GROUPS {
                return Err(BadCursor);
            }
            let conv = Uuid::try_parse(&part[..32]).map_err(|_| BadCursor)?;
            let seq = u64::from_str_radix(&part[32..48], 16).map_err(|_| BadCursor)?;
            let sub = u32::from_str_radix(&part[48..], 16).map_err(|_| BadCursor)?;
            let conv = ConversationId(conv);
            // Issued sorted and without repeats.
            if cursor.groups.last().is_some_and(|(last, _)| *last >= conv) {
                return Err(BadCursor);
            }
            cursor.groups.push((conv, StreamPos { seq, sub }));
        }
        Ok(cursor)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A stored message, exactly as every participant receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub seq: Seq,
    pub prev_message_id: Option<MessageId>,
    pub sent_at: i64,
    pub body: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub kind: ReceiptKind,
    pub up_to_seq: Seq,
    pub at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupChange {
    Created,
    Joined,
    Left,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupEvent {
    pub group_id: GroupId,
    pub change: GroupChange,
    pub user_ids: Vec<UserId>,
    pub at: i64,
}

/// One entry of a user's mailbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Message { message: Message },
    Receipt { receipt: Receipt },
    Group { group: GroupEvent },
}

/// `{"type":"message","message":<message>}` around a stored message
/// object, without re-serializing it: the mailbox event and the stream item
/// of a message are byte for byte the same.
pub fn message_event(message: &[u8]) -> bytes::Bytes {
    let mut b = bytes::BytesMut::with_capacity(message.len() + 32);
    b.extend_from_slice(br#"{"type":"message","message":"#);
    b.extend_from_slice(message);
    b.extend_from_slice(b"}");
    b.freeze()
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_ignores_order() {
        let a = UserId(Uuid::from_u128(1));
        let b = UserId(Uuid::from_u128(2));
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, a));
    }

    #[test]
    fn cursor_round_trips_and_rejects_other_text() {
        let c = Cursor::at(Position(0x1234_abcd));
        assert_eq!(c.to_string(), "000000001234abcd");
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c.clone()));
        let mut with_groups = c.clone();
        let (g1, g2) = (
            ConversationId(Uuid::from_u128(0xab)),
            ConversationId(Uuid::from_u128(9)),
        );
        with_groups.set_group(g2, StreamPos { seq: 3, sub: 1 });
        with_groups.set_group(g1, StreamPos { seq: 40, sub: 0 });
        assert_eq!(with_groups.group(g1), Some(StreamPos { seq: 40, sub: 0 }));
        let text = with_groups.to_string();
        assert_eq!(text.len(), 16 + 2 * 57);
        assert_eq!(text.parse::<Cursor>(), Ok(with_groups));
        let g1_part = format!(".{}{:016x}{:08x}", g1.0.simple(), 40, 0);
        for bad in [
            "".to_owned(),
            "12".into(),
            "000000001234ABCD".into(),
            "zz00000000000000".into(),
            "-000000000000001".into(),
            "00000000000000001".into(),
            "000000001234abcd.".into(),
            format!("000000001234abcd{g1_part}{g1_part}"),
            format!("000000001234abcd{}", &g1_part[..50]),
            format!("000000001234abcd{}", g1_part.to_uppercase()),
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(BadCursor), "{bad:?}");
        }
    }

    #[test]
    fn ids_must_be_canonical() {
        assert!(
            "8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10"
                .parse::<UserId>()
                .is_ok()
        );
        assert!(
            "8c1f6b8e6a0b4c649d0a2f5c1b7e9a10"
                .parse::<UserId>()
                .is_err()
        );
        assert!(
            "{8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10}"
                .parse::<UserId>()
                .is_err()
        );
        assert!(
            "urn:uuid:8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10"
                .parse::<UserId>()
                .is_err()
        );
    }

    #[test]
    fn events_have_the_contract_shape() {
        let e = Event::Receipt {
            receipt: Receipt {
                conversation_id: ConversationId(Uuid::nil()),
                user_id: UserId(Uuid::nil()),
                kind: ReceiptKind::Read,
                up_to_seq: 3,
                at: 5,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "receipt");
        assert_eq!(v["receipt"]["kind"], "read");
    }
}
