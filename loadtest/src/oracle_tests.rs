//! The oracle against crafted sequences: each kind of fault is caught, and a
//! clean run is clean.

use super::*;

const CONV: Uuid = Uuid::from_u128(7);

/// `n` messages sent and acked in one conversation, to `devices` devices.
fn world(n: u64, devices: u32) -> (Oracle, Vec<Seen>) {
    let mut oracle = Oracle::new(devices as usize);
    let mut prev = None;
    let mut seen = Vec::new();
    for seq in 1..=n {
        let id = Uuid::from_u128(1000 + u128::from(seq));
        let hash = body_hash(&serde_json::json!({"i": seq}).to_string());
        oracle.issued(id, CONV, hash, 0);
        oracle.acked(id, Some(seq), prev, devices);
        seen.push(Seen {
            message_id: id,
            conversation_id: CONV,
            seq: Some(seq),
            prev_message_id: prev,
            body_hash: hash,
        });
        prev = Some(id);
    }
    (oracle, seen)
}

#[test]
fn clean_sequence_is_clean() {
    let (mut oracle, msgs) = world(5, 2);
    for device in 0..2 {
        for m in &msgs {
            assert_eq!(
                oracle.delivered(device, m, false),
                Delivery::First { tag: 0 }
            );
        }
    }
    oracle.receipt(1, CONV, 5);
    let counts = oracle.finish();
    assert!(counts.clean(), "{counts:?}");
    assert_eq!(counts, Counts::default());
    assert_eq!(oracle.outstanding(), 0);
}

#[test]
fn catches_a_lost_message() {
    let (mut oracle, msgs) = world(5, 2);
    for m in &msgs {
        oracle.delivered(0, m, false);
    }
    for m in msgs.iter().filter(|m| m.seq != Some(3)) {
        oracle.delivered(1, m, false);
    }
    let counts = oracle.finish();
    assert_eq!(counts.lost_messages, 1);
    assert_eq!(counts.lost_deliveries, 1);
    assert!(!counts.clean());
}

#[test]
fn counts_a_duplicate_without_failing() {
    let (mut oracle, msgs) = world(3, 1);
    for m in &msgs {
        oracle.delivered(0, m, false);
    }
    assert_eq!(oracle.delivered(0, &msgs[1], false), Delivery::Duplicate);
    let counts = oracle.finish();
    assert_eq!(counts.duplicated, 1);
    assert!(counts.clean(), "a redelivery is allowed: {counts:?}");
}

#[test]
fn catches_a_duplicate_stored_under_a_new_seq() {
    let (mut oracle, msgs) = world(3, 1);
    for m in &msgs {
        oracle.delivered(0, m, false);
    }
    // The server stored a retried send twice: same id, a new seq.
    let mut again = msgs[1].clone();
    again.seq = Some(4);
    assert_eq!(oracle.delivered(0, &again, false), Delivery::Rejected);
    let counts = oracle.finish();
    assert!(counts.corrupted >= 1, "{counts:?}");
    assert!(!counts.clean());
}

#[test]
fn catches_a_reordered_message() {
    let (mut oracle, msgs) = world(4, 1);
    for i in [0, 2, 1, 3] {
        oracle.delivered(0, &msgs[i], false);
    }
    let counts = oracle.finish();
    assert_eq!(counts.reordered, 1);
    assert!(!counts.clean());
}

#[test]
fn catches_a_corrupted_body_and_a_stranger() {
    let (mut oracle, msgs) = world(2, 1);
    let mut bad = msgs[0].clone();
    bad.body_hash ^= 1;
    assert_eq!(oracle.delivered(0, &bad, false), Delivery::Rejected);
    let mut stranger = msgs[1].clone();
    stranger.message_id = Uuid::from_u128(99);
    assert_eq!(oracle.delivered(0, &stranger, false), Delivery::Rejected);
    let counts = oracle.finish();
    assert_eq!(counts.corrupted, 2);
    // Neither counted as delivered, so both messages are lost too.
    assert_eq!(counts.lost_messages, 2);
}

#[test]
fn catches_a_gap_in_the_chain() {
    let (mut oracle, msgs) = world(3, 1);
    // Only seq 1 and 3 ever seen: seq 2 was assigned but never shown.
    let mut oracle2 = Oracle::new(1);
    for m in [&msgs[0], &msgs[2]] {
        oracle2.issued(m.message_id, CONV, m.body_hash, 0);
        oracle2.acked(m.message_id, m.seq, m.prev_message_id, 1);
        oracle2.delivered(0, m, false);
    }
    assert_eq!(oracle2.finish().gaps, 1);
    // A wrong prev_message_id is a broken chain as well.
    oracle.delivered(0, &msgs[0], false);
    let mut wrong = msgs[1].clone();
    wrong.prev_message_id = Some(Uuid::from_u128(5));
    oracle.delivered(0, &wrong, false);
    assert!(oracle.finish().corrupted >= 1);
}

