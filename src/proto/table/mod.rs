//! The session table of one endpoint: sessions by peer address in a slab, and one deadline queue
//! for all of them.
//!
//! A timer costs O(log n) at most: each session has at most one live item in the deadline queue
//! (a timing wheel in front of a 4-ary min-heap), and a deadline that moves later is left in
//! place and re-armed lazily when it comes up (receiving a datagram never touches the queue, and
//! a session whose deadline moved is not woken for it).
//! Nothing ever scans all sessions.
//!
//! The layout is chosen for tables of a million sessions (see `benches/core.rs`): heap items
//! are 16 bytes (a deadline in nanoseconds since the table's epoch, and the slot), so the four
//! children a sift compares share one or two cache lines and a comparison is one integer
//! compare; the peer index (`peer_index.rs`) costs one cache miss a lookup.

mod peer_index;
mod prefetch;

use peer_index::PeerIndex;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Something with a next deadline: the sans-IO session protocols.
pub trait Timed {
    /// The next instant the session must be woken at.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Something with a peer's address: a table entry, which the table finds by that address and
/// keeps no copy of (the driver's entries already hold it, in the session's handle).
pub trait Addressed {
    /// The peer's address; it never changes while the entry is in a table.
    fn peer(&self) -> SocketAddr;
}

impl Timed for crate::proto::datagram::DatagramSession {
    fn poll_timeout(&self) -> Option<Instant> {
        crate::proto::datagram::DatagramSession::poll_timeout(self)
    }
}

/// A stable reference to a table entry; stale once the entry is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// The key as one number, for a handle to carry (see [`Key::from_bits`]).
    pub fn to_bits(self) -> u64 {
        u64::from(self.index) << 32 | u64::from(self.generation)
    }

    /// The key [`Key::to_bits`] gave.
    pub fn from_bits(bits: u64) -> Key {
        Key {
            index: (bits >> 32) as u32,
            generation: bits as u32,
        }
    }

    /// The slot's number, without its generation: for a handle that knows its session by
    /// another means (an id) and finds the live key with [`SessionTable::key_at`].
    pub fn index(self) -> u32 {
        self.index
    }
}

/// A deadline that is not set (`Timing::scheduled`, `Timing::due`).
const NEVER: u64 = u64::MAX;

/// Slots in chunks of at most [`CHUNK`]: only the last chunk grows (by doubling, from a few
/// slots, as a table of one DTLS or client session needs), so the table never holds more than
/// one chunk of unused slots (a doubling `Vec` holds up to as many unused as used) and never
/// copies more than one chunk to grow (with a million sessions, copying them all would move
/// hundreds of megabytes and stall every session of the endpoint).
#[derive(Debug)]
struct Chunks<T> {
    chunks: Vec<Vec<Slot<T>>>,
    /// Slots handed out so far (used or freed); the next new slot is this one.
    len: usize,
}

/// Slots per chunk.
const CHUNK: usize = 1024;

