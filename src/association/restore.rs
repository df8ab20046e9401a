//! Restart: the [`Snapshot`] the store gives back, [`Engine::restore`] from it, and what a
//! shutdown leaves for the next start (the live calls to clear, the in-flight associations).

use std::collections::HashMap;

use super::model::*;
use super::*;

/// What the store holds, to rebuild the engine after a restart.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub bindings: Vec<Binding>,
    pub counters: Vec<(CounterKey, u32)>,
    pub proof_calls: Vec<ProofCall>,
    pub blocks: Vec<OwnerBlock>,
    /// Associations that were not final when the gateway stopped.
    pub in_flight: Vec<AssociationView>,
}

impl Engine {
    /// Rebuild from the store after a restart. Associations in flight cannot go on (their code
    /// was never stored and their call is gone): they end as failed with `gateway_restarted`.
    pub fn restore<K: Into<PbxId>>(policies: HashMap<K, Policy>, snap: Snapshot, now: Millis) -> (Engine, Vec<Action>) {
        let mut e = Engine::new(policies);
        for b in snap.bindings {
            e.bindings.insert((b.pbx.clone(), b.extension.clone()), b);
        }
        e.counters.extend(snap.counters);
        for c in snap.proof_calls {
            if now.saturating_sub(c.at) < HOUR {
                e.proof_calls.entry((c.pbx.clone(), c.extension.clone())).or_default().push(c);
            }
        }
        for b in snap.blocks {
            if b.until > now {
                e.blocks.insert(b.key(), b);
            }
        }
        let actions = e.end_orphans(snap.in_flight, now);
        (e, actions)
    }

    /// `[cluster]`: act only for the PBXs in `pbxs` from now on (`None`, one gateway alone: for
    /// every PBX of the policies). A request for another PBX is refused
    /// ([`Refusal::NotServed`]) before anything is decided: nothing is written for a PBX whose
    /// lease this instance does not hold. A PBX gained is added by [`Engine::adopt_pbx`], one
    /// lost taken out by [`Engine::stop_serving`] or [`Engine::drop_pbx`].
    pub fn set_served(&mut self, pbxs: Option<std::collections::HashSet<PbxId>>) {
        self.served = pbxs;
    }

    /// The PBXs this engine acts for, when not all ([`Engine::set_served`]).
    pub fn served(&self) -> Option<&std::collections::HashSet<PbxId>> {
        self.served.as_ref()
    }

    /// `[cluster]`: a write batch for `pbx` was refused by the database (fenced: another
    /// instance holds its lease now). The engine stops acting for it at once and forgets its
    /// live associations *without a write* (their ends are the new owner's to store, as
    /// `gateway_restarted`); the actions that would end them here are dropped, the calls too
    /// (the new owner clears them through its own link). Other PBXs are untouched.
    pub fn drop_pbx(&mut self, pbx: &str, now: Millis) {
        let _ = self.pbx_removed(pbx, now);
        if let Some(s) = &mut self.served {
            s.remove(pbx);
        }
    }

    /// End associations left in flight by a gateway that is gone (this one before a restart, or
    /// with `[cluster]` the dead previous owner of a PBX this instance just took over): each
    /// not final and not followed by this engine ends failed with `gateway_restarted`, audited,
    /// the account told, and the proof call it left up cleared (its call id is in the view).
    pub fn end_orphans(&mut self, in_flight: Vec<AssociationView>, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        for mut v in in_flight {
            if v.state.is_final(v.retryable) || self.assocs.contains_key(v.id.as_str()) {
                continue;
            }
            v.state = State::Failed;
            v.reason = Some(Reason::GatewayRestarted);
            v.retryable = false;
            push_history(&mut v.history, Step { at: now, step: "failed".into(), detail: "gateway restarted while the association was in flight".into() });
            actions.push(audit(&v, now, "failed", "gateway_restarted"));
            // The call the previous run placed may still be up (ringing, or in the IVR).
            if let Some(call) = v.call.take() {
                let rid = RequestId(self.next_request);
                self.next_request += 1;
                actions.push(Action::Csta { id: rid, association: v.id.clone(), pbx: v.pbx.clone(), request: CstaRequest::ClearConnection { call, extension: v.extension.clone() } });
            }
            actions.push(Action::Notify { tenant: v.tenant.clone(), account: v.account.clone(), event: "failed".into(), association: v.id.clone() });
            actions.push(Action::Store(StoreWrite::Association(v)));
        }
        actions
    }

