//! Where the engine's identifiers come from: a clock epoch and a random source passed in, so
//! that an engine fed the same inputs with the same seed produces the same ids (and therefore
//! byte-identical output). A running broker seeds it from the operating system.

use std::time::{Duration, Instant, SystemTime};

use mpreg_protocol::PlanId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ulid::{Generator, Ulid};

/// Mints plan ids, message ids and subscription tokens.
pub struct IdSource {
    /// Monotonic ULIDs (plans, messages): sortable and unique, not secret.
    generator: Generator,
    /// A cryptographic generator (ChaCha): subscription tokens must be unguessable.
    rng: StdRng,
    epoch: Instant,
    wall_epoch: SystemTime,
}

impl IdSource {
    /// For a running broker: randomness from the operating system, wall time read once now.
    pub fn from_entropy(epoch: Instant) -> IdSource {
        IdSource::with_rng(StdRng::from_os_rng(), epoch, SystemTime::now())
    }

    /// Deterministic: the same seed, epoch and inputs give the same ids.
    pub fn seeded(seed: u64, epoch: Instant, wall_epoch: SystemTime) -> IdSource {
        IdSource::with_rng(StdRng::seed_from_u64(seed), epoch, wall_epoch)
    }

    fn with_rng(rng: StdRng, epoch: Instant, wall_epoch: SystemTime) -> IdSource {
        IdSource {
            generator: Generator::new(),
            rng,
            epoch,
            wall_epoch,
        }
    }

    /// The wall-clock time of `now`, as the engine's clock sees it (no clock read).
    fn wall(&self, now: Instant) -> SystemTime {
        self.wall_epoch + now.saturating_duration_since(self.epoch)
    }

    fn monotonic(&mut self, now: Instant) -> Ulid {
        let at = self.wall(now);
        match self
            .generator
            .generate_from_datetime_with_source(at, &mut self.rng)
        {
            Ok(id) => id,
            // 2^80 ids within one millisecond: move to the next one.
            Err(_) => {
                self.generator = Generator::new();
                Ulid::from_datetime_with_source(at + Duration::from_millis(1), &mut self.rng)
            }
        }
    }

    /// A seed for another deterministic generator (the failure detector's).
    pub fn seed(&mut self) -> u64 {
        use rand::RngCore;
        self.rng.next_u64()
    }

    /// A new plan id (also the plan's trace id).
    pub fn plan(&mut self, now: Instant) -> PlanId {
        PlanId(self.monotonic(now))
    }

    /// A new topic message id: unique and increasing per broker.
    pub fn message(&mut self, now: Instant) -> Ulid {
        self.monotonic(now)
    }

    /// A new subscription token: a timestamp and 80 fresh random bits, not monotonic (a token
    /// must not be derivable from the previous one).
    pub fn token(&mut self, now: Instant) -> String {
        format!(
            "s{}",
            Ulid::from_datetime_with_source(self.wall(now), &mut self.rng)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_determines_every_id() {
        let epoch = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let run = |seed| {
            let mut ids = IdSource::seeded(seed, epoch, wall);
            let later = epoch + Duration::from_millis(5);
            (
                ids.plan(epoch),
                ids.plan(epoch),
                ids.message(later),
                ids.token(later),
            )
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).3, run(8).3);
        let (a, b, m, t) = run(7);
        assert!(a < b, "plan ids increase");
        assert_eq!(m.timestamp_ms(), 1_700_000_000_005);
        assert_eq!(t.len(), 27);
    }

    #[test]
    fn tokens_are_not_sequential() {
        let epoch = Instant::now();
        let mut ids = IdSource::seeded(1, epoch, SystemTime::UNIX_EPOCH);
        let a: Ulid = ids.token(epoch)[1..].parse().unwrap();
        let b: Ulid = ids.token(epoch)[1..].parse().unwrap();
        assert_ne!(a.random().wrapping_add(1), b.random());
    }
}
