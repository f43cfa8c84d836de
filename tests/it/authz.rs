//! Authorization as a property (security review, issue 14): random
//! sequences of direct and group sends, group creations, member changes,
//! history reads, receipts and polls by a handful of users, each step
//! checked against a model of who takes part in which conversation at which
//! seq. Nobody learns of a conversation or group it is not in, and nothing
//! refused changes anything.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use carrier::domain::ConversationId;
use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Node, Reply, User};

/// Users in each case (fresh ones every case, so cases stay apart).
const USERS: usize = 5;

/// A conversation or group an operation aims at, by index into the case.
#[derive(Clone, Debug)]
enum Target {
    /// The direct conversation of two users (maybe the same one twice).
    Direct(usize, usize),
    /// The k-th group created in this case (modulo their number).
    Group(usize),
    /// The k-th conversation of this case to get a message (modulo).
    Busy(usize),
    /// An id nobody ever used.
    Unknown,
}

/// The `group_id` of a group creation.
#[derive(Clone, Debug)]
enum NewId {
    None,
    FreshV4,
    /// The direct conversation id of two users: always refused.
    DirectOf(usize, usize),
    /// The id of a group of this case (modulo their number).
    Existing(usize),
}

#[derive(Clone, Debug)]
enum Actor {
    /// The owner of the targeted group (user 0 when it is no group).
    Owner,
    User(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: usize,
        to: usize,
    },
    CreateGroup {
        by: usize,
        id: NewId,
        members: Vec<usize>,
    },
    Members {
        by: Actor,
        group: Target,
        add: Vec<usize>,
        remove: Vec<usize>,
    },
    Leave {
        by: usize,
        group: Target,
    },
    GroupSend {
        from: usize,
        group: Target,
    },
    History {
        by: usize,
        conv: Target,
    },
    Receipt {
        by: usize,
        conv: Target,
        read: bool,
        seq: u8,
    },
    Poll {
        by: usize,
    },
}

fn user() -> impl Strategy<Value = usize> {
    0..USERS
}

fn users() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::btree_set(user(), 0..=2).prop_map(|s| s.into_iter().collect())
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => (0..4usize).prop_map(Target::Group),
        3 => (0..6usize).prop_map(Target::Busy),
        3 => (user(), user()).prop_map(|(a, b)| Target::Direct(a, b)),
        1 => Just(Target::Unknown),
    ]
}

/// A case: a group or two to begin with, then anything.
fn ops() -> impl Strategy<Value = Vec<Option<Op>>> {
    let create =
        (user(), prop::collection::btree_set(user(), 1..=3)).prop_map(|(by, m)| Op::CreateGroup {
            by,
            id: NewId::None,
            members: m.into_iter().collect(),
        });
    (
        prop::collection::vec(create, 1..=2),
        // Steps shrink to `None` (skipped), so a failure shrinks to the
        // few steps it needs.
        prop::collection::vec(prop::option::weighted(0.95, op()), 10..=23),
    )
        .prop_map(|(first, then)| first.into_iter().map(Some).chain(then).collect())
}

fn op() -> impl Strategy<Value = Op> {
    let new_id = prop_oneof![
        2 => Just(NewId::None),
        2 => Just(NewId::FreshV4),
        1 => (user(), user()).prop_map(|(a, b)| NewId::DirectOf(a, b)),
        1 => (0..4usize).prop_map(NewId::Existing),
    ];
    let actor = prop_oneof![Just(Actor::Owner), user().prop_map(Actor::User)];
    prop_oneof![
        3 => (user(), user()).prop_map(|(from, to)| Op::Send { from, to }),
        2 => (user(), new_id, users())
            .prop_map(|(by, id, members)| Op::CreateGroup { by, id, members }),
        4 => (actor, target(), users(), users())
            .prop_map(|(by, group, add, remove)| Op::Members { by, group, add, remove }),
        2 => (user(), target()).prop_map(|(by, group)| Op::Leave { by, group }),
        4 => (user(), target()).prop_map(|(from, group)| Op::GroupSend { from, group }),
        3 => (user(), target()).prop_map(|(by, conv)| Op::History { by, conv }),
        3 => (user(), target(), any::<bool>(), any::<u8>())
            .prop_map(|(by, conv, read, seq)| Op::Receipt { by, conv, read, seq }),
        3 => user().prop_map(|by| Op::Poll { by }),
    ]
}

