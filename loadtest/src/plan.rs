//! Who talks to whom: users, their devices, and the conversations a
//! scenario sends into. Pure data, built before any socket opens.

use std::time::Duration;

use carrier::auth::Auth;
use carrier::domain::UserId;
use uuid::Uuid;

use crate::target::{Dest, Identity};

/// One conversation the scheduler sends into.
#[derive(Debug, Clone)]
pub struct Conv {
    pub id: Uuid,
    /// Set for groups (the group's id equals the conversation's).
    pub group: bool,
    /// Member user indices; the first one owns a group.
    pub members: Vec<usize>,
}

/// One virtual device: a user's long-polling connection.
#[derive(Debug, Clone)]
pub struct Device {
    pub user: usize,
    /// The channel it follows (Nchan; Carrier polls the user's mailbox).
    pub channel: Uuid,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub users: Vec<Identity>,
    pub convs: Vec<Conv>,
    pub devices: Vec<Device>,
    /// Devices per user.
    pub per_user: usize,
    /// Users with devices: the first this many (all, but in a `fanout`
    /// with `--polling`).
    pub polling: usize,
}

/// How tokens are made.
pub enum Tokens {
    Mint(Auth),
    /// One token per line, used in turn (users = lines).
    List(Vec<(Uuid, String)>),
    /// Peers without authentication.
    None,
}

impl Tokens {
    fn identity(&self, n: usize) -> Identity {
        match self {
            Tokens::Mint(auth) => {
                let user = Uuid::new_v4();
                Identity {
                    user,
                    token: auth.mint(UserId(user), Duration::from_secs(24 * 3600)),
                }
            }
            Tokens::List(list) => {
                let (user, token) = &list[n % list.len()];
                Identity {
                    user: *user,
                    token: token.clone(),
                }
            }
            Tokens::None => Identity {
                user: Uuid::new_v4(),
                token: String::new(),
            },
        }
    }
}

fn users(tokens: &Tokens, n: usize) -> Vec<Identity> {
    (0..n).map(|i| tokens.identity(i)).collect()
}

/// The direct conversation id of two users, as Carrier derives it.
pub fn direct_id(a: Uuid, b: Uuid) -> Uuid {
    carrier::domain::ConversationId::direct(UserId(a), UserId(b)).0
}

fn devices(users: &[Identity], per_user: usize) -> Vec<Device> {
    let mut out = Vec::with_capacity(users.len() * per_user);
    for (u, who) in users.iter().enumerate() {
        for _ in 0..per_user {
            out.push(Device {
                user: u,
                channel: who.user,
            });
        }
    }
    out
}

impl Plan {
    /// `users` users paired into direct conversations (user 2k with 2k+1).
    pub fn chat(tokens: &Tokens, users_n: usize, per_user: usize) -> Plan {
        let users_n = users_n.max(2) & !1;
        let users = users(tokens, users_n);
        let convs = (0..users_n / 2)
            .map(|k| Conv {
                id: direct_id(users[2 * k].user, users[2 * k + 1].user),
                group: false,
                members: vec![2 * k, 2 * k + 1],
            })
            .collect();
        Plan {
            devices: devices(&users, per_user),
            polling: users.len(),
            users,
            convs,
            per_user,
        }
    }

    /// `users` users in groups of `size` (the last one may be smaller).
    pub fn groups(tokens: &Tokens, users_n: usize, size: usize, per_user: usize) -> Plan {
        let size = size.max(2);
        let users = users(tokens, users_n.max(size));
        let convs = (0..users.len())
            .collect::<Vec<_>>()
            .chunks(size)
            .filter(|c| c.len() >= 2)
            .map(|members| Conv {
                id: Uuid::new_v4(),
                group: true,
                members: members.to_vec(),
            })
            .collect();
        Plan {
            devices: devices(&users, per_user),
            polling: users.len(),
            users,
            convs,
            per_user,
        }
    }

    /// One group of `members` users whose devices follow the group's
    /// channel (on Nchan) or their mailboxes (on Carrier).
    /// Only the first `polling` members poll (a node holds fewer
    /// connections than a large group has members).
    pub fn fanout(tokens: &Tokens, members: usize, per_user: usize, polling: usize) -> Plan {
        let mut plan = Plan::groups(tokens, members, members.max(2), per_user);
        plan.convs.truncate(1);
        plan.polling = polling.min(plan.users.len());
        plan.devices.retain(|d| d.user < polling);
        let group = plan.convs[0].id;
        for d in &mut plan.devices {
            d.channel = group;
        }
        plan
    }

    /// Devices that must receive a message of `conv` (every member's,
    /// the sender's own devices included: they get a copy).
    pub fn expected(&self, conv: &Conv) -> u32 {
        let polling = conv.members.iter().filter(|&&m| m < self.polling).count();
        (polling * self.per_user) as u32
    }

    /// Where a message from `sender` in `conv` goes.
    pub fn dest(&self, conv: &Conv, sender: usize) -> Dest {
        if conv.group {
            Dest::Group(conv.id)
        } else {
            let other = conv
                .members
                .iter()
                .copied()
                .find(|&m| m != sender)
                .unwrap_or(sender);
            Dest::Direct(self.users[other].user)
        }
    }
}
