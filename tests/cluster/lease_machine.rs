//! The lease state machine in virtual time (a fake monotonic clock: one `Instant` plus offsets,
//! no sleeps): renewal every ttl/3, giving a PBX up before the lease could expire whatever the
//! order of answers, the even share, releases, fencing.

use std::time::{Duration, Instant};

use cstagate::cluster::lease::{share, Change, Leases, LostWhy, Plan, Timing};

const TTL: Duration = Duration::from_secs(9);

fn pbxs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pbx{i:02}")).collect()
}

/// `me` owning the PBXs its first round (alone) lets it take, all acquired at `t0`.
fn owning(me: &str, n: usize, live: usize, t0: Instant) -> Leases {
    let mut l = Leases::new(me, pbxs(n), Timing { ttl: TTL }, t0);
    let plan = l.round(t0, live);
    for (i, p) in plan.acquire.iter().take(plan.want).enumerate() {
        assert!(matches!(l.acquired(p, Some(i as i64 + 1), t0, t0), Some(Change::Gained { .. })));
    }
    l
}

#[test]
fn timings_follow_the_ttl() {
    let t = Timing { ttl: TTL };
    assert_eq!((t.renew_every(), t.give_up()), (Duration::from_secs(3), Duration::from_secs(6)));
    // give_up < ttl always, renew_every < give_up: two renewals may fail before giving up.
    for ms in [3_000u64, 3_001, 10_000, 10_007, 3_600_000] {
        let t = Timing { ttl: Duration::from_millis(ms) };
        assert!(t.give_up() < t.ttl && t.renew_every() < t.give_up() && t.renew_every() * 2 <= t.give_up(), "{ms}");
    }
}

#[test]
fn the_share_is_the_ceiling_of_pbxs_over_live_instances() {
    assert_eq!([share(30, 3), share(31, 3), share(1, 3), share(0, 3), share(5, 0), share(5, 1)], [10, 11, 1, 0, 5, 5]);
}

#[test]
fn a_renewed_lease_is_kept_and_an_unrenewed_one_is_given_up_two_thirds_into_the_ttl() {
    let t0 = Instant::now();
    let mut l = owning("a", 2, 1, t0);
    assert_eq!(l.owned().len(), 2);
    // Rounds every 3 s; renewals answered at once keep the PBXs for as long as they come.
    let mut t = t0;
    for _ in 0..10 {
        assert_eq!(l.next_deadline(), t + Duration::from_secs(3));
        t += Duration::from_secs(3);
        assert!(l.tick(t).is_empty() && l.round_due(t));
        let plan = l.round(t, 1);
        assert_eq!((plan.renew.len(), plan.release.len(), plan.want), (2, 0, 0));
        for (p, e) in plan.renew {
            assert_eq!(l.renewed(&p, e, t, true), None);
        }
    }
    assert_eq!(l.owned().len(), 2);
    // Then the database stops answering: the PBXs are given up at last renewal + 6 s, not later
    // (the lease, sent at `t`, lives in the database until t + 9 s at least).
    let last = t;
    let _ = l.round(t + Duration::from_secs(3), 1);
    assert_eq!(l.next_deadline(), last + Duration::from_secs(6));
    assert!(l.tick(last + Duration::from_millis(5_999)).is_empty());
    let lost = l.tick(last + Duration::from_secs(6));
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|c| matches!(c, Change::Lost { why: LostWhy::NotRenewed, .. })));
    assert!(l.owned().is_empty());
    // A late "renewed" for the epoch given up does not bring it back.
    assert_eq!(l.renewed("pbx00", 1, last + Duration::from_secs(3), true), None);
    assert!(l.owned().is_empty());
}

