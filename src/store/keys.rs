//! Row-key encoding: ids as their 16 raw bytes, numbers big-endian, so byte
//! order is the order Carrier reads in.

use uuid::Uuid;

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when the prefix is all `0xff` (the range is then unbounded above).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `id(16) || n(8)`.
pub fn id_u64(id: Uuid, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// `a(16) || b(16)`.
pub fn id_id(a: Uuid, b: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(a.as_bytes());
    key.extend_from_slice(b.as_bytes());
    key
}

/// The trailing big-endian u64 of a key made by [`id_u64`].
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The trailing id of a key made by [`id_id`].
pub fn trailing_id(key: &[u8]) -> Option<Uuid> {
    let tail: [u8; 16] = key.get(key.len().checked_sub(16)?..)?.try_into().ok()?;
    Some(Uuid::from_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_carries_over_ff() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn numbers_sort_as_bytes() {
        let id = Uuid::from_u128(7);
        assert!(id_u64(id, 255) < id_u64(id, 256));
        assert_eq!(trailing_u64(&id_u64(id, 1 << 40)), Some(1 << 40));
        assert_eq!(
            trailing_id(&id_id(id, Uuid::from_u128(9))),
            Some(Uuid::from_u128(9))
        );
    }
}
