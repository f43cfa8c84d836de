//! The JSON the targets answer with, parsed into borrowed types: message
//! bodies stay raw text (hashed as they came), nothing is built into a
//! `serde_json::Value`. The tool shares the cores with the server it
//! measures, so its per-event cost matters.
//!
//! What it yields is here too, so [`crate::target`] builds on this module
//! and not the other way round: the [`Event`]s a poll returned and the
//! [`TargetError`] of a response that could not be used.

use std::borrow::Cow;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::oracle::{Seen, body_hash};

/// Why a response could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("status {0}")]
    Status(StatusCode),
    #[error("unexpected body: {0}")]
    Body(String),
}

/// One event a poll returned, in the terms the oracle uses.
#[derive(Debug)]
pub enum Event {
    Message(Seen),
    Read {
        conversation_id: Uuid,
        up_to_seq: u64,
    },
    /// A message event the oracle cannot read (counted as corrupted).
    Malformed,
    Other,
}

/// `GET /v1/poll`'s answer.
#[derive(Deserialize)]
pub struct PollReply<'a> {
    #[serde(borrow, default)]
    pub events: Vec<WireEvent<'a>>,
    #[serde(borrow)]
    pub cursor: Cow<'a, str>,
}

#[derive(Deserialize)]
pub struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub message: Option<WireMessage<'a>>,
    #[serde(default)]
    pub receipt: Option<WireReceipt>,
}

#[derive(Deserialize)]
pub struct WireMessage<'a> {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub prev_message_id: Option<Uuid>,
    #[serde(borrow)]
    pub body: &'a RawValue,
}

impl WireMessage<'_> {
    pub fn seen(&self) -> Seen {
        Seen {
            message_id: self.message_id,
            conversation_id: self.conversation_id,
            seq: self.seq,
            prev_message_id: self.prev_message_id,
            body_hash: body_hash(self.body.get()),
        }
    }
}

#[derive(Deserialize)]
pub struct WireReceipt {
    pub conversation_id: Uuid,
    pub up_to_seq: u64,
    pub kind: String,
}

/// `POST /v1/messages`' answer: the message kept raw (a replay must match
/// it byte for byte) and the two fields the oracle needs.
#[derive(Deserialize)]
pub struct AckReply<'a> {
    #[serde(borrow)]
    pub message: &'a RawValue,
}

#[derive(Deserialize)]
pub struct AckMessage {
    pub seq: u64,
    #[serde(default)]
    pub prev_message_id: Option<Uuid>,
}

/// A history page.
#[derive(Deserialize)]
pub struct HistoryReply<'a> {
    #[serde(borrow)]
    pub messages: Vec<WireMessage<'a>>,
}

/// What the load tester publishes to an Nchan channel.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    #[serde(borrow)]
    pub body: &'a RawValue,
}

fn uuid_of(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// The slow path of a poll answer that did not fit [`PollReply`].
pub fn loose_poll(body: &[u8]) -> Result<(Vec<Event>, String), TargetError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TargetError::Body(e.to_string()))?;
    let next = v["cursor"]
        .as_str()
        .ok_or_else(|| TargetError::Body("no cursor".into()))?
        .to_owned();
    let events = match v["events"].as_array() {
        Some(events) => events.iter().map(carrier_event).collect(),
        None => Vec::new(),
    };
    Ok((events, next))
}

fn carrier_message(m: &Value) -> Option<Seen> {
    Some(Seen {
        message_id: uuid_of(&m["message_id"])?,
        conversation_id: uuid_of(&m["conversation_id"])?,
        seq: m["seq"].as_u64(),
        prev_message_id: uuid_of(&m["prev_message_id"]),
        body_hash: body_hash(&m["body"].to_string()),
    })
}

fn carrier_event(e: &Value) -> Event {
    match e["type"].as_str() {
        Some("message") => match carrier_message(&e["message"]) {
            Some(seen) => Event::Message(seen),
            None => Event::Malformed,
        },
        Some("receipt") if e["receipt"]["kind"] == "read" => {
            match (
                uuid_of(&e["receipt"]["conversation_id"]),
                e["receipt"]["up_to_seq"].as_u64(),
            ) {
                (Some(conversation_id), Some(up_to_seq)) => Event::Read {
                    conversation_id,
                    up_to_seq,
                },
                _ => Event::Other,
            }
        }
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_reply_parses_into_events_with_raw_body_hashes() {
        let body = serde_json::json!({"i": 3, "from": 1, "pad": "xx"});
        let text = format!(
            r#"{{"events":[{{"type":"message","message":{{"message_id":"{a}","conversation_id":"{c}","sender_id":"{a}","seq":2,"prev_message_id":"{a}","sent_at":1,"body":{body}}}}},
               {{"type":"receipt","receipt":{{"conversation_id":"{c}","user_id":"{a}","kind":"read","up_to_seq":2,"at":1}}}},
               {{"type":"group","group":{{"group_id":"{c}","change":"created","user_ids":[],"at":1}}}}],
               "cursor":"42","timed_out":false}}"#,
            a = Uuid::from_u128(1),
            c = Uuid::from_u128(2),
        );
        let poll: PollReply<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(poll.cursor, "42");
        let seen = poll.events[0].message.as_ref().unwrap().seen();
        assert_eq!(seen.seq, Some(2));
        // The hash of the body as the server wrote it is the hash of the
        // body as the sender wrote it.
        assert_eq!(seen.body_hash, body_hash(&body.to_string()));
        assert_eq!(poll.events[1].receipt.as_ref().unwrap().up_to_seq, 2);
        // A message event the types do not fit is read loosely and marked.
        let bad = br#"{"events":[{"type":"message","message":{"seq":"x"}}],"cursor":"7"}"#;
        let (events, cursor) = loose_poll(bad).unwrap();
        assert_eq!(cursor, "7");
        assert!(matches!(events[0], Event::Malformed));
    }
}
