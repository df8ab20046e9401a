//! The lease state machine of one instance, sans IO: which PBXs it owns, when to renew, when to
//! give a PBX up, which leases to try to take and which to hand back. The shell
//! ([`super::shell`]) runs the SQL it asks for and reports the results here, with the instant it
//! *sent* each statement, read from the monotonic clock: the database sets `expires_at` to its
//! own `now() + ttl` when it receives the statement, which is after the sending, so a lease this
//! instance believes valid until `sent + ttl` is valid at least that long in the database
//! (clocks run at the same rate; the wall clocks are never compared).
//!
//! **Why the owner gives up before the lease expires.** Another instance takes a PBX as soon as
//! the database sees its lease expired. An owner that could not renew (database unreachable,
//! process paused) must therefore have closed its CSTA link and stopped acting for the PBX by
//! then: it gives the PBX up once its last successful renewal is [`Timing::give_up`] old, a third
//! of the ttl before the lease can expire, a margin for the link's close to reach the PBX.
//! A paused process cannot act on time, which is why its writes are fenced by the epoch too
//! (`crate::store::postgres`): after the pause, the database refuses them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The lease's timings, all derived from `lease_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
}

impl Timing {
    /// Renew every third of the ttl: two renewals may fail before the PBX is given up.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
    /// Give a PBX up when the last successful renewal is this old: ttl − ttl/3.
    pub fn give_up(&self) -> Duration {
        self.ttl - self.ttl / 3
    }
}

/// One PBX's lease as this instance knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Not owned (free, another's, or given up).
    No,
    /// Owned with `epoch`; `renewed` is when the last successful acquire or renewal was sent.
    Yes { epoch: i64, renewed: Instant },
}

/// Why this instance stopped owning a PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostWhy {
    /// The last renewal is too old (the database did not answer in time, the process paused).
    NotRenewed,
    /// The database refused the renewal: the lease expired or another instance holds it.
    Refused,
    /// Handed back to spread the PBXs over more instances.
    Released,
    /// The store refused a write carrying this epoch (fenced).
    Fenced,
}

/// What changed for one PBX: the shell starts or closes its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Gained { pbx: String, epoch: i64 },
    Lost { pbx: String, epoch: i64, why: LostWhy },
}

/// What one round asks of the database, in this order: renew what is owned, hand back the
/// excess, then try the candidates until `want` more are owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub renew: Vec<(String, i64)>,
    pub release: Vec<(String, i64)>,
    /// PBXs not owned here, in the order to try; the database takes only free or expired ones.
    pub acquire: Vec<String>,
    /// How many of `acquire` to take at most.
    pub want: usize,
}

/// The leases of one instance.
#[derive(Debug)]
pub struct Leases {
    timing: Timing,
    pbxs: BTreeMap<String, Held>,
    /// Where this instance starts in the list of candidates (from its id), so that instances
    /// starting together try different PBXs first rather than all race for the first one.
    offset: usize,
    next_round: Instant,
}

/// The share of `total` PBXs each of `live` instances aims at: ceil(total / live).
pub fn share(total: usize, live: usize) -> usize {
    total.div_ceil(live.max(1))
}

impl Leases {
    /// The leases of instance `me` over `pbxs` (none owned yet); the first round is due at `now`.
    pub fn new(me: &str, pbxs: impl IntoIterator<Item = String>, timing: Timing, now: Instant) -> Leases {
        let pbxs: BTreeMap<String, Held> = pbxs.into_iter().map(|p| (p, Held::No)).collect();
        // FNV-1a of the id: stable across runs and platforms.
        let hash = me.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        let offset = if pbxs.is_empty() { 0 } else { (hash % pbxs.len() as u64) as usize };
        Leases { timing, pbxs, offset, next_round: now }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The PBXs owned now, with their epochs.
    pub fn owned(&self) -> Vec<(String, i64)> {
        self.pbxs.iter().filter_map(|(p, h)| match h {
            Held::Yes { epoch, .. } => Some((p.clone(), *epoch)),
            Held::No => None,
        }).collect()
    }

    /// `pbx`'s epoch, when owned.
    pub fn epoch(&self, pbx: &str) -> Option<i64> {
        match self.pbxs.get(pbx) {
            Some(Held::Yes { epoch, .. }) => Some(*epoch),
            _ => None,
        }
    }

    /// When [`Leases::tick`] must run next: the next round, or the moment an owned PBX must be
    /// given up, whichever comes first.
    pub fn next_deadline(&self) -> Instant {
        self.give_up_at().map_or(self.next_round, |g| g.min(self.next_round))
    }

    /// When the first owned PBX must be given up, if any is owned.
    pub fn give_up_at(&self) -> Option<Instant> {
        self.pbxs.values().filter_map(|h| match h {
            Held::Yes { renewed, .. } => Some(*renewed + self.timing.give_up()),
            Held::No => None,
        }).min()
    }

    /// Give up the PBXs whose last renewal is too old at `now`; the shell closes their links.
    /// Call it at [`Leases::next_deadline`] and before acting on a round's results.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let give_up = self.timing.give_up();
        let mut lost = Vec::new();
        for (pbx, h) in &mut self.pbxs {
            if let Held::Yes { epoch, renewed } = *h {
                if now.saturating_duration_since(renewed) >= give_up {
                    *h = Held::No;
                    lost.push(Change::Lost { pbx: pbx.clone(), epoch, why: LostWhy::NotRenewed });
                }
            }
        }
        lost
    }