/// One slot: its timing first, so that checking a deadline and running the session start on
/// the same cache line and the same page (with a million sessions each is a miss, and a
/// separate timing array made two).
#[repr(C)]
#[derive(Debug)]
struct Slot<T> {
    timing: Timing,
    value: Option<T>,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunks<T> {
    fn slot(&self, index: usize) -> Option<&Slot<T>> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot<T>> {
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    fn get(&self, index: usize) -> Option<&T> {
        self.slot(index)?.value.as_ref()
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slot_mut(index)?.value.as_mut()
    }

    fn timing(&self, index: usize) -> Option<&Timing> {
        self.slot(index).map(|slot| &slot.timing)
    }

    fn timing_mut(&mut self, index: usize) -> Option<&mut Timing> {
        self.slot_mut(index).map(|slot| &mut slot.timing)
    }

    fn take(&mut self, index: usize) -> Option<T> {
        self.slot_mut(index)?.value.take()
    }

    /// Fills a slot handed out before (a freed one).
    fn set(&mut self, index: usize, value: Option<T>) {
        if let Some(slot) = self.slot_mut(index) {
            slot.value = value;
        }
    }

    /// Hands out a new slot holding `value`, with a fresh timing.
    fn push(&mut self, value: Option<T>) {
        let slot = Slot {
            timing: Timing {
                generation: 0,
                scheduled: NEVER,
                due: NEVER,
            },
            value,
        };
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(slot),
            _ => self.chunks.push(vec![slot]),
        }
        self.len += 1;
    }

    /// Every slot handed out, in order.
    fn iter(&self) -> impl Iterator<Item = &Slot<T>> {
        self.chunks.iter().flatten()
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// What the deadline queue needs of a slot: checking an item and re-arming a deadline that
/// moved read and write these 24 bytes, at the start of the slot.
#[derive(Debug, Clone, Copy)]
struct Timing {
    generation: u32,
    /// The deadline (in ticks) of the slot's live heap item, or [`NEVER`].
    scheduled: u64,
    /// The session's deadline as of the last [`SessionTable::reschedule`], or [`NEVER`].
    due: u64,
}

/// Sessions by peer, with one deadline queue.
#[derive(Debug)]
pub struct SessionTable<S> {
    slots: Chunks<S>,
    free: Vec<u32>,
    /// Slot numbers by their entry's peer.
    by_peer: PeerIndex,
    deadlines: DeadlineQueue,
    /// Ticks count nanoseconds from here; set by the first deadline.
    epoch: Option<Instant>,
    /// The last `now` of [`SessionTable::pop_due`] and its ticks.
    last_now: Option<(Instant, u64)>,
}

impl<S> Default for SessionTable<S> {
    fn default() -> Self {
        SessionTable {
            slots: Chunks::default(),
            free: Vec::new(),
            by_peer: PeerIndex::default(),
            deadlines: DeadlineQueue::default(),
            epoch: None,
            last_now: None,
        }
    }
}

/// How far before the first deadline the epoch lies, so that earlier deadlines still order.
const EPOCH_MARGIN: Duration = Duration::from_secs(24 * 3600);

impl<S: Timed + Addressed> SessionTable<S> {
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
        self.by_peer.len() == 0
    }

    /// The session of `peer`, if any.
    pub fn key_of(&self, peer: &SocketAddr) -> Option<Key> {
        let slots = &self.slots;
        let index = self.by_peer.find(peer, |index| {
            slots
                .get(index as usize)
                .is_some_and(|entry| entry.peer() == *peer)
        })?;
        Some(Key {
            index,
            generation: self.slots.timing(index as usize)?.generation,
        })
    }

    /// The key the next [`SessionTable::insert`] returns, for a driver that hands it to the
    /// session's handle before the session is in the table.
    pub fn next_key(&self) -> Key {
        match self.free.last() {
            Some(&index) => Key {
                index,
                generation: self
                    .slots
                    .timing(index as usize)
                    .map_or(0, |t| t.generation),
            },
            None => Key {
                index: self.slots.len() as u32,
                generation: 0,
            },
        }
    }

    /// Adds a session (replacing none with its peer: the caller checks `key_of` first) and
    /// schedules its first deadline.
    pub fn insert(&mut self, session: S) -> Key {
        let peer = session.peer();
        let entry = Some(session);
        let key = match self.free.pop() {
            Some(index) => {
                self.slots.set(index as usize, entry);
                Key {
                    index,
                    generation: self
                        .slots
                        .timing(index as usize)
                        .map_or(0, |t| t.generation),
                }
            }
            None => {
                self.slots.push(entry);
                Key {
                    index: (self.slots.len() - 1) as u32,
                    generation: 0,
                }
            }
        };
        self.by_peer.insert(&peer, key.index);
        if self.by_peer.len() >= WHEEL_MIN_SESSIONS {
            self.deadlines.enable_wheel();
        }
        self.reschedule(key);
        key
    }

    /// The timing of a live key.
    fn timing_mut(&mut self, key: Key) -> Option<&mut Timing> {
        self.slots
            .timing_mut(key.index as usize)
            .filter(|t| t.generation == key.generation)
    }

    fn entry(&self, key: Key) -> Option<&S> {
        let timing = self.slots.timing(key.index as usize)?;
        if timing.generation != key.generation {
            return None;
        }
        self.slots.get(key.index as usize)
    }

    fn entry_mut(&mut self, key: Key) -> Option<&mut S> {
        let timing = self.slots.timing(key.index as usize)?;
        if timing.generation != key.generation {
            return None;
        }
        self.slots.get_mut(key.index as usize)
    }

    /// The session behind `key`.
    pub fn get(&self, key: Key) -> Option<&S> {
        self.entry(key)
    }

    /// The session behind `key`, mutably. Call [`SessionTable::reschedule`] after changing it.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut S> {
        self.entry_mut(key)
    }

    /// The key of the entry in slot `index`, if one is there.
    pub fn key_at(&self, index: u32) -> Option<Key> {
        let timing = self.slots.timing(index as usize)?;
        self.slots.get(index as usize)?;
        Some(Key {
            index,
            generation: timing.generation,
        })
    }

    /// The peer of `key`.
    pub fn peer(&self, key: Key) -> Option<SocketAddr> {
        self.entry(key).map(Addressed::peer)
    }

    /// Removes a session; its heap item goes stale and is dropped when it surfaces.
    pub fn remove(&mut self, key: Key) -> Option<S> {
        self.timing_mut(key)?;
        let index = key.index as usize;
        let entry = self.slots.take(index)?;
        let timing = self.slots.timing_mut(index)?;
        timing.generation = timing.generation.wrapping_add(1);
        timing.scheduled = NEVER;
        timing.due = NEVER;
        self.free.push(key.index);
        self.by_peer.remove(&entry.peer(), key.index);
        Some(entry)
    }

    /// Notes the session's deadline and makes sure it is in the queue no later than it is due.
    /// O(log n) when the deadline moved earlier, O(1) otherwise.
    pub fn reschedule(&mut self, key: Key) {
        let Some(entry) = self.entry(key) else {
            return;
        };
        let due = entry.poll_timeout();
        let due = due.map_or(NEVER, |due| self.ticks(due));
        let Some(timing) = self.slots.timing_mut(key.index as usize) else {
            return;
        };
        timing.due = due;
        if due < timing.scheduled {
            self.push(key, due);
        }
    }

    /// The earliest live deadline (stale heap items on top are dropped). It may be earlier than
    /// the session's deadline is now (a deadline that moved later is re-armed lazily), never
    /// later.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(item) = self.deadlines.earliest() {
            if self.is_live(item) {
                return Some(self.instant(item.at()));
            }
            self.deadlines.pop_earliest();
            self.prefetch_next();
        }
        None
    }

    /// Takes one session whose deadline is at or before `now`. The caller runs its timers and
    /// then calls [`SessionTable::reschedule`].
    ///
    /// A session whose deadline moved past `now` since it was queued (its ping was answered,
    /// traffic arrived), as its last [`SessionTable::reschedule`] found, is not returned: its
    /// new deadline is queued instead.
    pub fn pop_due(&mut self, now: Instant) -> Option<Key> {
        // Drivers call this until it returns `None`, with the same `now`: convert it once.
        let now_ticks = match self.last_now {
            Some((instant, ticks)) if instant == now => ticks,
            _ => {
                let ticks = self.ticks(now);
                self.last_now = Some((now, ticks));
                ticks
            }
        };
        loop {
            let item = self.deadlines.earliest()?;
            if item.at() > now_ticks {
                return None;
            }
            self.deadlines.pop_earliest();
            // The next item's session is fetched while this one is handled.
            self.prefetch_next();
            if !self.is_live(item) {
                continue;
            }
            let key = item.key();
            let Some(timing) = self.slots.timing_mut(key.index as usize) else {
                continue;
            };
            timing.scheduled = NEVER;
            match timing.due {
                // Nothing to wake it for any more.
                NEVER => {}
                due if due > now_ticks => self.push(key, due),
                _ => return Some(key),
            }
        }
    }

    /// Asks the CPU to start loading the slot and timing of a session due soon while the caller
    /// runs this one: in a table of a million sessions they are in no cache. From the sorted run
    /// that is the item [`PREFETCH_DISTANCE`] pops ahead (every item gets that many pops to
    /// arrive); from the heap (small tables, or none in the run) its top.
    fn prefetch_next(&self) {
        let upcoming = self
            .deadlines
            .upcoming(PREFETCH_DISTANCE)
            .or_else(|| self.deadlines.heap.peek());
        let Some(item) = upcoming else {
            return;
        };
        let index = item.key().index as usize;
        if let Some(slot) = self.slots.slot(index) {
            prefetch::prefetch_all(slot);
        }
    }

    /// Every key, in slot order (for shutdown and listings).
    pub fn keys(&self) -> Vec<Key> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.value.is_some())
            .map(|(index, slot)| Key {
                index: index as u32,
                generation: slot.timing.generation,
            })
            .collect()
    }

    /// Items in the deadline queue, live or stale (for memory accounting).
    pub fn queued_deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// True when `item` is the live heap item of a session.
    fn is_live(&self, item: Item) -> bool {
        let key = item.key();
        self.slots
            .timing(key.index as usize)
            .is_some_and(|t| t.generation == key.generation && t.scheduled == item.at())
    }

    /// Queues `key` at `due` ticks as its live item.
    fn push(&mut self, key: Key, due: u64) {
        if let Some(timing) = self.timing_mut(key) {
            timing.scheduled = due;
            self.deadlines.push(Item::new(due, key));
        }
    }

    /// `at` in nanoseconds since the epoch (saturating at both ends).
    fn ticks(&mut self, at: Instant) -> u64 {
        let epoch = *self
            .epoch
            .get_or_insert_with(|| at.checked_sub(EPOCH_MARGIN).unwrap_or(at));
        let since = at.saturating_duration_since(epoch);
        // u64::MAX is `NEVER`; 584 years after the epoch is as good as never.
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
            .min(NEVER - 1)
    }

    fn instant(&self, ticks: u64) -> Instant {
        // Only called for ticks made by `ticks`, so the epoch is set.
        let epoch = self.epoch.unwrap_or_else(Instant::now);
        epoch + Duration::from_nanos(ticks)
    }
}