/// A message as the model knows it; its seq is its place in the list.
struct Msg {
    message_id: Uuid,
    sender: usize,
    /// Who took part in the conversation at this message's seq.
    recipients: BTreeSet<usize>,
}

struct Group {
    id: Uuid,
    owner: usize,
    name: String,
    members: BTreeSet<usize>,
    /// Former members: the seq at their (last) removal.
    left_at: HashMap<usize, u64>,
}

/// A group event: the group, the change, the users it names.
type ChangeKey = (Uuid, String, BTreeSet<usize>);
/// A receipt event: the conversation, who, the kind, up to which seq.
type ReceiptKey = (Uuid, usize, String, u64);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    Member,
    /// Removed from the group after this seq.
    Former(u64),
    Outsider,
}

#[derive(Clone, Copy, Debug)]
enum Resolved {
    Direct(usize, usize),
    Group(usize),
    Unknown,
}

/// One case: its users and the model of the truth.
struct Case<'a> {
    node: &'a Node,
    users: Vec<User>,
    index: HashMap<Uuid, usize>,
    cursors: Vec<String>,
    /// Every conversation with messages (and every group's), by id.
    convs: HashMap<Uuid, Vec<Msg>>,
    groups: Vec<Group>,
    /// Conversations in the order they got their first message.
    busy: Vec<(Uuid, Resolved)>,
    /// Group events that may be seen, and by whom.
    changes: HashMap<ChangeKey, BTreeSet<usize>>,
    /// Receipt events that may be seen, and by whom.
    receipts: HashMap<ReceiptKey, BTreeSet<usize>>,
    got_messages: Vec<BTreeSet<Uuid>>,
    got_changes: Vec<BTreeSet<ChangeKey>>,
    unknown: Uuid,
    log: String,
}

type Checked = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Checked {
    if ok { Ok(()) } else { Err(what()) }
}