    /// Whether a round is due at `now`.
    pub fn round_due(&self, now: Instant) -> bool {
        now >= self.next_round
    }

    /// The round due at `now`, with `live` instances alive (heartbeat newer than the ttl, this
    /// one included): renew everything owned, release what exceeds the share (the last PBXs in
    /// order), and try to take the missing part of the share. The next round is due a third of
    /// the ttl later.
    pub fn round(&mut self, now: Instant, live: usize) -> Plan {
        self.next_round = now + self.timing.renew_every();
        let target = share(self.pbxs.len(), live);
        let owned = self.owned();
        let release: Vec<(String, i64)> = owned.iter().skip(target).cloned().collect();
        let keep = owned.len().min(target);
        let renew = owned.into_iter().take(keep).collect();
        let n = self.pbxs.len();
        let acquire = self.pbxs.iter().enumerate().cycle().skip(self.offset).take(n).filter(|(_, (_, h))| **h == Held::No).map(|(_, (p, _))| p.clone()).collect();
        Plan { renew, release, acquire, want: target.saturating_sub(keep) }
    }

    /// The answer to a renewal of `pbx` with `epoch` sent at `sent`: `ok` when the database
    /// extended the lease. A refusal loses the PBX at once; an answer for an epoch no longer
    /// held changes nothing.
    pub fn renewed(&mut self, pbx: &str, epoch: i64, sent: Instant, ok: bool) -> Option<Change> {
        let h = self.pbxs.get_mut(pbx)?;
        match *h {
            Held::Yes { epoch: e, renewed } if e == epoch => {
                if ok {
                    *h = Held::Yes { epoch, renewed: renewed.max(sent) };
                    None
                } else {
                    *h = Held::No;
                    Some(Change::Lost { pbx: pbx.to_owned(), epoch, why: LostWhy::Refused })
                }
            }
            _ => None,
        }
    }

    /// The answer to an acquire of `pbx` sent at `sent`: the new epoch, or `None` when the lease
    /// is alive elsewhere. A lease won after `give_up` is already too old to act on: not taken
    /// (it expires in the database, and the next round tries again).
    pub fn acquired(&mut self, pbx: &str, epoch: Option<i64>, sent: Instant, now: Instant) -> Option<Change> {
        let epoch = epoch?;
        if now.saturating_duration_since(sent) >= self.timing.give_up() {
            return None;
        }
        let h = self.pbxs.get_mut(pbx)?;
        if *h != Held::No {
            return None;
        }
        *h = Held::Yes { epoch, renewed: sent };
        Some(Change::Gained { pbx: pbx.to_owned(), epoch })
    }

    /// `pbx` handed back (its release is sent, or about to be): no longer owned from now.
    pub fn release(&mut self, pbx: &str, epoch: i64) -> Option<Change> {
        self.drop_with(pbx, epoch, LostWhy::Released)
    }

    /// The store refused a write carrying `pbx`'s `epoch`: the PBX is lost.
    pub fn fenced(&mut self, pbx: &str, epoch: i64) -> Option<Change> {
        self.drop_with(pbx, epoch, LostWhy::Fenced)
    }

    fn drop_with(&mut self, pbx: &str, epoch: i64, why: LostWhy) -> Option<Change> {
        let h = self.pbxs.get_mut(pbx)?;
        match *h {
            Held::Yes { epoch: e, .. } if e == epoch => {
                *h = Held::No;
                Some(Change::Lost { pbx: pbx.to_owned(), epoch, why })
            }
            _ => None,
        }
    }
}