/// One deadline queue item: the deadline in the high 64 bits, the slot index and generation
/// below, so that items order by deadline, then slot (as `(Instant, Key)` did) with a single
/// integer comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Item(u128);

impl Item {
    /// What fills the places past the end of the heap: later than any deadline.
    const VACANT: Item = Item(u128::MAX);

    fn new(at: u64, key: Key) -> Self {
        Item(u128::from(at) << 64 | u128::from(key.index) << 32 | u128::from(key.generation))
    }

    fn at(self) -> u64 {
        (self.0 >> 64) as u64
    }

    fn key(self) -> Key {
        Key {
            index: (self.0 >> 32) as u32,
            generation: self.0 as u32,
        }
    }
}

/// Sessions from which a table also queues deadlines in a timing wheel.
const WHEEL_MIN_SESSIONS: usize = 1024;
/// log2 of a wheel slot's width in ticks (nanoseconds): 16.8 ms.
const SLOT_BITS: u32 = 24;
/// Slots in the wheel: with 16.8 ms slots it covers the next 68.7 s.
const WHEEL_SLOTS: usize = 4096;
/// Words of the wheel's occupancy bitmap.
const WHEEL_WORDS: usize = WHEEL_SLOTS / 64;

/// The deadline queue: a heap, and for large tables a timing wheel in front of it.
///
/// With many sessions most deadlines (the next ping, a retransmission) lie within a minute,
/// and a heap of a million items costs a cache miss per level on every push and pop. Those
/// deadlines go to the wheel instead: O(1) to add, and when a slot's time comes its items are
/// sorted once into the run, popped in order, which also tells which sessions come next (the
/// table prefetches them). Deadlines outside the wheel's span, deadlines pushed into the slot
/// being run, and all of them in a small table go to the heap. Order is exact either way: the
/// earliest is the least of the heap's top and the run's next, and a slot is moved out before
/// any of its items could be the earliest.
#[derive(Debug, Default)]
struct DeadlineQueue {
    heap: DeadlineHeap,
    /// The items of the wheel slot moved out last, sorted latest first: popped from the end in
    /// order, and what comes next is known, so it can be prefetched a few items ahead.
    run: Vec<Item>,
    wheel: Option<Box<Wheel>>,
    /// Items in the wheel.
    in_wheel: usize,
}

