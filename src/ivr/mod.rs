//! IVR adapters. The gateway is the IVR application's logic (the association engine's dialogue);
//! an IVR platform only plays prompts and collects DTMF. Three adapters:
//! - the generic JSON webhook (`POST /v1/ivr/webhook`, HMAC-SHA256 signed), in [`crate::api`];
//! - [`twiml`]: Twilio and compatible platforms (`POST /v1/ivr/twiml`, form-encoded, signed with
//!   `X-Twilio-Signature`, answered in TwiML); its route is in [`crate::api`] too;
//! - [`fastagi`]: an Asterisk FastAGI server (default port 4573, script `agi://host/associate`).
//!
//! Each adapter has a [`Guard`] against context-id guessing: at most `ivr_guesses_per_minute`
//! unknown context ids across all its calls ([`guesses::GuessLimiter`]); beyond, a context entry
//! gets goodbye without reaching the engine. Unknown ids and refusals are counted for
//! `/metrics` and logged without the digits.

pub mod fastagi;
pub mod guesses;
pub mod prompts;
pub mod twiml;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::association::Millis;
use crate::log_gate::LogGate;
use guesses::GuessLimiter;

/// Default unknown context ids per minute per adapter (`ivr_guesses_per_minute`).
pub const GUESSES_PER_MINUTE: u32 = 30;
/// Webhook calls remembered past the context stage at most (the engine follows 10,000 at most).
const WEBHOOK_CALLS: usize = 10_000;

/// The engine's prompts saying a context id was not known (`src/association/ivr.rs`).
pub fn is_unknown_context(prompt: &str) -> bool {
    matches!(prompt, "unknown_context" | "unknown_context_bye")
}

/// The engine's prompts that ask for a context id: the next digits on the call are a context
/// entry (a guess, if it is not known).
pub fn asks_context(prompt: &str) -> bool {
    matches!(prompt, "enter_context" | "unknown_context")
}

/// Digits that can name a context id (at least one digit: an empty entry or a lone `#` names
/// none, and is not counted as a guess).
pub fn names_a_number(digits: Option<&str>) -> bool {
    digits.is_some_and(|d| d.bytes().any(|b| b.is_ascii_digit()))
}

/// The prompt id of the goodbye said to a context entry beyond the budget (the engine's own
/// `busy` prompt, so that adapters with recorded files already have one).
pub const REFUSED_PROMPT: &str = "busy";

/// The goodbye said to a context entry beyond the budget. It is decided without the engine (a
/// flood of guesses must not reach it), so before the call is tied to any PBX: in the default
/// language, with the shipped words.
pub fn refused_reply() -> crate::association::IvrReply {
    let language = prompts::DEFAULT_LANGUAGE;
    let say = prompts::Prompts::shipped_ref().render(language, REFUSED_PROMPT, &[]);
    crate::association::IvrReply { prompt: REFUSED_PROMPT, say, language: language.into(), gather: None, hangup: true }
}

/// One IVR adapter's guessing limit and counters. Shared by its connections or requests.
#[derive(Debug)]
pub struct Guard {
    adapter: &'static str,
    limiter: Mutex<GuessLimiter>,
    unknown: AtomicU64,
    refused: AtomicU64,
    refusal_log: Mutex<LogGate>,
}

impl Guard {
    pub fn new(adapter: &'static str, per_minute: u32) -> Guard {
        Guard {
            adapter,
            limiter: Mutex::new(GuessLimiter::new(per_minute)),
            unknown: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refusal_log: Mutex::new(LogGate::new(Duration::from_secs(10))),
        }
    }

