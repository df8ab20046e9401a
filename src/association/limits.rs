//! The limits that charge failures to whoever asked: failure counters and lock-out, the phone
//! owner's blocks, and the proof calls per extension and hour (see "Security rules" in `mod.rs`).

use super::model::*;
use super::*;

impl Engine {
    /// Failure counters in scope (admin), non-zero ones only.
    pub fn counters(&self, scope: &AdminScope) -> Vec<(CounterKey, u32)> {
        let mut v: Vec<(CounterKey, u32)> = self.counters.iter().filter(|(k, n)| **n > 0 && scope.counter(k)).map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    /// Owner blocks in scope still in force at `now` (admin).
    pub fn blocks(&self, scope: &AdminScope, now: Millis) -> Vec<OwnerBlock> {
        let mut v: Vec<OwnerBlock> = self.blocks.values().filter(|b| b.until > now && scope.block(b)).cloned().collect();
        v.sort_by(|a, b| (&a.pbx, &a.extension, &a.tenant, &a.account).cmp(&(&b.pbx, &b.extension, &b.tenant, &b.account)));
        v
    }

    /// The failure limits of whoever asked: the account, and the account on this extension.
    /// Another account's failures never lock out an extension's owner.
    pub(crate) fn locked_out(&self, pbx: &str, extension: &str, tenant: &str, account: &str) -> bool {
        let limit = self.policies.get(pbx).map_or(100, |p| p.lockout_after);
        CounterKey::charged(tenant, account, pbx, extension).iter().any(|k| self.counters.get(k).copied().unwrap_or(0) >= limit)
    }

    /// Until when the phone's owner has blocked `account` from `extension`, if they have.
    pub(super) fn blocked_until(&self, tenant: &str, account: &str, pbx: &str, extension: &str, now: Millis) -> Option<Millis> {
        self.blocks.get(&(tenant.into(), account.into(), pbx.into(), extension.into())).map(|b| b.until).filter(|u| *u > now)
    }

    /// Another proof call to the extension is allowed: under the extension's hourly limit, and
    /// under the requesting account's share of it (half, rounded up), so that no other account
    /// can spend all of an owner's proof calls.
    pub(super) fn proof_call_budget(&mut self, pbx: &str, ext: &str, tenant: &str, account: &str, now: Millis) -> Result<(), Refusal> {
        let limit = self.policies.get(pbx).map_or(3, |p| p.proof_calls_per_hour);
        let calls = self.proof_calls.entry((pbx.into(), ext.into())).or_default();
        calls.retain(|c| now.saturating_sub(c.at) < HOUR);
        let mine = calls.iter().filter(|c| c.tenant == tenant && c.account == account).count();
        if calls.len() >= limit || mine >= limit.div_ceil(2) {
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// The accounts whose failure counts the next input would judge or show, so that the
    /// shell can take them from the store first (with `[cluster]` other gateways add to them:
    /// [`Engine::set_counters`]): a create's account, the account of an association being
    /// completed, of an IVR call at the code prompt, and the accounts an admin reads or resets
    /// (of every configured tenant when the admin names none).
    pub fn accounts_judged(&self, input: Judged<'_>) -> Vec<(TenantId, AccountId)> {
        let of_assoc = |id: &str| self.assocs.get(id).map(|a| (a.view.tenant.clone(), a.view.account.clone()));
        match input {
            Judged::Api(ApiInput::Create { principal: Principal::Tenant(t), account, .. }) => vec![(t.clone(), account.clone())],
            Judged::Api(ApiInput::Complete { id, .. }) => of_assoc(id.as_str()).into_iter().collect(),
            Judged::Api(ApiInput::ResetCounters { scope, .. }) | Judged::Limits(scope) => match scope {
                AdminScope::Account { tenant: Some(t), account } => vec![(t.clone(), account.clone())],
                AdminScope::Account { tenant: None, account } => {
                    let tenants: std::collections::BTreeSet<&str> = self.policies.values().map(|p| p.tenant.as_str()).collect();
                    tenants.into_iter().map(|t| (TenantId::from(t), account.clone())).collect()
                }
                AdminScope::Extension { .. } => Vec::new(),
            },
            Judged::Api(_) => Vec::new(),
            Judged::IvrCall(call) => match self.ivr_calls.get(call).map(|c| &c.stage) {
                Some(Stage::AwaitCode { association, .. } | Stage::AwaitConfirm { association }) => of_assoc(association).into_iter().collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Failure counts as the store holds them, which count every gateway's failures (each
    /// committed before the next batch, so never below this engine's own): taken as the
    /// engine's.
    pub fn set_counters(&mut self, counts: Vec<(CounterKey, u32)>) {
        self.counters.extend(counts);
    }
}

/// An input whose accounts' failure counts matter ([`Engine::accounts_judged`]).
#[derive(Debug, Clone, Copy)]
pub enum Judged<'a> {
    Api(&'a ApiInput),
    /// An IVR request on this call.
    IvrCall(&'a str),
    /// An admin's read of counters.
    Limits(&'a AdminScope),
}