/// How many items ahead of the one popped the table prefetches from the sorted run: far enough
/// that a memory access has a few items' handling to complete, near enough to stay in cache.
const PREFETCH_DISTANCE: usize = 4;

#[derive(Debug)]
struct Wheel {
    /// `slots[n % WHEEL_SLOTS]` holds the items of slot `n`, for `n` in
    /// `cursor .. cursor + WHEEL_SLOTS`.
    slots: Vec<Vec<Item>>,
    /// Which slots hold items.
    occupied: [u64; WHEEL_WORDS],
    /// The first slot not yet moved into the heap.
    cursor: u64,
    /// Emptied slot buffers, reused by the next slots that fill (no allocation per slot).
    spare: Vec<Vec<Item>>,
}

impl DeadlineQueue {
    fn len(&self) -> usize {
        self.heap.len() + self.run.len() + self.in_wheel
    }

    /// The item that will be the earliest `distance` pops from now, if the sorted run says so
    /// (the heap, small and rarely used beside a run, is not looked into).
    fn upcoming(&self, distance: usize) -> Option<Item> {
        let index = self.run.len().checked_sub(1 + distance)?;
        self.run.get(index).copied()
    }

    fn enable_wheel(&mut self) {
        if self.wheel.is_none() {
            // Everything queued so far stays in the heap; the wheel takes what comes after the
            // earliest of it.
            let cursor = self.heap.peek().map_or(0, |item| item.at() >> SLOT_BITS);
            self.wheel = Some(Box::new(Wheel {
                slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
                occupied: [0; WHEEL_WORDS],
                cursor,
                spare: Vec::new(),
            }));
        }
    }

