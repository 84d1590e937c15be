//! A session's occasional state (its requests, observations and block-wise transfers), held
//! behind one word until something needs it: most sessions only ping, and a table of a
//! hundred thousand idle ones should not carry a hundred bytes each of empty queues.

use std::ops::{Deref, DerefMut};

/// State a session holds only while something is in it.
pub(crate) trait Transient: Default + 'static {
    /// Nothing is left in it: it can be dropped.
    fn is_empty(&self) -> bool;

    /// The empty state read while none is allocated (a `static` of the implementing type: a
    /// generic container cannot hold one per type itself).
    fn empty() -> &'static Self;
}

/// A [`Transient`] state allocated on first write. Reading an unallocated one reads the
/// shared empty state, so lookups on the ping path allocate nothing.
#[derive(Debug, Default)]
pub(crate) struct LazyState<T>(Option<Box<T>>);

impl<T: Transient> LazyState<T> {
    /// Frees the state once nothing is left in it.
    pub(crate) fn release_if_empty(&mut self) {
        if self.0.as_deref().is_some_and(T::is_empty) {
            self.0 = None;
        }
    }

    /// The state, if one is allocated: for work that only ever touches what is there (a
    /// sweep of expired entries).
    pub(crate) fn allocated_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Whether a state is allocated.
    pub(crate) fn is_allocated(&self) -> bool {
        self.0.is_some()
    }

    /// Runs `f` on the state, allocating it only when `f` left something in it: work that
    /// usually stores nothing (a request answered at once) costs no allocation. An empty state
    /// holds only empty collections, so the stand-in allocates nothing either.
    pub(crate) fn update<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        if let Some(state) = self.0.as_deref_mut() {
            return f(state);
        }
        let mut state = T::default();
        let result = f(&mut state);
        if !state.is_empty() {
            self.0 = Some(Box::new(state));
        }
        result
    }
}

impl<T: Transient> Deref for LazyState<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(state) => state,
            None => T::empty(),
        }
    }
}

impl<T: Transient> DerefMut for LazyState<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Items {
        list: Vec<u32>,
    }

    impl Transient for Items {
        fn is_empty(&self) -> bool {
            self.list.is_empty()
        }

        fn empty() -> &'static Self {
            static EMPTY: Items = Items { list: Vec::new() };
            &EMPTY
        }
    }

    #[test]
    fn reads_allocate_nothing_and_an_emptied_state_is_freed() {
        let mut lazy: LazyState<Items> = LazyState::default();
        assert!(lazy.list.is_empty());
        assert!(!lazy.is_allocated());
        // Work that leaves nothing behind allocates nothing.
        lazy.update(|items| {
            items.list.push(1);
            items.list.pop()
        });
        assert!(!lazy.is_allocated());
        lazy.update(|items| items.list.push(2));
        assert!(lazy.is_allocated());
        lazy.list.clear();
        lazy.release_if_empty();
        assert!(!lazy.is_allocated());
        lazy.list.push(3);
        assert_eq!(lazy.list, [3]);
    }
}
