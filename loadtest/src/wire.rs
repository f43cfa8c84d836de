//! The JSON the targets answer with, parsed into borrowed types: message
//! bodies stay raw text (hashed as they came), nothing is built into a
//! `serde_json::Value`. The tool shares the cores with the server it
//! measures, so its per-event cost matters.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::oracle::{Seen, body_hash};

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