fn uuid_of(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

fn refused(r: &Reply) -> bool {
    matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
}

impl<'a> Case<'a> {
    async fn new(node: &'a Node) -> Case<'a> {
        let users: Vec<User> = (0..USERS).map(|_| node.user()).collect();
        let mut cursors = Vec::new();
        for u in &users {
            cursors.push(node.head(u).await);
        }
        let mut log = String::from("users:");
        for (i, u) in users.iter().enumerate() {
            let _ = write!(log, " u{i}={}", u.id.0);
        }
        log.push('\n');
        Case {
            node,
            index: users.iter().enumerate().map(|(i, u)| (u.id.0, i)).collect(),
            users,
            cursors,
            convs: HashMap::new(),
            groups: Vec::new(),
            busy: Vec::new(),
            changes: HashMap::new(),
            receipts: HashMap::new(),
            got_messages: vec![BTreeSet::new(); USERS],
            got_changes: vec![BTreeSet::new(); USERS],
            unknown: Uuid::new_v4(),
            log,
        }
    }

    fn id(&self, u: usize) -> Uuid {
        self.users[u].id.0
    }

    fn direct(&self, a: usize, b: usize) -> Uuid {
        ConversationId::direct(self.users[a].id, self.users[b].id).0
    }

    fn resolve(&self, t: &Target) -> (Uuid, Resolved) {
        match *t {
            Target::Direct(a, b) => (self.direct(a, b), Resolved::Direct(a, b)),
            Target::Group(_) if self.groups.is_empty() => (self.unknown, Resolved::Unknown),
            Target::Group(k) => {
                let g = k % self.groups.len();
                (self.groups[g].id, Resolved::Group(g))
            }
            Target::Busy(_) if self.busy.is_empty() => (self.unknown, Resolved::Unknown),
            Target::Busy(k) => self.busy[k % self.busy.len()],
            Target::Unknown => (self.unknown, Resolved::Unknown),
        }
    }

    fn access(&self, u: usize, r: Resolved) -> Access {
        match r {
            Resolved::Direct(a, b) if u == a || u == b => Access::Member,
            Resolved::Group(g) if self.groups[g].members.contains(&u) => Access::Member,
            Resolved::Group(g) => match self.groups[g].left_at.get(&u) {
                Some(seq) => Access::Former(*seq),
                None => Access::Outsider,
            },
            _ => Access::Outsider,
        }
    }

    fn head(&self, conv: Uuid) -> u64 {
        self.convs.get(&conv).map_or(0, |m| m.len() as u64)
    }

    fn users_of(&self, v: &Value) -> Option<BTreeSet<usize>> {
        v.as_array()?
            .iter()
            .map(|u| uuid_of(u).and_then(|u| self.index.get(&u).copied()))
            .collect()
    }

    /// A message object is the one the model holds at its seq, in that
    /// conversation, and `u` took part at that seq.
    fn check_message_event(&mut self, u: usize, m: &Value) -> Checked {
        let conv = uuid_of(&m["conversation_id"]);
        let seq = m["seq"].as_u64().unwrap_or(0);
        let known = conv
            .and_then(|c| self.convs.get(&c))
            .and_then(|msgs| msgs.get((seq as usize).wrapping_sub(1)));
        let Some(msg) = known else {
            return Err(format!("u{u} received a message the model never saw: {m}"));
        };
        ensure(msg.recipients.contains(&u), || {
            format!(
                "u{u} received a message of a conversation it was not in at seq {seq} \
                 (participants then: {:?}): {m}",
                msg.recipients
            )
        })?;
        ensure(
            uuid_of(&m["message_id"]) == Some(msg.message_id)
                && m["sender_id"] == json!(self.id(msg.sender)),
            || format!("u{u} received another message at that seq than was sent: {m}"),
        )?;
        self.got_messages[u].insert(msg.message_id);
        Ok(())
    }

    fn check_event(&mut self, u: usize, e: &Value) -> Checked {
        match e["type"].as_str() {
            Some("message") => self.check_message_event(u, &e["message"]),
            Some("group") => {
                let g = &e["group"];
                let key = (
                    uuid_of(&g["group_id"]).unwrap_or_default(),
                    g["change"].as_str().unwrap_or("").to_owned(),
                    self.users_of(&g["user_ids"]).unwrap_or_default(),
                );
                let allowed = self.changes.get(&key);
                ensure(allowed.is_some_and(|a| a.contains(&u)), || {
                    format!(
                        "u{u} received a group event it should not have (allowed: {allowed:?}): {e}"
                    )
                })?;
                self.got_changes[u].insert(key);
                Ok(())
            }
            Some("receipt") => {
                let r = &e["receipt"];
                let by = uuid_of(&r["user_id"]).and_then(|v| self.index.get(&v).copied());
                let key = (
                    uuid_of(&r["conversation_id"]).unwrap_or_default(),
                    by.unwrap_or(usize::MAX),
                    r["kind"].as_str().unwrap_or("").to_owned(),
                    r["up_to_seq"].as_u64().unwrap_or(0),
                );
                let allowed = self.receipts.get(&key);
                ensure(allowed.is_some_and(|a| a.contains(&u)), || {
                    format!(
                        "u{u} received a receipt it should not have (allowed: {allowed:?}): {e}"
                    )
                })
            }
            _ => Err(format!("u{u} received an unexpected event: {e}")),
        }
    }

    /// Polls `u`'s mailbox from its cursor until nothing is left, checking
    /// every event.
    async fn poll(&mut self, u: usize) -> Result<usize, String> {
        let mut n = 0;
        loop {
            let path = format!("/v1/poll?cursor={}&timeout=0", self.cursors[u]);
            let r = self.node.get(&path, Some(&self.users[u].token)).await;
            ensure(r.status == StatusCode::OK, || format!("u{u}'s poll: {r:?}"))?;
            let events = r.body["events"].as_array().cloned().unwrap_or_default();
            self.cursors[u] = r.body["cursor"].as_str().unwrap_or_default().to_owned();
            if events.is_empty() {
                return Ok(n);
            }
            n += events.len();
            for e in &events {
                self.check_event(u, e)?;
            }
        }
    }

    fn check_sent(&self, r: &Reply, mid: Uuid, from: usize, conv: Uuid) -> Checked {
        let m = &r.body["message"];
        ensure(r.status == StatusCode::CREATED, || {
            format!("a send u{from} may make was refused: {r:?}")
        })?;
        ensure(
            uuid_of(&m["message_id"]) == Some(mid)
                && m["sender_id"] == json!(self.id(from))
                && uuid_of(&m["conversation_id"]) == Some(conv)
                && m["seq"].as_u64() == Some(self.head(conv) + 1),
            || {
                format!(
                    "u{from}'s message is not as sent, or not in {conv} at seq {}: {m}",
                    self.head(conv) + 1
                )
            },
        )
    }

    async fn step(&mut self, op: &Op) -> Result<String, String> {
        let node = self.node;
        match op {
            Op::Send { from, to } => {
                let (from, to) = (*from, *to);
                let conv = self.direct(from, to);
                let mid = Uuid::new_v4();
                let r = node
                    .post(
                        "/v1/messages",
                        &self.users[from].token,
                        json!({"message_id": mid, "to": self.id(to), "body": {"n": self.head(conv)}}),
                    )
                    .await;
                self.check_sent(&r, mid, from, conv)?;
                if self.head(conv) == 0 {
                    self.busy.push((conv, Resolved::Direct(from, to)));
                }
                self.convs.entry(conv).or_default().push(Msg {
                    message_id: mid,
                    sender: from,
                    recipients: [from, to].into(),
                });
                Ok(format!("{} seq {}", r.status, self.head(conv)))
            }
            Op::CreateGroup { by, id, members } => {
                let by = *by;
                let mut all: BTreeSet<usize> = members.iter().copied().collect();
                all.insert(by);
                let mut name = format!("g-{}", Uuid::new_v4().simple());
                let mut body = json!({
                    "name": name,
                    "members": members.iter().map(|m| self.id(*m)).collect::<Vec<_>>(),
                });
                let mut asked = None;
                let existing = match id {
                    NewId::None => None,
                    NewId::FreshV4 => {
                        let g = Uuid::new_v4();
                        body["group_id"] = json!(g);
                        asked = Some(g);
                        None
                    }
                    NewId::DirectOf(a, b) => {
                        body["group_id"] = json!(self.direct(*a, *b));
                        let r = node.post("/v1/groups", &self.users[by].token, body).await;
                        ensure(r.status == StatusCode::BAD_REQUEST, || {
                            format!("a group took a direct conversation's id: {r:?}")
                        })?;
                        return Ok(format!("{} refused", r.status));
                    }
                    NewId::Existing(_) if self.groups.is_empty() => {
                        return Ok("skipped: no group yet".into());
                    }
                    NewId::Existing(k) => {
                        let g = &self.groups[k % self.groups.len()];
                        body["group_id"] = json!(g.id);
                        if g.owner == by {
                            // The owner again, with the same name: at most
                            // an idempotent replay, which changes nothing.
                            name.clone_from(&g.name);
                            body["name"] = json!(name);
                        }
                        Some(g.owner)
                    }
                };
                let r = node.post("/v1/groups", &self.users[by].token, body).await;
                if let Some(owner) = existing {
                    let ok = r.status == StatusCode::CONFLICT
                        || (owner == by && r.status == StatusCode::CREATED);
                    ensure(ok, || {
                        format!("a group was created over an existing one: {r:?}")
                    })?;
                    return Ok(format!("{} (existing)", r.status));
                }
                ensure(r.status == StatusCode::CREATED, || {
                    format!("a group creation was refused: {r:?}")
                })?;
                let group = &r.body["group"];
                let g = uuid_of(&group["group_id"]).unwrap_or_default();
                ensure(
                    g.get_version_num() != 5
                        && !self.convs.contains_key(&g)
                        && group["owner_id"] == json!(self.id(by))
                        && group["member_count"] == all.len(),
                    || format!("not the group asked for: {r:?}"),
                )?;
                ensure(asked.is_none_or(|a| a == g), || {
                    format!("another group id than asked: {r:?}")
                })?;
                self.changes
                    .entry((g, "created".into(), all.clone()))
                    .or_default()
                    .extend(all.iter().copied());
                self.convs.insert(g, Vec::new());
                self.groups.push(Group {
                    id: g,
                    owner: by,
                    name,
                    members: all,
                    left_at: HashMap::new(),
                });
                Ok(format!("{} group {}", r.status, self.groups.len() - 1))
            }
            Op::Members {
                by,
                group,
                add,
                remove,
            } => {
                let (conv, resolved) = self.resolve(group);
                let by = match (by, resolved) {
                    (Actor::User(u), _) => *u,
                    (Actor::Owner, Resolved::Group(g)) => self.groups[g].owner,
                    (Actor::Owner, _) => 0,
                };
                self.change_members(by, conv, resolved, add, remove).await
            }
            Op::Leave { by, group } => {
                let (conv, resolved) = self.resolve(group);
                self.change_members(*by, conv, resolved, &[], &[*by]).await
            }
            Op::GroupSend { from, group } => {
                let from = *from;
                let (conv, resolved) = self.resolve(group);
                let mid = Uuid::new_v4();
                let r = node
                    .post(
                        "/v1/messages",
                        &self.users[from].token,
                        json!({"message_id": mid, "group_id": conv, "body": {"n": self.head(conv)}}),
                    )
                    .await;
                let access = self.access(from, resolved);
                match (resolved, access) {
                    (Resolved::Group(g), Access::Member) => {
                        self.check_sent(&r, mid, from, conv)?;
                        if self.head(conv) == 0 {
                            self.busy.push((conv, resolved));
                        }
                        let recipients = self.groups[g].members.clone();
                        self.convs.entry(conv).or_default().push(Msg {
                            message_id: mid,
                            sender: from,
                            recipients,
                        });
                        Ok(format!("{} seq {}", r.status, self.head(conv)))
                    }
                    _ => {
                        ensure(refused(&r), || {
                            format!("u{from} ({access:?}) sent to a group it is not in: {r:?}")
                        })?;
                        Ok(format!("{} ({access:?})", r.status))
                    }
                }
            }
            Op::History { by, conv } => {
                let by = *by;
                let (conv, resolved) = self.resolve(conv);
                let r = node
                    .get(
                        &format!("/v1/conversations/{conv}/messages"),
                        Some(&self.users[by].token),
                    )
                    .await;
                let access = self.access(by, resolved);
                let messages = r.body["messages"].as_array().cloned().unwrap_or_default();
                let visible = match access {
                    Access::Outsider => {
                        ensure(refused(&r) && messages.is_empty(), || {
                            format!("u{by} read a conversation it never took part in: {r:?}")
                        })?;
                        return Ok(format!("{} (outsider)", r.status));
                    }
                    Access::Former(seq) => seq,
                    Access::Member => self.head(conv),
                };
                if self.head(conv) == 0
                    && matches!(resolved, Resolved::Direct(..))
                    && r.status == StatusCode::NOT_FOUND
                {
                    // A direct conversation begins with its first message.
                    return Ok(format!("{} (not begun)", r.status));
                }
                ensure(r.status == StatusCode::OK, || {
                    format!("u{by} ({access:?}) could not read its conversation: {r:?}")
                })?;
                let model = self.convs.get(&conv).map(Vec::as_slice).unwrap_or_default();
                let want: Vec<(u64, Uuid)> = (1..=visible)
                    .rev()
                    .map(|s| (s, model[s as usize - 1].message_id))
                    .collect();
                let got: Vec<(u64, Uuid)> = messages
                    .iter()
                    .map(|m| {
                        (
                            m["seq"].as_u64().unwrap_or(0),
                            uuid_of(&m["message_id"]).unwrap_or_default(),
                        )
                    })
                    .collect();
                let all_here = messages
                    .iter()
                    .all(|m| uuid_of(&m["conversation_id"]) == Some(conv));
                ensure(got == want && all_here, || {
                    format!(
                        "u{by} ({access:?}) read {got:?} of {conv}, the model says {want:?}: {r:?}"
                    )
                })?;
                Ok(format!("{} {} messages ({access:?})", r.status, got.len()))
            }
            Op::Receipt {
                by,
                conv,
                read,
                seq,
            } => {
                let by = *by;
                let (conv, resolved) = self.resolve(conv);
                let access = self.access(by, resolved);
                let visible = match access {
                    Access::Former(s) => s,
                    _ => self.head(conv),
                };
                let up_to = u64::from(*seq) % visible.max(1) + 1;
                let kind = if *read { "read" } else { "delivered" };
                let r = node
                    .post(
                        "/v1/receipts",
                        &self.users[by].token,
                        json!({"conversation_id": conv, "up_to_seq": up_to, "kind": kind}),
                    )
                    .await;
                let accepted = r.status == StatusCode::NO_CONTENT;
                let ok = match access {
                    Access::Outsider => refused(&r),
                    _ if visible == 0 => !accepted && r.status.is_client_error(),
                    Access::Member => accepted,
                    // Marking what it could read before its removal, or not.
                    Access::Former(_) => accepted || r.status == StatusCode::FORBIDDEN,
                };
                ensure(ok, || {
                    format!("u{by} ({access:?}) posted a receipt up to {up_to} on {conv}: {r:?}")
                })?;
                if accepted {
                    // Only those in the conversation now may hear of it.
                    // (A group receipt once reached senders who had left
                    // since: this test found it.)
                    let mut allowed = match resolved {
                        Resolved::Direct(a, b) => [a, b].into(),
                        Resolved::Group(g) => self.groups[g].members.clone(),
                        Resolved::Unknown => BTreeSet::new(),
                    };
                    allowed.remove(&by);
                    self.receipts
                        .entry((conv, by, kind.to_owned(), up_to))
                        .or_default()
                        .extend(allowed);
                }
                Ok(format!("{} up to {up_to} ({access:?})", r.status))
            }
            Op::Poll { by } => {
                let n = self.poll(*by).await?;
                Ok(format!("{n} events"))
            }
        }
    }

    async fn change_members(
        &mut self,
        by: usize,
        conv: Uuid,
        resolved: Resolved,
        add: &[usize],
        remove: &[usize],
    ) -> Result<String, String> {
        let r = self
            .node
            .post(
                &format!("/v1/groups/{conv}/members"),
                &self.users[by].token,
                json!({
                    "add": add.iter().map(|u| self.id(*u)).collect::<Vec<_>>(),
                    "remove": remove.iter().map(|u| self.id(*u)).collect::<Vec<_>>(),
                }),
            )
            .await;
        let add: BTreeSet<usize> = add.iter().copied().collect();
        let remove: BTreeSet<usize> = remove.iter().copied().collect();
        let access = self.access(by, resolved);
        let allowed = match resolved {
            _ if !add.is_disjoint(&remove) => {
                ensure(r.status.is_client_error(), || {
                    format!("added and removed at once: {r:?}")
                })?;
                return Ok(format!("{} (add and remove)", r.status));
            }
            Resolved::Group(g) => {
                let group = &self.groups[g];
                access == Access::Member
                    && (group.owner == by || (add.is_empty() && remove.iter().all(|u| *u == by)))
            }
            _ => false,
        };
        let Resolved::Group(g) = resolved else {
            ensure(r.status == StatusCode::NOT_FOUND, || {
                format!("a member change on no group: {r:?}")
            })?;
            return Ok(format!("{} (no group)", r.status));
        };
        if !allowed {
            ensure(r.status == StatusCode::FORBIDDEN, || {
                format!("u{by} ({access:?}) changed members it may not change: {r:?}")
            })?;
            return Ok(format!("{} ({access:?})", r.status));
        }
        let head = self.head(conv);
        let group = &mut self.groups[g];
        let before = group.members.clone();
        let removed: BTreeSet<usize> = remove.intersection(&before).copied().collect();
        let added: BTreeSet<usize> = add.difference(&before).copied().collect();
        for u in &removed {
            group.members.remove(u);
            group.left_at.insert(*u, head);
        }
        for u in &added {
            group.members.insert(*u);
            group.left_at.remove(u);
        }
        let after = group.members.clone();
        ensure(
            r.status == StatusCode::OK && r.body["group"]["member_count"] == after.len(),
            || format!("u{by} could not change members as it may: {r:?}"),
        )?;
        if !removed.is_empty() {
            self.changes
                .entry((conv, "left".into(), removed.clone()))
                .or_default()
                .extend(before.iter().copied());
        }
        if !added.is_empty() {
            self.changes
                .entry((conv, "joined".into(), added.clone()))
                .or_default()
                .extend(after.iter().copied());
        }
        Ok(format!(
            "{} removed {removed:?} added {added:?}, members {after:?}",
            r.status
        ))
    }

    /// Polls everyone until every message has reached every participant
    /// of its seq (some copies come through the outbox), then compares.
    async fn settle(&mut self) -> Checked {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            for u in 0..USERS {
                self.poll(u).await?;
            }
            let missing: Vec<(usize, Uuid)> = self
                .convs
                .values()
                .flatten()
                .flat_map(|m| m.recipients.iter().map(move |u| (*u, m.message_id)))
                .filter(|(u, id)| !self.got_messages[*u].contains(id))
                .collect();
            if missing.is_empty() {
                break;
            }
            ensure(tokio::time::Instant::now() < deadline, || {
                format!("messages never reached participants: {missing:?}")
            })?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for u in 0..USERS {
            let want: BTreeSet<ChangeKey> = self
                .changes
                .iter()
                .filter(|(_, who)| who.contains(&u))
                .map(|(k, _)| k.clone())
                .collect();
            ensure(self.got_changes[u] == want, || {
                format!(
                    "u{u} heard of group changes {:?}, the model says {want:?}",
                    self.got_changes[u]
                )
            })?;
        }
        Ok(())
    }

    async fn run(mut self, ops: &[Option<Op>]) -> Result<(), TestCaseError> {
        for (i, op) in ops.iter().enumerate() {
            let Some(op) = op else { continue };
            let outcome = self.step(op).await;
            let _ = writeln!(
                self.log,
                "{i:>2}: {op:?} -> {}",
                outcome.as_deref().unwrap_or("FAILED")
            );
            if let Err(e) = outcome {
                return Err(TestCaseError::fail(format!("{e}\n{}", self.log)));
            }
        }
        self.settle()
            .await
            .map_err(|e| TestCaseError::fail(format!("at the end: {e}\n{}", self.log)))
    }
}

#[test]
fn nobody_reads_or_writes_a_conversation_it_is_not_in() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One node for every case; fresh users keep the cases apart. No budget
    // for group changes (limits.group_change_rate = 0): a case creates and
    // changes groups far faster than a user would.
    let node = rt.block_on(Node::start_with(|c| c.limits.group_change_rate = 0));
    let config = Config {
        cases: 200,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops(), |ops| {
        rt.block_on(async { Case::new(&node).await.run(&ops).await })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