    /// `[cluster]`: this gateway just took `pbx` over from another, which changed it in the
    /// store meanwhile: what the engine held of it (bindings, owner blocks, proof calls, the
    /// accounts' counters on its extensions) is replaced by what `snap` (the store, read now)
    /// holds, the PBX is served from now on, and the associations the previous owner left in
    /// flight there end as [`Engine::end_orphans`] ends them.
    pub fn adopt_pbx(&mut self, pbx: &str, snap: Snapshot, now: Millis) -> Vec<Action> {
        self.forget_pbx(pbx);
        for b in snap.bindings.into_iter().filter(|b| b.pbx.as_str() == pbx) {
            self.bindings.insert((b.pbx.clone(), b.extension.clone()), b);
        }
        self.counters.extend(snap.counters.into_iter().filter(|(k, _)| k.extension().is_some_and(|(p, _)| p == pbx)));
        for c in snap.proof_calls.into_iter().filter(|c| c.pbx.as_str() == pbx && now.saturating_sub(c.at) < HOUR) {
            self.proof_calls.entry((c.pbx.clone(), c.extension.clone())).or_default().push(c);
        }
        // (The store gives the blocks in force; one that ends is never judged past its end.)
        for b in snap.blocks.into_iter().filter(|b| b.pbx.as_str() == pbx) {
            self.blocks.insert(b.key(), b);
        }
        let left: Vec<AssociationView> = snap.in_flight.into_iter().filter(|v| v.pbx.as_str() == pbx).collect();
        // Served from now on: what the previous owner did there is read back.
        self.served.get_or_insert_default().insert(PbxId::from(pbx));
        self.end_orphans(left, now)
    }

    /// `[cluster]`: `pbx` went to another gateway (its associations here ended already): it is
    /// no longer acted for, and what the engine held of it is forgotten ([`Engine::forget_pbx`]).
    /// Nothing with one gateway alone (a PBX a reload removes keeps its bindings in memory).
    pub fn stop_serving(&mut self, pbx: &str) {
        if let Some(served) = &mut self.served {
            served.remove(pbx);
            self.forget_pbx(pbx);
        }
    }

    /// `[cluster]`: `pbx` went to another gateway (its associations here ended already): what
    /// the engine held of it is forgotten, since only its owner changes it from now on
    /// ([`Engine::adopt_pbx`] reads it back if it returns).
    pub fn forget_pbx(&mut self, pbx: &str) {
        self.bindings.retain(|(p, _), _| p.as_str() != pbx);
        self.counters.retain(|k, _| k.extension().is_none_or(|(p, _)| p != pbx));
        self.proof_calls.retain(|(p, _), _| p.as_str() != pbx);
        self.blocks.retain(|(_, _, p, _), _| p.as_str() != pbx);
    }

    /// The proof calls of the live associations (and the lock calls of those still waiting for
    /// theirs to end), as `(association, pbx, extension, call)`: the calls a stopping gateway
    /// clears before it ends their associations.
    pub fn live_calls(&self) -> Vec<(AssociationId, PbxId, Extension, CallId)> {
        let lock = |a: &Assoc| if a.view.state == State::Locking { a.lock_call.clone() } else { None };
        self.by_ext.values().filter_map(|id| self.assocs.get(id)).flat_map(|a| [a.view.call.clone(), lock(a)].into_iter().flatten().map(|c| (a.view.id.clone(), a.view.pbx.clone(), a.view.extension.clone(), c))).collect()
    }

    /// The gateway stops: every live association ends as a restart would end it (failed,
    /// `gateway_restarted`, audited, the account told), except those in `left_up`, whose proof
    /// call may still be up (its ClearConnection did not get through): they stay in flight in the
    /// store, so that the next start ends them and clears their call. The calls of the others
    /// are cleared already (see [`Engine::live_calls`]).
    pub fn shutdown(&mut self, now: Millis, left_up: &[AssociationId]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut ids: Vec<AssociationId> = self.by_ext.values().filter(|id| !left_up.contains(id)).cloned().collect();
        ids.sort();
        for id in ids {
            if let Some(a) = self.assocs.get_mut(id.as_str()) {
                a.view.call = None;
                a.lock_call = None;
            }
            self.finish(&id, State::Failed, Some(Reason::GatewayRestarted), "the gateway stopped while the association was in flight", now, &mut actions);
        }
        self.rearm();
        actions
    }
}