    fn push(&mut self, item: Item) {
        if let Some(wheel) = &mut self.wheel {
            let slot = item.at() >> SLOT_BITS;
            if slot >= wheel.cursor && slot - wheel.cursor < WHEEL_SLOTS as u64 {
                let index = (slot % WHEEL_SLOTS as u64) as usize;
                let items = &mut wheel.slots[index];
                if items.capacity() == 0 {
                    if let Some(spare) = wheel.spare.pop() {
                        *items = spare;
                    }
                }
                items.push(item);
                wheel.occupied[index / 64] |= 1 << (index % 64);
                self.in_wheel += 1;
                return;
            }
        }
        self.heap.push(item);
    }

    /// The earliest of the heap's top and the run's next item.
    fn earliest_queued(&self) -> Option<Item> {
        match (self.heap.peek(), self.run.last()) {
            (Some(top), Some(&next)) => Some(top.min(next)),
            (top, next) => top.or(next.copied()),
        }
    }

    /// The earliest item, live or stale.
    fn earliest(&mut self) -> Option<Item> {
        loop {
            let queued = self.earliest_queued();
            let Some(wheel) = &mut self.wheel else {
                return queued;
            };
            let first_slot = if self.in_wheel == 0 {
                None
            } else {
                wheel.first_occupied()
            };
            match (queued, first_slot) {
                (Some(item), Some(slot)) if item.at() >> SLOT_BITS < slot => return Some(item),
                (item, None) => return item,
                (_, Some(slot)) => {
                    // The slot's items may be the earliest. Every item of the run belongs to an
                    // earlier slot, and none is left (else it would be earlier than the slot):
                    // the slot becomes the run, sorted.
                    debug_assert!(self.run.is_empty());
                    let index = (slot % WHEEL_SLOTS as u64) as usize;
                    let mut items = std::mem::take(&mut wheel.slots[index]);
                    wheel.occupied[index / 64] &= !(1 << (index % 64));
                    wheel.cursor = slot + 1;
                    self.in_wheel -= items.len();
                    items.sort_unstable_by(|a, b| b.cmp(a));
                    // Whatever the run still held (nothing, see above) goes to the heap; its
                    // buffer serves a later slot.
                    let mut old = std::mem::replace(&mut self.run, items);
                    for item in old.drain(..) {
                        self.heap.push(item);
                    }
                    wheel.spare.push(old);
                }
            }
        }
    }

    /// Removes the item [`DeadlineQueue::earliest`] returned.
    fn pop_earliest(&mut self) {
        match (self.heap.peek(), self.run.last()) {
            (Some(top), Some(&next)) if next < top => {
                self.run.pop();
            }
            (Some(_), _) => {
                self.heap.pop();
            }
            (None, _) => {
                self.run.pop();
            }
        }
    }
}

