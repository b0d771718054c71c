//! The event trace of a replayed seed: every delivery, loss, timer and fault with its
//! simulated time, printed as it happens (so a panic still shows what led to it). Off unless
//! one seed is replayed; formatting is skipped when off. A digest of every delivered message
//! is kept either way, so that two runs of one seed can be compared.

use super::clock::SimTime;

/// Prints events when enabled; digests them always.
pub struct Trace {
    enabled: bool,
    digest: u64,
}

impl Trace {
    /// A trace that prints when `enabled`.
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// True when lines are printed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Prints one line at `now` (built only when enabled).
    pub fn line(&mut self, now: SimTime, line: impl FnOnce() -> String) {
        if self.enabled {
            println!("{now}  {}", line());
        }
    }

    /// Mixes bytes into the digest (FNV-1a).
    pub fn digest_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The digest of everything delivered so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}