#[test]
fn a_renewal_counts_from_when_it_was_sent_not_from_its_answer() {
    let t0 = Instant::now();
    let mut l = owning("a", 1, 1, t0);
    let sent = t0 + Duration::from_secs(3);
    let plan = l.round(sent, 1);
    // The answer comes 2.9 s late: the lease runs from `sent`, so the PBX is given up at
    // sent + 6 s, not answer + 6 s.
    let (p, e) = plan.renew[0].clone();
    assert_eq!(l.renewed(&p, e, sent, true), None);
    assert_eq!(l.next_deadline().min(sent + Duration::from_secs(6)), sent + Duration::from_secs(3));
    assert!(l.tick(sent + Duration::from_millis(5_999)).is_empty());
    assert_eq!(l.tick(sent + Duration::from_secs(6)).len(), 1);
    // An older renewal answered after a newer one never moves the time back.
    let mut l = owning("a", 1, 1, t0);
    let (p, e) = l.owned()[0].clone();
    assert_eq!(l.renewed(&p, e, t0 + Duration::from_secs(3), true), None);
    assert_eq!(l.renewed(&p, e, t0 + Duration::from_secs(1), true), None);
    assert!(l.tick(t0 + Duration::from_millis(8_999)).is_empty());
}

#[test]
fn a_refused_renewal_loses_the_pbx_at_once() {
    let t0 = Instant::now();
    let mut l = owning("a", 2, 1, t0);
    let t = t0 + Duration::from_secs(3);
    let plan = l.round(t, 1);
    let (p, e) = plan.renew[0].clone();
    assert_eq!(l.renewed(&p, e, t, false), Some(Change::Lost { pbx: p.clone(), epoch: e, why: LostWhy::Refused }));
    assert_eq!(l.epoch(&p), None);
    assert_eq!(l.owned().len(), 1);
    // Unknown PBX, wrong epoch: nothing.
    let (q, f) = l.owned()[0].clone();
    assert_eq!(l.renewed("nowhere", 1, t, false), None);
    assert_eq!(l.renewed(&q, f + 1, t, false), None);
    assert_eq!(l.epoch(&q), Some(f));
}

#[test]
fn a_lease_won_too_late_is_not_acted_on_and_a_lease_taken_elsewhere_is_not_owned() {
    let t0 = Instant::now();
    let mut l = Leases::new("a", pbxs(3), Timing { ttl: TTL }, t0);
    let plan = l.round(t0, 1);
    assert_eq!(plan.want, 3);
    // Alive elsewhere: no epoch.
    assert_eq!(l.acquired(&plan.acquire[0], None, t0, t0), None);
    // Answered 6 s after it was sent: as old as a lease to give up.
    assert_eq!(l.acquired(&plan.acquire[1], Some(4), t0, t0 + Duration::from_secs(6)), None);
    assert_eq!(l.acquired(&plan.acquire[2], Some(7), t0, t0 + Duration::from_millis(10)), Some(Change::Gained { pbx: plan.acquire[2].clone(), epoch: 7 }));
    // Twice: the second answer changes nothing.
    assert_eq!(l.acquired(&plan.acquire[2], Some(8), t0, t0), None);
    assert_eq!(l.owned(), vec![(plan.acquire[2].clone(), 7)]);
}

#[test]
fn an_instance_takes_its_share_and_releases_the_excess_when_others_come() {
    let t0 = Instant::now();
    // Alone with 10 PBXs: all of them.
    let mut a = owning("a", 10, 1, t0);
    assert_eq!(a.owned().len(), 10);
    // Two more instances are alive: the share is 4; six are released, four renewed, none wanted.
    let t = t0 + Duration::from_secs(3);
    let plan = a.round(t, 3);
    assert_eq!((plan.renew.len(), plan.release.len(), plan.want), (4, 6, 0));
    for (p, e) in &plan.release {
        assert!(matches!(a.release(p, *e), Some(Change::Lost { why: LostWhy::Released, .. })));
    }
    assert_eq!(a.owned().len(), 4);
    assert!(plan.release.iter().all(|(p, _)| a.epoch(p).is_none()) && plan.renew.iter().all(|(p, e)| a.epoch(p) == Some(*e)));
    // A newcomer wants its share, and every PBX it does not own is a candidate (the database
    // refuses the live ones).
    let mut b = Leases::new("b", pbxs(10), Timing { ttl: TTL }, t);
    let plan = b.round(t, 3);
    assert_eq!((plan.want, plan.acquire.len()), (4, 10));
}

