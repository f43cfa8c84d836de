//! What is under test: a Carrier node (the v1 API) or an Nchan peer
//! (nginx with long-poll subscriber and publisher locations, see
//! config/peers/nchan.conf). This is the one place that knows either
//! protocol; scenarios only see sends, polls, events and cursors.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::Reply;
use crate::oracle::{Seen, body_hash};
use crate::wire::{
    AckMessage, AckReply, Envelope, Event, HistoryReply, PollReply, TargetError, WireEvent,
    WireMessage, loose_poll,
};

/// Which protocol the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Peer {
    /// A Carrier node or cluster (durable, seq-ordered, with history).
    Carrier,
    /// Nchan: channels per user mailbox (or per group for `fanout`);
    /// messages live in nginx's memory; no seq, history or receipts.
    Nchan,
}

/// A virtual user as the target knows it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Uuid,
    /// Bearer token (Carrier only).
    pub token: String,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    Direct(Uuid),
    Group(Uuid),
}

/// What a send's ack says.
#[derive(Debug, PartialEq)]
pub struct Ack {
    pub seq: Option<u64>,
    pub prev: Option<Uuid>,
    /// The whole message object as sent back, to compare a replay against.
    pub message: String,
    pub replayed: bool,
}

/// The protocol of the node(s) under test. Requests carry no `Host`: the
/// connection that sends one sets it to its node (see `client::Conn`).
#[derive(Debug, Clone)]
pub struct Target {
    pub peer: Peer,
    /// Nchan: also publish each direct message to the sender's channel (a
    /// copy for its own devices, as Carrier delivers one).
    pub sender_copy: bool,
}

fn request(
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            b = b.header("content-type", "application/json");
            body
        }
        None => Bytes::new(),
    };
    b.body(Full::new(body))
}

impl Target {
    pub fn new(peer: Peer) -> Target {
        Target {
            peer,
            sender_copy: false,
        }
    }

    /// Whether the sender's own devices get a copy of a direct message.
    pub fn copies_to_sender(&self) -> bool {
        self.peer == Peer::Carrier || self.sender_copy
    }

    /// Whether the target assigns `seq` and keeps history and receipts.
    pub fn ordered(&self) -> bool {
        self.peer == Peer::Carrier
    }

    /// The request that returns a new device's starting cursor, if the
    /// protocol has one (Nchan's first poll starts at the newest message).
    pub fn head(&self, who: &Identity) -> Option<Result<Request<Full<Bytes>>, hyper::http::Error>> {
        match self.peer {
            Peer::Carrier => Some(request(Method::GET, "/v1/poll", Some(&who.token), None)),
            Peer::Nchan => None,
        }
    }

    /// A long poll from `cursor` on `channel` (Nchan; Carrier polls the
    /// token's mailbox).
    pub fn poll(
        &self,
        who: &Identity,
        channel: Uuid,
        cursor: &str,
        timeout_s: u64,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        match self.peer {
            Peer::Carrier => request(
                Method::GET,
                &format!("/v1/poll?cursor={cursor}&timeout={timeout_s}&limit=1000"),
                Some(&who.token),
                None,
            ),
            Peer::Nchan => {
                let mut b = Request::builder()
                    .method(Method::GET)
                    .uri(format!("/sub/{channel}"));
                if let Some((modified, etag)) = cursor.split_once('\n') {
                    b = b
                        .header("if-modified-since", modified)
                        .header("if-none-match", etag);
                }
                b.body(Full::new(Bytes::new()))
            }
        }
    }