impl Wheel {
    /// The first slot from the cursor on that holds items.
    fn first_occupied(&self) -> Option<u64> {
        let start = (self.cursor % WHEEL_SLOTS as u64) as usize;
        let mut word = start / 64;
        let mut mask = u64::MAX << (start % 64);
        // One more word than there are: the start word again, for the slots before `start`.
        for _ in 0..=WHEEL_WORDS {
            let bits = self.occupied[word] & mask;
            if bits != 0 {
                let index = word * 64 + bits.trailing_zeros() as usize;
                let ahead = (index + WHEEL_SLOTS - start) % WHEEL_SLOTS;
                return Some(self.cursor + ahead as u64);
            }
            mask = u64::MAX;
            word = (word + 1) % WHEEL_WORDS;
        }
        None
    }
}

/// A 4-ary min-heap laid out in cache lines: the four children of a node are the four items of
/// one 64-byte line, so a sift touches one line per level (half the depth of a binary heap, and
/// with a million sessions only the lowest levels miss the cache).
#[derive(Debug, Default)]
struct DeadlineHeap {
    /// Position `p` lives at `p + PAD` in these lines.
    lines: Vec<Line>,
    len: usize,
}

/// Children per node.
const ARITY: usize = 4;
/// Empty places before the root, so that the children of position `p` (`4p + 1 ..= 4p + 4`)
/// start a line.
const PAD: usize = ARITY - 1;

/// Four heap items, aligned to a cache line.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Line([Item; ARITY]);

impl Default for Line {
    fn default() -> Self {
        Line([Item::VACANT; ARITY])
    }
}