#[test]
fn instances_try_the_pbxs_in_different_orders_and_every_pbx_is_a_candidate() {
    let t0 = Instant::now();
    let firsts: std::collections::HashSet<String> = ["gw-a", "gw-b", "gw-c", "gw-d", "gw-e"]
        .iter()
        .map(|me| {
            let plan = Leases::new(me, pbxs(30), Timing { ttl: TTL }, t0).round(t0, 5);
            let mut all = plan.acquire.clone();
            all.sort();
            assert_eq!(all, pbxs(30), "{me}");
            plan.acquire[0].clone()
        })
        .collect();
    assert!(firsts.len() > 1, "every instance starts with the same PBX: {firsts:?}");
}

#[test]
fn a_fenced_pbx_is_lost_and_only_for_its_epoch() {
    let t0 = Instant::now();
    let mut l = owning("a", 2, 1, t0);
    let (p, e) = l.owned()[0].clone();
    assert_eq!(l.fenced(&p, e + 1), None);
    assert_eq!(l.fenced(&p, e), Some(Change::Lost { pbx: p.clone(), epoch: e, why: LostWhy::Fenced }));
    assert_eq!(l.fenced(&p, e), None);
    assert_eq!(l.owned().len(), 1);
    // It is a candidate again in the next round.
    let plan: Plan = l.round(t0 + Duration::from_secs(3), 1);
    assert_eq!((plan.want, plan.acquire), (1, vec![p]));
}

/// Exhaustive over small schedules: whatever the answers (renewed at once, renewed late,
/// refused, none) in each of six rounds, at every instant (every 250 ms of virtual time) this
/// instance believes it owns the PBX, the database's lease — extended to `sent + ttl` by each
/// renewal it accepted — has a third of the ttl left at least; and a refusal loses the PBX at
/// once.
#[test]
fn never_owned_past_give_up_whatever_the_answers() {
    let t0 = Instant::now();
    let rounds = 6u32;
    for schedule in 0..4u32.pow(rounds) {
        let mut l = owning("a", 1, 1, t0);
        let (pbx, epoch) = l.owned()[0].clone();
        // The lease's end in the database: acquired at t0.
        let mut expires = t0 + TTL;
        let mut s = schedule;
        let mut pending: Vec<(Instant, Instant, bool)> = Vec::new();
        let mut refused = false;
        for step in 0..(rounds * 12 + 40) {
            let t = t0 + Duration::from_millis(250) * step;
            let mut due: Vec<_> = pending.iter().filter(|(at, ..)| *at <= t).copied().collect();
            pending.retain(|(at, ..)| *at > t);
            due.sort_by_key(|(at, ..)| *at);
            for (_, sent, ok) in due {
                if ok && !refused {
                    expires = expires.max(sent + TTL);
                }
                refused |= !ok;
                let change = l.renewed(&pbx, epoch, sent, ok);
                if !ok {
                    assert!(l.epoch(&pbx).is_none(), "schedule {schedule}: still owned after a refusal: {change:?}");
                }
            }
            l.tick(t);
            if l.epoch(&pbx).is_some() {
                assert!(!refused, "schedule {schedule}: owned after a refusal");
                assert!(t + TTL / 3 <= expires, "schedule {schedule}, {t:?}: owned with less than ttl/3 of lease left");
                assert!(l.give_up_at().is_some_and(|g| g > t), "schedule {schedule}: a give-up in the past still owned");
            }
            if l.round_due(t) && step < rounds * 12 {
                let answer = s % 4;
                s /= 4;
                for (_, _) in l.round(t, 1).renew {
                    match answer {
                        0 => pending.push((t, t, true)),
                        1 => pending.push((t + Duration::from_millis(2_500), t, true)),
                        2 => pending.push((t + Duration::from_millis(250), t, false)),
                        _ => {}
                    }
                }
            }
        }
        // No round for 10 s at the end: given up, whatever came before.
        assert!(l.epoch(&pbx).is_none(), "schedule {schedule}: still owned without renewals");
    }
}
