//! Capped exponential backoff with jitter: the one retry policy of every outbound path
//! (upstream connects, upstream stream resumption).
//!
//! Only what is known not to have reached the other side is retried (a refused or timed-out
//! connect); callers decide that. Owns no I/O: it computes delays and keeps to a deadline.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a sequence of attempts is spaced.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2) }
    }
}

/// The state of one sequence of attempts that must end by a deadline.
#[derive(Debug)]
pub struct Attempts {
    policy: Backoff,
    next: Duration,
    deadline: Instant,
    /// Attempts made so far.
    pub made: u32,
}

impl Attempts {
    pub fn new(policy: Backoff, budget: Duration) -> Attempts {
        // A budget too large to add means "no deadline": a year is as good.
        let deadline = Instant::now().checked_add(budget).unwrap_or_else(|| Instant::now() + YEAR);
        Attempts { policy, next: policy.initial, deadline, made: 0 }
    }

    /// The delay before the next attempt ("full jitter" over the current step), or `None`
    /// when waiting it would pass the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.made += 1;
        let step = self.next.min(self.policy.max);
        self.next = (self.next * 2).min(self.policy.max);
        let delay = rand::thread_rng().gen_range(step / 2..=step);
        (Instant::now() + delay < self.deadline).then_some(delay)
    }

    /// Sleeps before the next attempt; `false` when the budget is spent.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let policy = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(400) };
        let mut a = Attempts::new(policy, Duration::from_secs(3600));
        let delays: Vec<Duration> = (0..6).map(|_| a.next_delay().unwrap()).collect();
        let steps = [100, 200, 400, 400, 400, 400];
        for (d, step) in delays.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(*d >= step / 2 && *d <= step, "{d:?} within [{:?}, {step:?}]", step / 2);
        }
        assert_eq!(a.made, 6);
    }

    #[test]
    fn the_deadline_ends_the_sequence() {
        let policy = Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(10) };
        let mut a = Attempts::new(policy, Duration::from_secs(1));
        assert_eq!(a.next_delay(), None);
    }
}
