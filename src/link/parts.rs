//! The link's sans-IO parts, each driven with an explicit `now` so they are tested without
//! sockets or clocks (`std::time::Instant`, no tokio): the ROSE invoke table, the request token
//! bucket, and reconnect backoff.

use std::collections::HashMap;
use std::time::Duration;

use std::time::Instant;

/// Our invoke ids, allocated per link and correlated with their answer. X.880 leaves the id
/// space to the invoker; PBXs commonly treat it as a 16-bit value, so ids run 1..=32767 and wrap,
/// skipping ids still outstanding. Each id is answered at most once: `take` removes it.
/// CSTA XML's ids are 4 ASCII digits with 9999 kept for events, so they run 1..=9998 there
/// ([`InvokeTable::with_max`]).
#[derive(Debug)]
pub struct InvokeTable<T> {
    next: i64,
    max: i64,
    pending: HashMap<i64, T>,
}

pub const MAX_INVOKE_ID: i64 = 32767;

impl<T> Default for InvokeTable<T> {
    fn default() -> Self {
        InvokeTable::with_max(MAX_INVOKE_ID)
    }
}

impl<T> InvokeTable<T> {
    /// Ids 1..=`max`.
    pub fn with_max(max: i64) -> Self {
        InvokeTable { next: 1, max: max.max(1), pending: HashMap::new() }
    }
    /// The highest id (and so the most requests outstanding at once).
    pub fn max(&self) -> i64 {
        self.max
    }
    /// Allocate an id for `entry`; `None` when all ids are outstanding.
    pub fn insert(&mut self, entry: T) -> Option<i64> {
        if self.pending.len() as i64 >= self.max {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if self.next >= self.max { 1 } else { self.next + 1 };
            if let std::collections::hash_map::Entry::Vacant(v) = self.pending.entry(id) {
                v.insert(entry);
                return Some(id);
            }
        }
    }
    pub fn take(&mut self, id: i64) -> Option<T> {
        self.pending.remove(&id)
    }
    pub fn len(&self) -> usize {
        self.pending.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// Remove and return the entries `expired` selects.
    pub fn drain_where(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<(i64, T)> {
        let ids: Vec<i64> = self.pending.iter().filter(|(_, t)| expired(t)).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.pending.remove(&id).map(|t| (id, t))).collect()
    }
    pub fn drain(&mut self) -> Vec<(i64, T)> {
        self.pending.drain().collect()
    }
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.pending.values()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &T)> {
        self.pending.iter()
    }
}

/// Token bucket for switching requests: `rate` tokens per second, bursts up to `capacity`
/// (at least one). Some PBXs accept only a few requests per second (OmniPCX Office: 2/s).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        let capacity = rate.max(1.0);
        TokenBucket { rate, capacity, tokens: capacity, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Take a token, or say how long until one is available.
    ///
    /// # Errors
    /// The wait until the next token.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Exponential reconnect backoff with full jitter between `min` and the current ceiling, so a
/// fleet of gateways does not reconnect in lock-step after a PBX restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, ceiling: min }
    }
    /// The next delay, given a uniform random number in `[0, 1)`.
    pub fn next(&mut self, unit: f64) -> Duration {
        let span = self.ceiling.saturating_sub(self.min).as_secs_f64();
        let d = self.min + Duration::from_secs_f64(span * unit.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(self.max);
        d
    }
    /// After a link that stayed up: start again from `min`.
    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_ids_wrap_and_skip_outstanding_ones() {
        let mut t = InvokeTable::default();
        assert_eq!(t.insert('a'), Some(1));
        assert_eq!(t.insert('b'), Some(2));
        assert_eq!(t.take(1), Some('a'));
        assert_eq!(t.take(1), None, "an id is answered once");
        t.next = MAX_INVOKE_ID;
        assert_eq!(t.insert('c'), Some(MAX_INVOKE_ID));
        assert_eq!(t.insert('d'), Some(1));
        assert_eq!(t.insert('e'), Some(3), "2 is still outstanding");
        let mut x = InvokeTable::with_max(9998);
        x.next = 9998;
        assert_eq!((x.insert('a'), x.insert('b')), (Some(9998), Some(1)), "XML ids wrap below 9999");
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let top: Vec<Duration> = (0..6).map(|_| b.next(1.0)).collect();
        assert_eq!(top.iter().map(Duration::as_secs).collect::<Vec<_>>(), vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(b.next(0.0), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_secs(1));
    }
}
