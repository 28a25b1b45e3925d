//! The delay line: a bounded FIFO of items, each released a fixed time after it arrived.
//!
//! No I/O and no clock of its own: every call takes `now`, so the rules are tested with fake
//! time. With one constant delay the release times grow with arrival order, so a FIFO keeps the
//! packets in order and the front is always the next one due.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Items waiting for their release time, at most `max_held` of them.
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Duration,
    max_held: usize,
    held: VecDeque<(Instant, T)>,
}

/// What [`DelayLine::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// The item is held until `now + delay`.
    Held,
    /// The line already holds `max_held` items: the item is handed back to be released at once.
    OverBound(T),
}

impl<T> DelayLine<T> {
    /// An empty line that holds each item for `delay`, and at most `max_held` items at once.
    pub fn new(delay: Duration, max_held: usize) -> Self {
        Self {
            delay,
            max_held,
            held: VecDeque::new(),
        }
    }

    /// Holds `item`, which arrived at `now`, unless the line is full.
    pub fn push(&mut self, now: Instant, item: T) -> Pushed<T> {
        if self.held.len() >= self.max_held {
            return Pushed::OverBound(item);
        }
        self.held.push_back((now + self.delay, item));
        Pushed::Held
    }

    /// The oldest item if its release time is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.held.front() {
            Some((due, _)) if *due <= now => self.held.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    /// The oldest item whatever its release time (used when shutting down).
    pub fn pop_any(&mut self) -> Option<T> {
        self.held.pop_front().map(|(_, item)| item)
    }

    /// When the next item is due, or `None` if nothing is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(30);

    #[test]
    fn item_is_released_only_after_the_delay() {
        let start = Instant::now();
        let mut line = DelayLine::new(DELAY, 10);
        assert_eq!(line.push(start, 1), Pushed::Held);
        assert_eq!(line.next_due(), Some(start + DELAY));
        assert_eq!(line.pop_due(start + Duration::from_millis(29)), None);
        assert_eq!(line.pop_due(start + DELAY), Some(1));
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn items_leave_in_arrival_order() {
        let start = Instant::now();
        let mut line = DelayLine::new(DELAY, 10);
        for (i, ms) in [0u64, 1, 1, 5].iter().enumerate() {
            line.push(start + Duration::from_millis(*ms), i);
        }
        let later = start + Duration::from_secs(1);
        let order: Vec<_> = std::iter::from_fn(|| line.pop_due(later)).collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn only_the_items_already_due_are_released() {
        let start = Instant::now();
        let mut line = DelayLine::new(DELAY, 10);
        line.push(start, 'a');
        line.push(start + Duration::from_millis(10), 'b');
        let at = start + Duration::from_millis(35);
        assert_eq!(line.pop_due(at), Some('a'));
        assert_eq!(line.pop_due(at), None);
        assert_eq!(line.next_due(), Some(start + Duration::from_millis(40)));
    }

    #[test]
    fn item_beyond_the_bound_is_handed_back() {
        let start = Instant::now();
        let mut line = DelayLine::new(DELAY, 2);
        assert_eq!(line.push(start, 1), Pushed::Held);
        assert_eq!(line.push(start, 2), Pushed::Held);
        assert_eq!(line.push(start, 3), Pushed::OverBound(3));
        // Once one leaves there is room again.
        assert_eq!(line.pop_due(start + DELAY), Some(1));
        assert_eq!(line.push(start + DELAY, 4), Pushed::Held);
    }

    #[test]
    fn shutdown_drains_everything_in_order() {
        let start = Instant::now();
        let mut line = DelayLine::new(DELAY, 10);
        line.push(start, 1);
        line.push(start, 2);
        assert_eq!(line.pop_any(), Some(1));
        assert_eq!(line.pop_any(), Some(2));
        assert_eq!(line.pop_any(), None);
    }
}
