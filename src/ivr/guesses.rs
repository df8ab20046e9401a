//! How many unknown context ids an IVR adapter has heard in the last minute (sans-IO: the clock
//! is an argument). A context id is the association's only secret before the confirm prompt: the
//! engine ends a call after three unknown ids, but nothing stopped a caller from placing many
//! calls, so each adapter allows at most `per_minute` unknown ids across all its calls and says
//! goodbye to context entries beyond that until the oldest leaves the window.

use std::collections::{HashMap, VecDeque};

use crate::association::Millis;

/// The window: a sliding minute.
pub const WINDOW_MS: Millis = 60_000;

/// Unknown context ids heard in the last [`WINDOW_MS`], at most `per_minute` remembered.
#[derive(Debug, Clone)]
pub struct GuessLimiter {
    budget: usize,
    /// When each of the most recent unknown ids was heard, oldest first.
    heard: VecDeque<Millis>,
}

impl GuessLimiter {
    /// A limiter allowing `per_minute` unknown context ids per sliding minute (at least one).
    pub fn new(per_minute: u32) -> GuessLimiter {
        let budget = (per_minute as usize).max(1);
        GuessLimiter { budget, heard: VecDeque::with_capacity(budget) }
    }

    fn expire(&mut self, now: Millis) {
        while self.heard.front().is_some_and(|t| now.saturating_sub(*t) >= WINDOW_MS) {
            self.heard.pop_front();
        }
    }

    /// The budget is spent: `per_minute` unknown ids were heard in the last minute, so another
    /// context entry is refused without asking the engine.
    pub fn spent(&mut self, now: Millis) -> bool {
        self.expire(now);
        self.heard.len() >= self.budget
    }

    /// The engine found no association for a context id entered at `now`. Only the most recent
    /// `per_minute` are kept (more may be heard from calls already in flight when the budget
    /// ran out): that is all [`GuessLimiter::spent`] needs.
    pub fn unknown(&mut self, now: Millis) {
        self.expire(now);
        self.heard.push_back(now);
        while self.heard.len() > self.budget {
            self.heard.pop_front();
        }
    }

    /// Unknown ids held (at most the budget).
    pub fn len(&self) -> usize {
        self.heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }

    /// Unknown ids allowed per minute.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

/// The webhook's calls whose association the engine has found (past the context stage): their
/// digits are the confirm key or a code, not a context entry. The webhook is stateless
/// otherwise; a call it does not know is at the context stage.
#[derive(Debug, Clone)]
pub struct PastContext {
    /// Call id → its last request.
    calls: HashMap<String, Millis>,
    capacity: usize,
}

/// A call silent this long is forgotten (as the engine forgets it).
pub const FORGET_AFTER: Millis = 600_000;

impl PastContext {
    /// At most `capacity` calls (the engine follows at most 10,000); when full of live calls a
    /// new one is not remembered, and its digits count as context entries.
    pub fn new(capacity: usize) -> PastContext {
        PastContext { calls: HashMap::new(), capacity }
    }

    /// Whether `call` is past the context stage.
    pub fn contains(&self, call: &str, now: Millis) -> bool {
        self.calls.get(call).is_some_and(|t| now.saturating_sub(*t) < FORGET_AFTER)
    }

    /// After the engine's reply on `call`: `past` if the call is past the context stage and
    /// goes on; otherwise (a context prompt, or the call ends) it is forgotten.
    pub fn set(&mut self, call: &str, past: bool, now: Millis) {
        if !past {
            self.calls.remove(call);
            return;
        }
        if let Some(t) = self.calls.get_mut(call) {
            *t = now;
            return;
        }
        if self.calls.len() >= self.capacity {
            self.calls.retain(|_, t| now.saturating_sub(*t) < FORGET_AFTER);
        }
        if self.calls.len() < self.capacity {
            self.calls.insert(call.to_owned(), now);
        }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_past_the_context_stage_are_remembered_boundedly() {
        let mut p = PastContext::new(2);
        p.set("a", true, 0);
        p.set("b", true, 10);
        assert!(p.contains("a", 1) && p.contains("b", 11));
        p.set("c", true, 20);
        assert!(!p.contains("c", 21), "full of live calls: not remembered");
        assert!(!p.contains("a", FORGET_AFTER), "forgotten after ten silent minutes");
        p.set("c", true, FORGET_AFTER + 5);
        assert!(p.contains("c", FORGET_AFTER + 6), "room made from the silent ones");
        p.set("c", false, FORGET_AFTER + 7);
        assert!(!p.contains("c", FORGET_AFTER + 8));
        assert!(p.len() <= 2);
    }

    #[test]
    fn the_budget_holds_for_a_minute_after_each_guess() {
        let mut g = GuessLimiter::new(30);
        let t0: Millis = 1_700_000_000_000;
        // 30 unknown ids over 29 s: the 31st entry is refused.
        for i in 0..30 {
            assert!(!g.spent(t0 + i * 1000), "guess {i}");
            g.unknown(t0 + i * 1000);
        }
        assert!(g.spent(t0 + 29_000));
        assert!(g.spent(t0 + 59_999), "the first guess is still in the window");
        // A minute after the first guess, one entry is allowed again, and only one.
        assert!(!g.spent(t0 + 60_000));
        g.unknown(t0 + 60_000);
        assert!(g.spent(t0 + 60_000));
        // A minute after the last, all of it.
        assert!(!g.spent(t0 + 120_000));
        assert!(g.is_empty());
    }

    #[test]
    fn guesses_heard_beyond_the_budget_keep_it_spent_and_memory_bounded() {
        let mut g = GuessLimiter::new(3);
        let t0: Millis = 5_000_000;
        // Calls already past the check when the budget ran out still report unknown ids.
        for i in 0..1000 {
            g.unknown(t0 + i);
        }
        assert_eq!(g.len(), 3);
        assert!(g.spent(t0 + 1000));
        // The newest three are kept: spent until a minute after the last of them.
        assert!(g.spent(t0 + 997 + WINDOW_MS - 1));
        assert!(!g.spent(t0 + 997 + WINDOW_MS));
    }

    #[test]
    fn a_zero_budget_is_taken_as_one() {
        let mut g = GuessLimiter::new(0);
        assert_eq!(g.budget(), 1);
        assert!(!g.spent(0));
        g.unknown(0);
        assert!(g.spent(1));
    }
}
