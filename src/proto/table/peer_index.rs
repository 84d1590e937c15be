//! The session table's index from peer address to slot number.
//!
//! An open-addressing hash table with linear probing whose buckets are one `u64` each: 32 bits of
//! the peer's hash and the slot number. A lookup in a table of a million sessions therefore costs
//! one cache miss (a bucket holds everything the probe compares), where a general-purpose map
//! costs two (its control bytes and its buckets live apart); the address itself is compared with
//! the entry's ([`Addressed`](super::Addressed)), which the caller reads next anyway. At most half the buckets are used, so a probe
//! run is short, and removal shifts the run back instead of leaving tombstones. The hash is the
//! standard library's keyed one, so peers cannot choose addresses that collide.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::SocketAddr;

/// An unused bucket.
const EMPTY: u64 = 0;
/// Buckets of the first allocation.
const MIN_BUCKETS: usize = 16;

/// Peer address to slot number.
#[derive(Debug)]
pub(crate) struct PeerIndex {
    /// `hash << 32 | (slot + 1)`, or [`EMPTY`]. The length is zero or a power of two.
    buckets: Vec<u64>,
    len: usize,
    hasher: RandomState,
}

impl Default for PeerIndex {
    fn default() -> Self {
        PeerIndex {
            buckets: Vec::new(),
            len: 0,
            hasher: RandomState::new(),
        }
    }
}

/// A peer address as hashed: one or two words instead of field by field.
struct PeerKey(SocketAddr);

impl Hash for PeerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.0 {
            SocketAddr::V4(a) => {
                state.write_u64(u64::from(a.ip().to_bits()) << 16 | u64::from(a.port()))
            }
            SocketAddr::V6(a) => {
                state.write_u128(a.ip().to_bits());
                state.write_u64(u64::from(a.scope_id()) << 16 | u64::from(a.port()));
            }
        }
    }
}

fn bucket(hash: u32, slot: u32) -> u64 {
    u64::from(hash) << 32 | (u64::from(slot) + 1)
}

fn hash_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

fn slot_of(bucket: u64) -> u32 {
    (bucket as u32).wrapping_sub(1)
}