    /// The events of a poll's reply and the cursor to poll from next.
    pub fn parse_poll(
        &self,
        reply: &Reply,
        cursor: &str,
    ) -> Result<(Vec<Event>, String), TargetError> {
        match self.peer {
            Peer::Carrier => {
                if reply.status != StatusCode::OK {
                    return Err(TargetError::Status(reply.status));
                }
                match serde_json::from_slice::<PollReply<'_>>(&reply.body) {
                    Ok(poll) => {
                        let events = poll.events.iter().map(wire_event).collect();
                        Ok((events, poll.cursor.into_owned()))
                    }
                    // Something did not fit the types: read it loosely, so
                    // one bad event counts as corrupted instead of failing
                    // every poll from this cursor.
                    Err(_) => loose_poll(&reply.body),
                }
            }
            Peer::Nchan => {
                // 304/408: the long poll timed out; poll again from here.
                if reply.status == StatusCode::NOT_MODIFIED
                    || reply.status == StatusCode::REQUEST_TIMEOUT
                {
                    return Ok((Vec::new(), cursor.to_owned()));
                }
                if reply.status != StatusCode::OK {
                    return Err(TargetError::Status(reply.status));
                }
                let header = |name: &str| {
                    reply
                        .headers
                        .get(name)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let next = format!("{}\n{}", header("last-modified"), header("etag"));
                let event = match serde_json::from_slice::<Envelope<'_>>(&reply.body) {
                    Ok(e) => Event::Message(Seen {
                        message_id: e.message_id,
                        conversation_id: e.conversation_id,
                        seq: None,
                        prev_message_id: None,
                        body_hash: body_hash(e.body.get()),
                    }),
                    Err(_) => Event::Malformed,
                };
                Ok((vec![event], next))
            }
        }
    }

    /// The requests of one send: one for Carrier; for Nchan one publish per
    /// channel that must carry it (the recipient's and the sender's copy for
    /// a direct message, the group's channel for a group).
    pub fn send(
        &self,
        from: &Identity,
        dest: Dest,
        message_id: Uuid,
        conversation_id: Uuid,
        body: &Value,
    ) -> Result<Vec<Request<Full<Bytes>>>, hyper::http::Error> {
        match self.peer {
            Peer::Carrier => {
                let payload = match dest {
                    Dest::Direct(to) => json!({"message_id": message_id, "to": to, "body": body}),
                    Dest::Group(g) => {
                        json!({"message_id": message_id, "group_id": g, "body": body})
                    }
                };
                Ok(vec![request(
                    Method::POST,
                    "/v1/messages",
                    Some(&from.token),
                    Some(Bytes::from(payload.to_string())),
                )?])
            }
            Peer::Nchan => {
                let envelope = Bytes::from(
                    json!({"message_id": message_id, "conversation_id": conversation_id,
                           "sender_id": from.user, "body": body})
                    .to_string(),
                );
                let channels = match dest {
                    Dest::Direct(to) if to != from.user && self.sender_copy => vec![to, from.user],
                    Dest::Direct(to) => vec![to],
                    Dest::Group(g) => vec![g],
                };
                channels
                    .into_iter()
                    .map(|c| {
                        request(
                            Method::POST,
                            &format!("/pub/{c}"),
                            None,
                            Some(envelope.clone()),
                        )
                    })
                    .collect()
            }
        }
    }

    /// The ack in a send's reply.
    pub fn parse_ack(&self, reply: &Reply) -> Result<Ack, TargetError> {
        match self.peer {
            Peer::Carrier => {
                if reply.status != StatusCode::CREATED {
                    return Err(TargetError::Status(reply.status));
                }
                let ack: AckReply<'_> = serde_json::from_slice(&reply.body)
                    .map_err(|e| TargetError::Body(e.to_string()))?;
                let fields: AckMessage = serde_json::from_str(ack.message.get())
                    .map_err(|e| TargetError::Body(e.to_string()))?;
                Ok(Ack {
                    seq: Some(fields.seq),
                    prev: fields.prev_message_id,
                    message: ack.message.get().to_owned(),
                    replayed: reply.headers.get("idempotent-replayed").is_some(),
                })
            }
            Peer::Nchan => {
                if !reply.status.is_success() {
                    return Err(TargetError::Status(reply.status));
                }
                Ok(Ack {
                    seq: None,
                    prev: None,
                    message: String::new(),
                    replayed: false,
                })
            }
        }
    }

    /// A read receipt (Carrier only).
    pub fn read_receipt(
        &self,
        who: &Identity,
        conversation_id: Uuid,
        up_to_seq: u64,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let body =
            json!({"conversation_id": conversation_id, "up_to_seq": up_to_seq, "kind": "read"});
        request(
            Method::POST,
            "/v1/receipts",
            Some(&who.token),
            Some(Bytes::from(body.to_string())),
        )
    }

    /// Creates a group (Carrier only; an Nchan channel needs no creation).
    pub fn create_group(
        &self,
        owner: &Identity,
        group_id: Uuid,
        members: &[Uuid],
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let body = json!({"group_id": group_id, "name": "loadtest", "members": members});
        request(
            Method::POST,
            "/v1/groups",
            Some(&owner.token),
            Some(Bytes::from(body.to_string())),
        )
    }

    /// Adds members to a group (Carrier only).
    pub fn add_members(
        &self,
        owner: &Identity,
        group_id: Uuid,
        members: &[Uuid],
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let body = json!({"add": members});
        request(
            Method::POST,
            &format!("/v1/groups/{group_id}/members"),
            Some(&owner.token),
            Some(Bytes::from(body.to_string())),
        )
    }

    /// One page of a conversation's history, newest first (Carrier only).
    pub fn history(
        &self,
        who: &Identity,
        conversation_id: Uuid,
        before_seq: Option<u64>,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut uri = format!("/v1/conversations/{conversation_id}/messages?limit=500");
        if let Some(s) = before_seq {
            uri.push_str(&format!("&before_seq={s}"));
        }
        request(Method::GET, &uri, Some(&who.token), None)
    }
}

/// A history page's messages as the oracle sees them.
pub fn history_page(reply: &Reply) -> Result<Vec<Seen>, TargetError> {
    if reply.status != StatusCode::OK {
        return Err(TargetError::Status(reply.status));
    }
    let page: HistoryReply<'_> =
        serde_json::from_slice(&reply.body).map_err(|e| TargetError::Body(e.to_string()))?;
    Ok(page.messages.iter().map(WireMessage::seen).collect())
}

fn wire_event(e: &WireEvent<'_>) -> Event {
    match (e.kind.as_ref(), &e.message, &e.receipt) {
        ("message", Some(m), _) => Event::Message(m.seen()),
        ("message", None, _) => Event::Malformed,
        ("receipt", _, Some(r)) if r.kind == "read" => Event::Read {
            conversation_id: r.conversation_id,
            up_to_seq: r.up_to_seq,
        },
        _ => Event::Other,
    }
}
