//! The pauses between reconnection attempts: short at first, so a server restart costs the user
//! a moment only, doubling while the server stays away so a long outage is not hammered, and
//! jittered, so the clients of a restarted server do not all come back in the same millisecond.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(10);

pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { next: FIRST }
    }

    /// The next pause: between half and all of the current step, which then doubles up to
    /// [`MAX`].
    pub(super) fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(MAX);
        step.mul_f64(0.5 + 0.5 * random_fraction())
    }
}

/// A number in [0, 1) that differs from call to call: each `RandomState` is seeded anew, which
/// is all the randomness jitter needs.
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_maximum_with_jitter() {
        let mut backoff = Backoff::new();
        let steps = [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000];
        for step in steps.map(Duration::from_millis) {
            let pause = backoff.pause();
            assert!(pause >= step / 2 && pause <= step, "{pause:?} for a step of {step:?}");
        }
    }
}