    /// The adapter's name in metrics and logs (`fastagi`, `webhook`).
    pub fn adapter(&self) -> &'static str {
        self.adapter
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, GuessLimiter> {
        self.limiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a context entry on `call` reach the engine at `now`? When the budget is spent it may
    /// not: the refusal is counted and logged (without the digits), and the caller must say
    /// goodbye ([`REFUSED_PROMPT`]) and end the call.
    pub fn admit(&self, call: &str, now: Millis) -> bool {
        if !self.limiter().spent(now) {
            return true;
        }
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let gate = self.refusal_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pass();
        if let Some(suppressed) = gate {
            tracing::info!(adapter = self.adapter, %call, refused_total = n, suppressed, budget = self.limiter().budget(), "IVR: context id entry refused: too many unknown context ids in the last minute");
        }
        false
    }

    /// The engine answered a context entry with `prompt`: an unknown id is counted and logged
    /// (without the digits).
    pub fn answered(&self, call: &str, prompt: &str, now: Millis) {
        if is_unknown_context(prompt) {
            self.limiter().unknown(now);
            let n = self.unknown.fetch_add(1, Ordering::Relaxed) + 1;
            // At most `ivr_guesses_per_minute` a minute get here before the budget stops them
            // (plus the entries in flight when it ran out): not a flood.
            tracing::info!(adapter = self.adapter, %call, unknown_total = n, "IVR: unknown context id entered");
        }
    }

    /// Unknown context ids heard since start.
    pub fn unknown_total(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Context entries refused since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The adapters' guards and the FastAGI refusals, shared by the API (webhook, `/metrics`) and
/// the FastAGI server.
#[derive(Debug, Clone)]
pub struct IvrGuards {
    pub webhook: Arc<Guard>,
    pub twiml: Arc<Guard>,
    pub fastagi: Arc<Guard>,
    /// FastAGI connections from peers outside `fastagi_allow`, closed unread.
    pub fastagi_refused: Arc<AtomicU64>,
    /// The webhook's calls past the context stage.
    pub webhook_calls: Arc<Mutex<guesses::PastContext>>,
    /// The TwiML adapter's calls past the context stage.
    pub twiml_calls: Arc<Mutex<guesses::PastContext>>,
}

impl IvrGuards {
    /// Guards allowing `per_minute` unknown context ids per adapter.
    pub fn new(per_minute: u32) -> IvrGuards {
        IvrGuards {
            webhook: Arc::new(Guard::new("webhook", per_minute)),
            twiml: Arc::new(Guard::new("twiml", per_minute)),
            fastagi: Arc::new(Guard::new("fastagi", per_minute)),
            fastagi_refused: Arc::default(),
            webhook_calls: Arc::new(Mutex::new(guesses::PastContext::new(WEBHOOK_CALLS))),
            twiml_calls: Arc::new(Mutex::new(guesses::PastContext::new(WEBHOOK_CALLS))),
        }
    }
}

impl Default for IvrGuards {
    fn default() -> Self {
        IvrGuards::new(GUESSES_PER_MINUTE)
    }
}

/// An IP network (`127.0.0.0/8`, `::1/128`; a bare address is one host): `ipnet`'s network with
/// the gateway's stricter reading (no bits beyond the prefix) and IPv4-mapped peers taken as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is in the network. An IPv4 address written as IPv6 (`::ffff:127.0.0.1`, as a
    /// dual-stack listener sees IPv4 peers) is taken as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `address/prefix`, or an address alone (a host). Bits set beyond the prefix are refused
    /// (`10.0.0.5/8` is a typo for `10.0.0.5/32` or `10.0.0.0/8`; which, the gateway cannot tell).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let net = match s.parse::<ipnet::IpNet>() {
            Ok(n) => n,
            Err(_) if !s.contains('/') => ipnet::IpNet::from(s.parse::<IpAddr>().map_err(|_| format!("`{s}` is not an IP network (address/prefix, e.g. 10.0.0.0/24)"))?),
            Err(_) => return Err(format!("`{s}` is not an IP network (address/prefix, e.g. 10.0.0.0/24, the prefix 0 to 32 or 0 to 128)")),
        };
        if net.trunc() != net {
            return Err(format!("`{s}` has address bits set beyond the /{} prefix", net.prefix_len()));
        }
        Ok(Cidr(net))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The default `fastagi_allow`: loopback only.
pub fn loopback() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"].iter().filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_strictly_and_match() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains("127.0.0.2".parse().unwrap()));
        assert!(c.contains("::ffff:127.9.9.9".parse().unwrap()), "IPv4-mapped peers are IPv4");
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(h.to_string(), "127.0.0.1/32");
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.7".parse().unwrap()));
        for bad in ["10.0.0.5/8", "10.0.0.0/33", "::/129", "10.0.0/8", "localhost", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(loopback().len(), 2);
    }

    #[test]
    fn the_guard_refuses_once_the_budget_is_spent_and_counts() {
        let g = Guard::new("test", 2);
        let t = 1_000_000;
        assert!(g.admit("c1", t));
        g.answered("c1", "unknown_context", t);
        g.answered("c1", "confirm_account", t);
        assert!(g.admit("c1", t));
        g.answered("c1", "unknown_context_bye", t);
        assert!(!g.admit("c2", t + 1));
        assert!(!g.admit("c3", t + 2));
        assert_eq!((g.unknown_total(), g.refused_total()), (2, 2));
        assert!(g.admit("c4", t + guesses::WINDOW_MS));
    }
}