impl DeadlineHeap {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, position: usize) -> Item {
        let at = position + PAD;
        self.lines[at / ARITY].0[at % ARITY]
    }

    fn set(&mut self, position: usize, item: Item) {
        let at = position + PAD;
        self.lines[at / ARITY].0[at % ARITY] = item;
    }

    fn peek(&self) -> Option<Item> {
        (self.len > 0).then(|| self.get(0))
    }

    fn push(&mut self, item: Item) {
        let mut hole = self.len;
        self.len += 1;
        if (self.len + PAD).div_ceil(ARITY) > self.lines.len() {
            self.lines.push(Line::default());
        }
        while hole > 0 {
            let parent = (hole - 1) / ARITY;
            let above = self.get(parent);
            if above <= item {
                break;
            }
            self.set(hole, above);
            hole = parent;
        }
        self.set(hole, item);
    }

    fn pop(&mut self) -> Option<Item> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let len = self.len;
        let last = self.get(len);
        self.set(len, Item::VACANT);
        if len == 0 {
            return Some(last);
        }
        let top = self.get(0);
        let mut hole = 0;
        loop {
            let first = hole * ARITY + 1;
            if first >= len {
                break;
            }
            // The children of `hole` are the whole line `hole + 1` (PAD makes it so); places
            // at or past `len` hold `Item::VACANT`, which never wins.
            let line = &self.lines[hole + 1].0;
            let (mut child, mut least) = (0, line[0]);
            for (c, &item) in line.iter().enumerate().skip(1) {
                if item < least {
                    (child, least) = (c, item);
                }
            }
            if least >= last {
                break;
            }
            self.set(hole, least);
            hole = first + child;
        }
        self.set(hole, last);
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A session of a peer, due at an instant.
    struct Fake(SocketAddr, Option<Instant>);
    impl Timed for Fake {
        fn poll_timeout(&self) -> Option<Instant> {
            self.1
        }
    }
    impl Addressed for Fake {
        fn peer(&self) -> SocketAddr {
            self.0
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn slots_grow_with_the_table_a_chunk_at_most_at_a_time() {
        // A DTLS connection or a client runs a table of one session: it must not pay for a
        // chunk of a thousand slots (it did, and a thousand DTLS sessions took 460 MB).
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        table.insert(Fake(addr(1), Some(t0)));
        let capacity = |table: &SessionTable<Fake>| -> usize {
            table.slots.chunks.iter().map(Vec::capacity).sum()
        };
        assert!(capacity(&table) <= 4, "{}", capacity(&table));
        for port in 2..=2500 {
            table.insert(Fake(addr(port), Some(t0)));
        }
        assert_eq!(table.slots.chunks.len(), 3);
        assert!(capacity(&table) <= 2 * CHUNK + 512, "{}", capacity(&table));
        for port in 1..=2500 {
            let key = table.key_of(&addr(port)).expect("every peer is found");
            assert_eq!(table.peer(key), Some(addr(port)));
        }
    }

    #[test]
    fn the_next_key_is_the_one_insert_returns_and_a_freed_slot_gets_a_new_generation() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        for port in 1..=3 {
            let next = table.next_key();
            assert_eq!(table.insert(Fake(addr(port), Some(t0))), next);
        }
        let old = table.key_of(&addr(2)).unwrap();
        table.remove(old);
        let next = table.next_key();
        assert_ne!(next, old, "a reused slot is a new key");
        assert_eq!(table.insert(Fake(addr(4), Some(t0))), next);
        // A handle's stale key (as bits) finds nothing, the new one its session.
        assert!(table.get(Key::from_bits(old.to_bits())).is_none());
        assert_eq!(table.peer(Key::from_bits(next.to_bits())), Some(addr(4)));
    }

    #[test]
    fn deadlines_pop_in_order_and_removed_sessions_never_fire() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        let a = table.insert(Fake(addr(1), Some(t0 + Duration::from_secs(3))));
        let b = table.insert(Fake(addr(2), Some(t0 + Duration::from_secs(1))));
        let c = table.insert(Fake(addr(3), Some(t0 + Duration::from_secs(2))));
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
        let a = table.insert(Fake(addr(1), Some(t0 + Duration::from_secs(5))));
        table.get_mut(a).unwrap().1 = Some(t0 + Duration::from_secs(9));
        table.reschedule(a);
        assert_eq!(
            table.queued_deadlines(),
            1,
            "no heap push for a later deadline"
        );
        table.get_mut(a).unwrap().1 = Some(t0 + Duration::from_secs(2));
        table.reschedule(a);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn stale_keys_do_not_reach_new_occupants() {
        let mut table = SessionTable::new();
        let a = table.insert(Fake(addr(1), None));
        table.remove(a);
        let b = table.insert(Fake(addr(2), None));
        assert!(table.get(a).is_none());
        assert!(table.get(b).is_some());
        assert_eq!(table.key_of(&addr(2)), Some(b));
        assert_eq!(table.key_of(&addr(1)), None);
    }
    #[test]
    fn a_deadline_that_moved_later_does_not_wake_the_session() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        let a = table.insert(Fake(addr(1), Some(t0 + Duration::from_secs(2))));
        // The ping was answered: the session now wants waking at 30 s, armed lazily.
        table.get_mut(a).unwrap().1 = Some(t0 + Duration::from_secs(30));
        table.reschedule(a);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(table.pop_due(t0 + Duration::from_secs(3)), None);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(table.pop_due(t0 + Duration::from_secs(30)), Some(a));
    }

    #[test]
    fn heap_pops_in_deadline_order_whatever_the_insertion_order() {
        let t0 = Instant::now();
        let mut table = SessionTable::new();
        let mut rng = crate::proto::rng::Rng::seeded(9);
        let mut expected = Vec::new();
        for port in 1..=2_000u16 {
            let at = t0 + Duration::from_micros(rng.next_u64() % 1_000_000);
            let key = table.insert(Fake(addr(port), Some(at)));
            expected.push((at, key));
        }
        expected.sort();
        let mut popped = Vec::new();
        while let Some(at) = table.next_deadline() {
            let key = table.pop_due(at).unwrap();
            assert_eq!(table.get(key).unwrap().1, Some(at), "exact instant back");
            popped.push((at, key));
            table.get_mut(key).unwrap().1 = None;
        }
        assert_eq!(popped, expected);
    }

    #[test]
    fn ipv6_peers_are_distinct_keys() {
        let mut table = SessionTable::new();
        let a: SocketAddr = "[::1]:7000".parse().unwrap();
        let b: SocketAddr = "[::1]:7001".parse().unwrap();
        let ka = table.insert(Fake(a, None));
        let kb = table.insert(Fake(b, None));
        assert_eq!(table.key_of(&a), Some(ka));
        assert_eq!(table.key_of(&b), Some(kb));
        assert_eq!(table.key_of(&addr(7000)), None);
    }
    #[test]
    fn deadline_heap_matches_a_sorted_model_under_mixed_pushes_and_pops() {
        let mut heap = DeadlineHeap::default();
        let mut model = std::collections::BTreeSet::new();
        let mut rng = crate::proto::rng::Rng::seeded(3);
        for step in 0..20_000u32 {
            if rng.next_u64().is_multiple_of(3) {
                assert_eq!(heap.pop(), model.pop_first());
            } else {
                let item = Item::new(
                    rng.next_u64() % 5_000,
                    Key {
                        index: step,
                        generation: 0,
                    },
                );
                heap.push(item);
                model.insert(item);
            }
            assert_eq!(heap.len(), model.len());
            assert_eq!(heap.peek(), model.first().copied());
        }
        while let Some(item) = model.pop_first() {
            assert_eq!(heap.pop(), Some(item));
        }
        assert_eq!(heap.pop(), None);
    }
    #[test]
    fn deadline_queue_with_wheel_matches_a_sorted_model() {
        let mut queue = DeadlineQueue::default();
        queue.enable_wheel();
        let mut model = std::collections::BTreeSet::new();
        let mut rng = crate::proto::rng::Rng::seeded(4);
        let mut now = 0u64;
        for step in 0..50_000u32 {
            if rng.next_u64().is_multiple_of(2) {
                let earliest = queue.earliest();
                assert_eq!(earliest, model.first().copied(), "step {step}");
                if let Some(item) = earliest {
                    queue.pop_earliest();
                    model.remove(&item);
                    now = item.at();
                }
            } else {
                // Mostly within a minute (the wheel), some far ahead (the heap), some late.
                let ahead = match rng.next_u64() % 10 {
                    0 => rng.next_u64() % 300_000_000_000,
                    1 => 0,
                    _ => rng.next_u64() % 40_000_000_000,
                };
                let at = (now + ahead).saturating_sub(rng.next_u64() % 2 * 1_000_000);
                let item = Item::new(
                    at,
                    Key {
                        index: step,
                        generation: 1,
                    },
                );
                queue.push(item);
                model.insert(item);
            }
            assert_eq!(queue.len(), model.len());
        }
        while let Some(item) = model.pop_first() {
            assert_eq!(queue.earliest(), Some(item));
            queue.pop_earliest();
        }
        assert_eq!(queue.earliest(), None);
    }

    #[test]
    fn large_table_pops_exactly_like_a_model_while_deadlines_move() {
        let t0 = Instant::now();
        let secs = |ns: u64| t0 + Duration::from_nanos(ns);
        let mut table = SessionTable::new();
        let mut rng = crate::proto::rng::Rng::seeded(5);
        let mut model = std::collections::BTreeMap::new();
        let mut keys = Vec::new();
        for i in 0..3_000u32 {
            let peer = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 9));
            let at = rng.next_u64() % 150_000_000_000;
            let key = table.insert(Fake(peer, Some(secs(at))));
            model.insert(key, at);
            keys.push(key);
        }
        for _ in 0..10_000 {
            let Some(next) = table.next_deadline() else {
                break;
            };
            let (&want_key, &want_at) = model
                .iter()
                .min_by_key(|(k, at)| (**at, **k))
                .expect("a session is due");
            assert_eq!(next, secs(want_at));
            assert_eq!(table.pop_due(next), Some(want_key));
            // The session ran its timers: its next deadline is later, or none.
            let ahead = rng.next_u64() % 100_000_000_000;
            if ahead.is_multiple_of(7) {
                table.get_mut(want_key).unwrap().1 = None;
                model.remove(&want_key);
            } else {
                table.get_mut(want_key).unwrap().1 = Some(secs(want_at + ahead));
                model.insert(want_key, want_at + ahead);
            }
            table.reschedule(want_key);
            // Another session's deadline comes earlier (a request went out), or it leaves.
            let other = keys[(rng.next_u64() % keys.len() as u64) as usize];
            match (rng.next_u64() % 10, model.get(&other).copied()) {
                (0, Some(_)) => {
                    table.remove(other);
                    model.remove(&other);
                }
                (1..=3, Some(at)) if at > want_at => {
                    let earlier = want_at + (at - want_at) / 2;
                    table.get_mut(other).unwrap().1 = Some(secs(earlier));
                    table.reschedule(other);
                    model.insert(other, earlier);
                }
                _ => {}
            }
        }
    }
}
