//! The hash tags of a namespace, and which one keeps a session.
//!
//! With [`shards(1)`](super::ClusterBuilder::shards) (the default) every key carries the one
//! tag `{ns}`, so it lives on one Redis Cluster slot. With `shards(k)`, the view is spread
//! over `k` tags, each a complete view of its part of the sessions, with the same keys under
//! its own tag: guests and bots are placed by a hash of their session id, a signed-in
//! session by a hash of its user's name, so every session of a user is in one tag and the
//! distinct users of different tags are different users. The counts are then sums over the
//! tags, and the lists (pages, members) merge without duplicates.
//!
//! Tag `i` is named `{ns:i}` when that name's slot falls in the middle quarter of the `i`-th
//! of `k` equal slices of the 16384 slots, else `{ns:i.j}` for the smallest `j` whose slot
//! does: a Redis Cluster gives its masters contiguous slot ranges, so the tags spread over
//! the masters as evenly as `k` allows, whatever the namespace. The names depend only on the namespace and `k`,
//! so every node computes the same ones.

use crate::{Kind, SessionId};

/// Most tags a namespace may be spread over.
pub const MAX_SHARDS: usize = 256;
/// Redis Cluster's slots.
const SLOTS: u32 = 16_384;
/// Session buckets of a namespace (flush.lua): each tag has `BUCKETS / k` of them, so a
/// bucket holds as many sessions whatever `k`, and memory per session does not grow.
pub(super) const BUCKETS: u64 = 4096;

/// CRC16-CCITT (XModem), as Redis Cluster computes a key's slot.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of hash tag `tag` (the text between the braces).
pub(super) fn slot(tag: &str) -> u16 {
    crc16(tag.as_bytes()) % SLOTS as u16
}

/// The key prefixes (`{tag}:`) of namespace `ns` spread over `k` tags.
pub(super) fn prefixes(ns: &str, k: usize) -> Vec<String> {
    if k <= 1 {
        return vec![format!("{{{ns}}}:")];
    }
    let k32 = k as u32;
    (0..k32)
        .map(|i| {
            // The middle quarter of the i-th slice: a master's range that ends within a
            // slice then still takes its tag whole or not at all, as evenly as can be.
            let (start, end) = (i * SLOTS / k32, (i + 1) * SLOTS / k32);
            let quarter = ((end - start) / 8).max(1);
            let mid = start + (end - start) / 2;
            let slice = (mid - quarter.min(mid - start))..(mid + quarter).min(end).max(mid + 1);
            let base = format!("{ns}:{i}");
            let tag = std::iter::once(base.clone())
                .chain((1..).map(|j| format!("{base}.{j}")))
                .find(|t| slice.contains(&u32::from(slot(t))))
                .expect("some suffix lands in every slice");
            format!("{{{tag}}}:")
        })
        .collect()
}

/// FNV-1a: stable across processes and versions, as the tag of a user must be.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The tag that keeps the sessions of user `user`.
pub(super) fn of_user(user: &str, k: usize) -> usize {
    (fnv1a(user.as_bytes()) % k as u64) as usize
}

/// The tag that keeps session `id` of kind `kind`: its user's, or by its id for a guest or
/// a bot. The bytes used are not those of its bucket (the id's first two), so that each
/// tag uses all its buckets.
pub(super) fn of_session(id: SessionId, kind: &Kind, k: usize) -> usize {
    if k <= 1 {
        return 0;
    }
    match kind.user() {
        Some(u) => of_user(u.as_str(), k),
        None => of_id(id, k),
    }
}

/// The tag of a guest or bot session `id`.
pub(super) fn of_id(id: SessionId, k: usize) -> usize {
    let b = id.as_uuid().as_bytes();
    let tail = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    // The variant bits (the top two of byte 8) are the same in every v4 id: shifted out.
    ((tail & 0x3FFF_FFFF_FFFF_FFFF) % k as u64) as usize
}

/// Session buckets per tag.
pub(super) fn buckets(k: usize) -> u64 {
    (BUCKETS / k.max(1) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // `CLUSTER KEYSLOT` of these names, from Redis.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("presence"), 15428);
        assert_eq!(slot("presence:0"), 3885);
    }

    #[test]
    fn one_tag_is_the_namespace_itself() {
        assert_eq!(prefixes("presence", 1), ["{presence}:"]);
    }

    #[test]
    fn tags_spread_evenly_over_three_masters_whatever_the_namespace() {
        // `redis-cli --cluster create` with three masters gives each a third of the slots.
        let master = |s: u16| (u32::from(s) * 3 / SLOTS) as usize;
        for ns in ["presence", "myapp", "forum", "x", "shop-eu"] {
            let tags = prefixes(ns, 16);
            let mut per = [0; 3];
            for p in &tags {
                let tag = p.trim_start_matches('{').trim_end_matches("}:");
                per[master(slot(tag))] += 1;
            }
            assert!(per.iter().all(|&n| (5..=6).contains(&n)), "{ns}: {per:?}");
            let distinct: std::collections::HashSet<_> = tags.iter().collect();
            assert_eq!(distinct.len(), 16);
        }
    }

    #[test]
    fn a_users_sessions_share_a_tag_and_guests_spread() {
        let k = 16;
        let alice = Kind::member("alice");
        let t = of_session(SessionId::new_v4(), &alice, k);
        for _ in 0..100 {
            assert_eq!(of_session(SessionId::new_v4(), &alice, k), t);
            assert_eq!(
                of_session(SessionId::new_v4(), &Kind::hidden_member("alice"), k),
                t
            );
        }
        let mut per = [0usize; 16];
        for _ in 0..16_000 {
            per[of_session(SessionId::new_v4(), &Kind::Guest, k)] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
    }
}