#[test]
fn catches_a_receipt_before_its_message() {
    let (mut oracle, msgs) = world(3, 1);
    oracle.delivered(0, &msgs[0], false);
    oracle.receipt(0, CONV, 2);
    let counts = oracle.finish();
    assert_eq!(counts.early_receipts, 1);
    assert!(!counts.clean());
}

#[test]
fn an_unacked_send_is_not_lost() {
    let mut oracle = Oracle::new(1);
    oracle.issued(Uuid::from_u128(1), CONV, 0, 0);
    oracle.unacked();
    let counts = oracle.finish();
    assert_eq!(counts.lost_messages, 0);
    assert_eq!(counts.unacked, 1);
    assert!(counts.clean());
}

/// A send of unknown outcome (its attempts got no answer) that had landed:
/// `seq` 2 after two acked messages, delivered to the devices in `to`.
fn unknown_landed(to: &[usize]) -> Counts {
    let (mut oracle, msgs) = world(1, 2);
    let id = Uuid::from_u128(77);
    let hash = body_hash("{\"i\":2}");
    oracle.issued(id, CONV, hash, 0);
    oracle.unknown(id, 2);
    let landed = Seen {
        message_id: id,
        conversation_id: CONV,
        seq: Some(2),
        prev_message_id: Some(msgs[0].message_id),
        body_hash: hash,
    };
    for device in 0..2 {
        oracle.delivered(device, &msgs[0], false);
        if to.contains(&device) {
            assert_eq!(
                oracle.delivered(device, &landed, false),
                Delivery::First { tag: 0 }
            );
        }
    }
    oracle.finish()
}

#[test]
fn a_send_of_unknown_outcome_is_fine_delivered_everywhere_or_nowhere() {
    let everywhere = unknown_landed(&[0, 1]);
    assert_eq!((everywhere.unknown, everywhere.unknown_landed), (1, 1));
    assert_eq!(everywhere.corrupted, 0);
    assert!(everywhere.clean(), "{everywhere:?}");

    let mut oracle = Oracle::new(1);
    oracle.issued(Uuid::from_u128(78), CONV, 0, 0);
    oracle.unknown(Uuid::from_u128(78), 1);
    assert_eq!(oracle.outstanding(), 0);
    let nowhere = oracle.finish();
    assert_eq!((nowhere.unknown, nowhere.unknown_landed), (1, 0));
    assert!(nowhere.clean(), "{nowhere:?}");
}

#[test]
fn history_holding_an_undelivered_send_of_unknown_outcome_is_no_mismatch_but_a_loss() {
    let (mut oracle, msgs) = world(1, 1);
    oracle.delivered(0, &msgs[0], false);
    let id = Uuid::from_u128(79);
    oracle.issued(id, CONV, 5, 0);
    oracle.unknown(id, 1);
    let stored = Seen {
        message_id: id,
        conversation_id: CONV,
        seq: Some(2),
        prev_message_id: Some(msgs[0].message_id),
        body_hash: 5,
    };
    assert_eq!(oracle.check_history(CONV, &[stored, msgs[0].clone()]), 0);
    let counts = oracle.finish();
    assert_eq!(counts.history_mismatches, 0);
    assert_eq!((counts.unknown, counts.unknown_landed), (1, 1));
    // It was stored, so the device was owed it.
    assert_eq!(counts.lost_messages, 1);
    assert!(!counts.clean());
}

#[test]
fn a_landed_send_of_unknown_outcome_is_owed_to_every_device() {
    let partly = unknown_landed(&[0]);
    assert_eq!(partly.lost_messages, 1);
    assert_eq!(partly.lost_deliveries, 1);
    assert!(!partly.clean());
}

#[test]
fn history_must_hold_exactly_what_was_delivered() {
    let (mut oracle, msgs) = world(3, 1);
    for m in &msgs {
        oracle.delivered(0, m, false);
    }
    let mut page: Vec<Seen> = msgs.iter().rev().cloned().collect();
    assert_eq!(oracle.check_history(CONV, &page), 0);
    // One message missing from history.
    page.pop();
    assert_eq!(oracle.check_history(CONV, &page), 1);
    // One with another body.
    let mut changed: Vec<Seen> = msgs.clone();
    changed[1].body_hash ^= 1;
    assert_eq!(oracle.check_history(CONV, &changed), 1);
    assert!(!oracle.finish().clean());
}

#[test]
fn a_late_own_copy_is_counted_apart() {
    let (mut oracle, msgs) = world(2, 1);
    oracle.delivered(0, &msgs[1], false);
    oracle.delivered(0, &msgs[0], true);
    let counts = oracle.finish();
    assert_eq!(counts.reordered, 0);
    assert_eq!(counts.copies_reordered, 1);
    assert!(!counts.clean());
    assert!(counts.clean_allowing_copy_reorder());
}
