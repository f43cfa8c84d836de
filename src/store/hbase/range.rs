//! A [`Scan`]'s bounds as HBase scanner rows.
//!
//! HBase scans from an inclusive start row to an exclusive stop row; a
//! reversed scan starts at the larger key. Most bounds translate exactly
//! (the key right after `x` is `x · 0x00`); the two that do not (an
//! exclusive upper bound and an inclusive lower bound of a reversed scan)
//! are widened slightly and the extra rows dropped here.

use std::ops::Bound;

use super::super::Scan;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Range {
    pub start: Option<Vec<u8>>,
    pub stop: Option<Vec<u8>>,
    pub reverse: bool,
    /// A reversed scan starting at its exclusive upper bound skips it.
    skip: Option<Vec<u8>>,
    /// A reversed scan ends at the first row below this.
    floor: Option<Vec<u8>>,
}

impl Range {
    pub(super) fn of(scan: &Scan) -> Range {
        let mut range = Range {
            start: None,
            stop: None,
            reverse: scan.reverse,
            skip: None,
            floor: None,
        };
        if !scan.reverse {
            range.start = match &scan.start {
                Bound::Included(x) => Some(x.clone()),
                Bound::Excluded(x) => Some(successor(x)),
                Bound::Unbounded => None,
            };
            range.stop = match &scan.end {
                Bound::Included(y) => Some(successor(y)),
                Bound::Excluded(y) => Some(y.clone()),
                Bound::Unbounded => None,
            };
            return range;
        }
        range.start = match &scan.end {
            Bound::Included(y) => Some(y.clone()),
            Bound::Excluded(y) => {
                range.skip = Some(y.clone());
                Some(y.clone())
            }
            Bound::Unbounded => None,
        };
        range.stop = match &scan.start {
            Bound::Excluded(x) => Some(x.clone()),
            Bound::Included(x) => match x.split_last() {
                None => None,
                // Nothing sorts between `p` and `p · 0x00`.
                Some((0, p)) => Some(p.to_vec()),
                Some((last, p)) => {
                    range.floor = Some(x.clone());
                    let mut below = p.to_vec();
                    below.push(last - 1);
                    Some(below)
                }
            },
            Bound::Unbounded => None,
        };
        range
    }

    /// Every row whose key starts with `prefix`, in key order.
    pub(super) fn prefix(prefix: &[u8]) -> Range {
        Range {
            start: Some(prefix.to_vec()),
            stop: crate::store::keys::prefix_end(prefix),
            reverse: false,
            skip: None,
            floor: None,
        }
    }

    /// Rows to ask for beyond the limit, to make up for `skip`.
    pub(super) fn extra(&self) -> usize {
        usize::from(self.skip.is_some())
    }

    /// Whether `row`, returned by the scanner, belongs to the scan.
    pub(super) fn admits(&self, row: &[u8]) -> bool {
        self.skip.as_deref() != Some(row) && !self.past_end(row)
    }

    /// Whether the scanner has gone past the scan's last row.
    pub(super) fn past_end(&self, row: &[u8]) -> bool {
        self.floor.as_deref().is_some_and(|floor| row < floor)
    }
}

/// The smallest key above `x`.
fn successor(x: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(x.len() + 1);
    next.extend_from_slice(x);
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Table;
    use std::ops::Bound::{Excluded, Included, Unbounded};

    fn scan(start: Bound<&[u8]>, end: Bound<&[u8]>, reverse: bool) -> Scan {
        Scan {
            table: Table::Messages,
            start: start.map(<[u8]>::to_vec),
            end: end.map(<[u8]>::to_vec),
            reverse,
            limit: 10,
        }
    }

    /// What HBase would return for `range` from `rows` (sorted), and what
    /// `Range` then keeps: must equal the rows inside the scan's bounds.
    fn through_hbase(range: &Range, rows: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out: Vec<&[u8]> = rows
            .iter()
            .copied()
            .filter(|r| {
                let (lo, hi) = if range.reverse {
                    (range.stop.as_deref(), range.start.as_deref())
                } else {
                    (range.start.as_deref(), range.stop.as_deref())
                };
                if range.reverse {
                    lo.is_none_or(|lo| *r > lo) && hi.is_none_or(|hi| *r <= hi)
                } else {
                    lo.is_none_or(|lo| *r >= lo) && hi.is_none_or(|hi| *r < hi)
                }
            })
            .collect();
        if range.reverse {
            out.reverse();
        }
        let mut kept = Vec::new();
        for r in out {
            if range.past_end(r) {
                break;
            }
            if range.admits(r) {
                kept.push(r.to_vec());
            }
        }
        kept
    }

    #[test]
    fn every_bound_pair_selects_exactly_its_rows() {
        let rows: Vec<&[u8]> = vec![
            b"a",
            b"a\x00",
            b"a\x00\x00",
            b"a\x01",
            b"a\xff",
            b"b",
            b"b\x00",
            b"b\x01",
            b"c",
        ];
        let points: Vec<&[u8]> = vec![
            b"", b"a", b"a\x00", b"a\x01", b"b", b"b\x00", b"b\x02", b"d",
        ];
        let bounds = |p: &'static [u8]| [Included(p), Excluded(p)];
        for reverse in [false, true] {
            for lo in points.iter().flat_map(|p| bounds(p)).chain([Unbounded]) {
                for hi in points.iter().flat_map(|p| bounds(p)).chain([Unbounded]) {
                    let s = scan(lo, hi, reverse);
                    let mut expected: Vec<Vec<u8>> = rows
                        .iter()
                        .filter(|r| std::ops::RangeBounds::<[u8]>::contains(&(lo, hi), **r))
                        .map(|r| r.to_vec())
                        .collect();
                    if reverse {
                        expected.reverse();
                    }
                    let range = Range::of(&s);
                    assert_eq!(
                        through_hbase(&range, &rows),
                        expected,
                        "{lo:?}..{hi:?} reverse={reverse}: {range:?}"
                    );
                }
            }
        }
    }
}
