//! The session table of one endpoint: sessions by peer address in a slab, and one deadline queue
//! for all of them.
//!
//! A timer costs O(log n): each session has at most one live entry in a binary heap, and a
//! deadline that moves later is left in place and re-armed lazily when it fires (receiving a
//! datagram never touches the heap). Nothing ever scans all sessions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

/// Something with a next deadline: the sans-IO session protocols.
pub trait Timed {
    /// The next instant the session must be woken at.
    fn poll_timeout(&self) -> Option<Instant>;
}

impl Timed for crate::protocol::datagram::DatagramSession {
    fn poll_timeout(&self) -> Option<Instant> {
        crate::protocol::datagram::DatagramSession::poll_timeout(self)
    }
}

/// A stable reference to a table entry; stale once the entry is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<S> {
    peer: SocketAddr,
    session: S,
    /// The instant of this entry's live heap item, if any.
    scheduled: Option<Instant>,
}

#[derive(Debug)]
struct Slot<S> {
    generation: u32,
    entry: Option<Entry<S>>,
}

/// Sessions by peer, with one deadline queue.
#[derive(Debug)]
pub struct SessionTable<S> {
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    by_peer: HashMap<SocketAddr, Key>,
    deadlines: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl<S> Default for SessionTable<S> {
    fn default() -> Self {
        SessionTable {
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }
}

impl<S: Timed> SessionTable<S> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// The session of `peer`, if any.
    pub fn key_of(&self, peer: &SocketAddr) -> Option<Key> {
        self.by_peer.get(peer).copied()
    }

    /// Adds a session for `peer` (replacing none: the caller checks `key_of` first) and
    /// schedules its first deadline.
    pub fn insert(&mut self, peer: SocketAddr, session: S) -> Key {
        let entry = Entry {
            peer,
            session,
            scheduled: None,
        };
        let key = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.entry = Some(entry);
                Key {
                    index,
                    generation: slot.generation,
                }
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                Key {
                    index: (self.slots.len() - 1) as u32,
                    generation: 0,
                }
            }
        };
        self.by_peer.insert(peer, key);
        self.reschedule(key);
        key
    }

    fn entry(&self, key: Key) -> Option<&Entry<S>> {
        self.slots
            .get(key.index as usize)
            .filter(|slot| slot.generation == key.generation)
            .and_then(|slot| slot.entry.as_ref())
    }

    fn entry_mut(&mut self, key: Key) -> Option<&mut Entry<S>> {
        self.slots
            .get_mut(key.index as usize)
            .filter(|slot| slot.generation == key.generation)
            .and_then(|slot| slot.entry.as_mut())
    }

    /// The session behind `key`.
    pub fn get(&self, key: Key) -> Option<&S> {
        self.entry(key).map(|e| &e.session)
    }

    /// The session behind `key`, mutably. Call [`SessionTable::reschedule`] after changing it.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut S> {
        self.entry_mut(key).map(|e| &mut e.session)
    }

    /// The peer of `key`.
    pub fn peer(&self, key: Key) -> Option<SocketAddr> {
        self.entry(key).map(|e| e.peer)
    }

    /// Removes a session; its heap item goes stale and is dropped when it surfaces.
    pub fn remove(&mut self, key: Key) -> Option<S> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index);
        self.by_peer.remove(&entry.peer);
        Some(entry.session)
    }

    /// Makes sure the session's deadline is in the queue no later than it is due. O(log n) when
    /// the deadline moved earlier, O(1) otherwise.
    pub fn reschedule(&mut self, key: Key) {
        let Some(entry) = self.entry_mut(key) else {
            return;
        };
        let due = entry.session.poll_timeout();
        let push = match (due, entry.scheduled) {
            (Some(due), Some(scheduled)) => due < scheduled,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if push {
            if let Some(due) = due {
                entry.scheduled = Some(due);
                self.deadlines.push(Reverse((due, key)));
            }
        }
    }

    /// The earliest live deadline (stale heap items on top are dropped).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.deadlines.peek().copied() {
            if self.entry(key).is_some_and(|e| e.scheduled == Some(at)) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Takes one session whose deadline is at or before `now`. The caller runs its timers and
    /// then calls [`SessionTable::reschedule`].
    pub fn pop_due(&mut self, now: Instant) -> Option<Key> {
        loop {
            let Reverse((at, key)) = *self.deadlines.peek()?;
            if at > now {
                return None;
            }
            self.deadlines.pop();
            if let Some(entry) = self.entry_mut(key) {
                if entry.scheduled == Some(at) {
                    entry.scheduled = None;
                    return Some(key);
                }
            }
        }
    }

    /// Every key, in slot order (for shutdown and listings).
    pub fn keys(&self) -> Vec<Key> {
        self.by_peer.values().copied().collect()
    }

    /// Items in the deadline queue, live or stale (for memory accounting).
    pub fn queued_deadlines(&self) -> usize {
        self.deadlines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fake(Option<Instant>);
    impl Timed for Fake {
        fn poll_timeout(&self) -> Option<Instant> {
            self.0
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn deadlines_pop_in_order_and_removed_sessions_never_fire() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        let a = table.insert(addr(1), Fake(Some(t0 + Duration::from_secs(3))));
        let b = table.insert(addr(2), Fake(Some(t0 + Duration::from_secs(1))));
        let c = table.insert(addr(3), Fake(Some(t0 + Duration::from_secs(2))));
        table.remove(c);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let now = t0 + Duration::from_secs(5);
        assert_eq!(table.pop_due(now), Some(b));
        assert_eq!(table.pop_due(now), Some(a));
        assert_eq!(table.pop_due(now), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn later_deadline_is_armed_lazily_earlier_one_at_once() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        let a = table.insert(addr(1), Fake(Some(t0 + Duration::from_secs(5))));
        table.get_mut(a).unwrap().0 = Some(t0 + Duration::from_secs(9));
        table.reschedule(a);
        assert_eq!(
            table.queued_deadlines(),
            1,
            "no heap push for a later deadline"
        );
        table.get_mut(a).unwrap().0 = Some(t0 + Duration::from_secs(2));
        table.reschedule(a);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn stale_keys_do_not_reach_new_occupants() {
        let mut table = SessionTable::new();
        let a = table.insert(addr(1), Fake(None));
        table.remove(a);
        let b = table.insert(addr(2), Fake(None));
        assert!(table.get(a).is_none());
        assert!(table.get(b).is_some());
        assert_eq!(table.key_of(&addr(2)), Some(b));
        assert_eq!(table.key_of(&addr(1)), None);
    }
}
