//! Webhook signatures, shared by the IVR webhook (which checks them) and the account
//! notifications (which sign with them): HMAC-SHA256 over `"<timestamp>.<body>"`, and the replay
//! cache that refuses a signature seen before within the timestamp window.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::clock::now_ms;

/// The webhook's signature header: `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-cstagate-signature";
/// The webhook's timestamp header: Unix seconds when the platform signed the request.
pub const TIMESTAMP_HEADER: &str = "x-cstagate-timestamp";
/// How far a webhook timestamp may be from the gateway's clock, either way.
pub const WEBHOOK_WINDOW_SECS: u64 = 300;
/// Signatures remembered to refuse replays: enough for 160 requests per second over the
/// 600 s in which a timestamp is accepted; about 70 bytes each.
pub const REPLAY_CACHE_CAPACITY: usize = 100_000;

/// `sha256=<hex HMAC-SHA256(secret, message)>`: the webhook's and the account notifications'
/// signature primitive.
pub fn sign(secret: &str, message: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(message);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook signature of `body` sent at `timestamp` (Unix seconds): [`sign`] over
/// `"<timestamp>.<body>"`. The IVR platform signs with it and the gateway checks with it.
pub fn sign_webhook(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(body.len() + 21);
    msg.extend_from_slice(timestamp.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    sign(secret, &msg)
}

/// The two headers of a webhook request signed now: `[(TIMESTAMP_HEADER, ..), (SIGNATURE_HEADER, ..)]`.
pub fn webhook_headers(secret: &str, body: &[u8]) -> [(&'static str, String); 2] {
    let ts = now_ms() / 1000;
    [(TIMESTAMP_HEADER, ts.to_string()), (SIGNATURE_HEADER, sign_webhook(secret, ts, body))]
}

/// Signatures of accepted webhook requests, each kept until its timestamp leaves the window,
/// at most `capacity` of them. Full of live entries, it refuses new requests rather than forget
/// one (a forgotten signature could be replayed).
#[derive(Debug)]
pub struct ReplayCache {
    /// MAC → the second after which its timestamp is refused anyway.
    seen: HashMap<[u8; 32], u64>,
    capacity: usize,
    last_sweep: u64,
}

/// Why the replay cache refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before within the window.
    Seen,
    /// The cache is full of live signatures.
    Full,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache { seen: HashMap::new(), capacity, last_sweep: 0 }
    }

    /// Signatures held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Record `mac` of a request stamped `timestamp`, seen at `now` (Unix seconds); refuse a
    /// signature already recorded.
    ///
    /// # Errors
    /// [`Replay::Seen`] for a replay, [`Replay::Full`] when full of live signatures.
    pub fn check(&mut self, mac: [u8; 32], timestamp: u64, now: u64) -> Result<(), Replay> {
        if self.seen.get(&mac).is_some_and(|until| *until >= now) {
            return Err(Replay::Seen);
        }
        // Forget what has expired: when full, and otherwise every ten seconds.
        if self.seen.len() >= self.capacity || now >= self.last_sweep + 10 {
            self.seen.retain(|_, until| *until >= now);
            self.last_sweep = now;
        }
        if self.seen.len() >= self.capacity {
            return Err(Replay::Full);
        }
        self.seen.insert(mac, timestamp.saturating_add(WEBHOOK_WINDOW_SECS));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_refuses_replays_forgets_expired_entries_and_stays_bounded() {
        let mut c = ReplayCache::new(3);
        let t = 1_000_000;
        assert_eq!(c.check([1; 32], t, t), Ok(()));
        assert_eq!(c.check([1; 32], t, t + 1), Err(Replay::Seen));
        assert_eq!(c.check([2; 32], t, t), Ok(()));
        assert_eq!(c.check([3; 32], t + 200, t), Ok(()));
        // Full of live signatures: refused rather than forgotten.
        assert_eq!(c.check([4; 32], t, t), Err(Replay::Full));
        assert_eq!(c.len(), 3);
        // Once the first two timestamps have left the window, their room is reused.
        assert_eq!(c.check([4; 32], t + 301, t + 301), Ok(()));
        assert_eq!(c.len(), 2);
        assert_eq!(c.check([3; 32], t + 200, t + 301), Err(Replay::Seen));
    }

    #[test]
    fn webhook_signatures_cover_the_timestamp() {
        assert_ne!(sign_webhook("k", 1, b"{}"), sign_webhook("k", 2, b"{}"));
        assert_eq!(sign_webhook("k", 7, b"{}"), sign("k", b"7.{}"));
    }
}
