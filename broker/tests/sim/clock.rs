//! Simulated time and the event queue: time advances only when the next event is taken off the
//! queue, never by reading a clock. Events at the same instant run in the order they were
//! scheduled.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Microseconds since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SimTime(pub u64);

impl SimTime {
    /// The start of the run.
    pub const ZERO: SimTime = SimTime(0);

    /// `ms` milliseconds after the start.
    pub fn from_ms(ms: u64) -> SimTime {
        SimTime(ms * 1000)
    }

    /// `d` later.
    pub fn after(self, d: Duration) -> SimTime {
        SimTime(self.0 + d.as_micros() as u64)
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: SimTime) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>5}.{:03}ms", self.0 / 1000, self.0 % 1000)
    }
}

/// Maps simulated time onto the `Instant`s the engine takes. The epoch is read once per run
/// (an `Instant` cannot be built otherwise); nothing depends on its value.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose time zero is `epoch`.
    pub fn new(epoch: Instant) -> Clock {
        Clock { epoch }
    }

    /// The epoch.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The engine's `Instant` for `t`.
    pub fn instant(&self, t: SimTime) -> Instant {
        self.epoch + Duration::from_micros(t.0)
    }

    /// The simulated time of an engine `Instant`, rounded up to the microsecond.
    pub fn sim(&self, at: Instant) -> SimTime {
        let d = at.saturating_duration_since(self.epoch);
        SimTime(d.as_nanos().div_ceil(1000) as u64)
    }
}

/// Pending events in time order.
pub struct EventQueue<E> {
    now: SimTime,
    next_seq: u64,
    pending: BTreeMap<(SimTime, u64), E>,
}

impl<E> EventQueue<E> {
    /// An empty queue at time zero.
    pub fn new() -> EventQueue<E> {
        EventQueue {
            now: SimTime::ZERO,
            next_seq: 0,
            pending: BTreeMap::new(),
        }
    }

    /// The current simulated time: that of the event being handled.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// Schedules `event` at `when` (at the earliest now: time never runs backwards).
    pub fn at(&mut self, when: SimTime, event: E) {
        let when = when.max(self.now);
        self.pending.insert((when, self.next_seq), event);
        self.next_seq += 1;
    }

    /// Schedules `event` after `d`.
    pub fn after(&mut self, d: Duration, event: E) {
        self.at(self.now.after(d), event);
    }

    /// Takes the next event due at or before `horizon`, advancing the time to it.
    pub fn pop_until(&mut self, horizon: SimTime) -> Option<E> {
        let (&(when, seq), _) = self.pending.first_key_value()?;
        if when > horizon {
            return None;
        }
        self.now = when;
        self.pending.remove(&(when, seq))
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}