impl PeerIndex {
    /// Number of peers indexed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    fn hash(&self, peer: &SocketAddr) -> u32 {
        // The high half: the low half of SipHash's output is as good, but this keeps the bucket
        // position independent of the low bits some hashers leave weak.
        (self.hasher.hash_one(PeerKey(*peer)) >> 32) as u32
    }

    /// The slot of `peer`: `is_peer(slot)` tells whether a candidate slot holds that address.
    pub(crate) fn find(&self, peer: &SocketAddr, is_peer: impl Fn(u32) -> bool) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hash(peer);
        let mask = self.mask();
        let mut position = hash as usize & mask;
        loop {
            let found = self.buckets[position];
            if found == EMPTY {
                return None;
            }
            if hash_of(found) == hash && is_peer(slot_of(found)) {
                return Some(slot_of(found));
            }
            position = (position + 1) & mask;
        }
    }

    /// Indexes `slot` under `peer`. The caller makes sure the peer is not indexed yet, and that
    /// `slot` is below `u32::MAX`.
    pub(crate) fn insert(&mut self, peer: &SocketAddr, slot: u32) {
        debug_assert!(slot < u32::MAX);
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        let hash = self.hash(peer);
        self.place(bucket(hash, slot));
        self.len += 1;
    }

    /// Puts `item` in the first free bucket of its run (there is one: at most half are used).
    fn place(&mut self, item: u64) {
        let mask = self.mask();
        let mut position = hash_of(item) as usize & mask;
        while self.buckets[position] != EMPTY {
            position = (position + 1) & mask;
        }
        self.buckets[position] = item;
    }

    /// Doubles the buckets; the stored hashes place every item again without rehashing a peer.
    fn grow(&mut self) {
        let buckets = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; buckets]);
        for item in old.into_iter().filter(|&item| item != EMPTY) {
            self.place(item);
        }
    }

    /// Removes `peer`'s entry for `slot`; false when there was none.
    pub(crate) fn remove(&mut self, peer: &SocketAddr, slot: u32) -> bool {
        if self.len == 0 {
            return false;
        }
        let hash = self.hash(peer);
        let wanted = bucket(hash, slot);
        let mask = self.mask();
        let mut hole = hash as usize & mask;
        loop {
            match self.buckets[hole] {
                EMPTY => return false,
                item if item == wanted => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward shift: move later members of the run into the hole when their home position
        // does not lie (cyclically) after the hole, so that no lookup meets a gap too early.
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let item = self.buckets[next];
            if item == EMPTY {
                break;
            }
            let home = hash_of(item) as usize & mask;
            let distance_home = next.wrapping_sub(home) & mask;
            let distance_hole = next.wrapping_sub(hole) & mask;
            if distance_home >= distance_hole {
                self.buckets[hole] = item;
                hole = next;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Bytes of heap held.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// Checks the index against a model map of peer to slot, the way the table calls it.
    fn check(index: &PeerIndex, model: &HashMap<SocketAddr, u32>) {
        assert_eq!(index.len(), model.len());
        let peers: HashMap<u32, SocketAddr> = model.iter().map(|(p, s)| (*s, *p)).collect();
        for (peer, slot) in model {
            let found = index.find(peer, |candidate| peers.get(&candidate) == Some(peer));
            assert_eq!(found, Some(*slot), "{peer}");
        }
    }

    #[test]
    fn finds_inserted_peers_and_forgets_removed_ones() {
        let mut index = PeerIndex::default();
        let mut model = HashMap::new();
        for slot in 0..1000u32 {
            let peer = v4(1000 + slot as u16);
            index.insert(&peer, slot);
            model.insert(peer, slot);
        }
        check(&index, &model);
        for slot in (0..1000u32).step_by(3) {
            let peer = v4(1000 + slot as u16);
            assert!(index.remove(&peer, slot));
            assert!(!index.remove(&peer, slot), "removed twice");
            model.remove(&peer);
        }
        check(&index, &model);
        assert_eq!(index.find(&v4(1000), |_| true), None);
        assert!(index.heap_bytes() <= 2048 * 8, "{}", index.heap_bytes());
    }

    #[test]
    fn the_slot_decides_between_colliding_hashes() {
        let mut index = PeerIndex::default();
        let a = v4(7);
        index.insert(&a, 3);
        // The closure says no slot holds this address: not found, whatever the hash matched.
        assert_eq!(index.find(&a, |_| false), None);
        assert_eq!(index.find(&a, |slot| slot == 3), Some(3));
        // Removing with the wrong slot removes nothing.
        assert!(!index.remove(&a, 4));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn ipv6_scope_ids_are_different_peers() {
        let mut index = PeerIndex::default();
        let peer = |scope| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                5000,
                0,
                scope,
            ))
        };
        index.insert(&peer(1), 0);
        index.insert(&peer(2), 1);
        let slots = [peer(1), peer(2)];
        for (slot, address) in slots.iter().enumerate() {
            let found = index.find(address, |s| slots[s as usize] == *address);
            assert_eq!(found, Some(slot as u32));
        }
    }

    proptest! {
        /// Any sequence of inserts and removes (over few ports, so runs collide and wrap) leaves
        /// the index agreeing with a model map.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((any::<bool>(), 0u16..200), 0..600)) {
            let mut index = PeerIndex::default();
            let mut model: HashMap<SocketAddr, u32> = HashMap::new();
            let mut next_slot = 0u32;
            for (insert, port) in ops {
                let peer = v4(port);
                match (insert, model.get(&peer).copied()) {
                    (true, None) => {
                        index.insert(&peer, next_slot);
                        model.insert(peer, next_slot);
                        next_slot += 1;
                    }
                    (false, Some(slot)) => {
                        prop_assert!(index.remove(&peer, slot));
                        model.remove(&peer);
                    }
                    (false, None) => prop_assert!(!index.remove(&peer, next_slot)),
                    (true, Some(_)) => {}
                }
                check(&index, &model);
            }
        }
    }
}
