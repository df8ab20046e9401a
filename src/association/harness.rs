//! One union of the engine's inputs with one answer, for the tests and the fuzz oracle that
//! drive arbitrary sequences of them and trace them uniformly. The shells use the typed entry
//! points ([`Engine::api`], [`Engine::ivr`], [`Engine::csta`], [`Engine::handle_timeout`]).

use super::*;

/// Any engine input.
#[derive(Debug, Clone)]
pub enum Input {
    Create { principal: Principal, account: AccountId, account_name: Option<String>, pbx: Option<PbxId>, extension: Extension, id: AssociationId, random: String, code: String, now: Millis },
    Complete { principal: Principal, id: AssociationId, random: String, now: Millis },
    Cancel { principal: Principal, id: AssociationId, now: Millis },
    CstaDone { id: RequestId, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis },
    CstaEvent { pbx: PbxId, extension: Extension, event: CallEvent, now: Millis },
    LinkDown { pbx: PbxId, now: Millis },
    Ivr { call: String, from: String, to: String, digits: Option<String>, now: Millis },
    IvrHangup { call: String, now: Millis },
    /// [`Engine::handle_timeout`] at `now`.
    Timeout { now: Millis },
    Unbind { principal: Principal, account: Option<AccountId>, pbx: PbxId, extension: Extension, now: Millis },
    ResetCounters { scope: AdminScope, now: Millis },
    LiftBlocks { scope: AdminScope, now: Millis },
}

/// Any input's answer, flattened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub actions: Vec<Action>,
    pub view: Option<AssociationView>,
    pub code: Option<String>,
    pub error: Option<Refusal>,
    pub ivr: Option<IvrReply>,
    pub ivr_wait: bool,
}

/// Feed `input` to the engine's typed entry point for it.
pub fn handle(e: &mut Engine, input: Input) -> Output {
    let api = |h: Handled<Result<ApiReply, Refusal>>| {
        let mut out = Output { actions: h.actions, ..Output::default() };
        match h.reply {
            Ok(ApiReply::Created { view, code }) => {
                out.view = Some(view);
                out.code = code;
            }
            Ok(ApiReply::Association(v)) => out.view = Some(v),
            Ok(ApiReply::Done) => {}
            Err(r) => out.error = Some(r),
        }
        out
    };
    let actions = |actions: Vec<Action>| Output { actions, ..Output::default() };
    match input {
        Input::Create { principal, account, account_name, pbx, extension, id, random, code, now } => api(e.api(ApiInput::Create { principal, account, account_name, pbx, extension, id, random, code, now })),
        Input::Complete { principal, id, random, now } => api(e.api(ApiInput::Complete { principal, id, random, now })),
        Input::Cancel { principal, id, now } => api(e.api(ApiInput::Cancel { principal, id, now })),
        Input::Unbind { principal, account, pbx, extension, now } => api(e.api(ApiInput::Unbind { principal, account, pbx, extension, now })),
        Input::ResetCounters { scope, now } => api(e.api(ApiInput::ResetCounters { scope, now })),
        Input::LiftBlocks { scope, now } => api(e.api(ApiInput::LiftBlocks { scope, now })),
        Input::CstaDone { id, outcome, now } => actions(e.csta(CstaInput::Done { id, outcome, now })),
        Input::CstaEvent { pbx, extension, event, now } => actions(e.csta(CstaInput::Event { pbx, extension, event, now })),
        Input::LinkDown { pbx, now } => actions(e.csta(CstaInput::LinkDown { pbx, now })),
        Input::IvrHangup { call, now } => actions(e.ivr_hangup(&call, now)),
        Input::Timeout { now } => actions(e.handle_timeout(now)),
        Input::Ivr { call, from, to, digits, now } => {
            let h = e.ivr(IvrInput { call, from, to, digits, now });
            let mut out = Output { actions: h.actions, ..Output::default() };
            match h.reply {
                IvrAnswer::Reply(r) => out.ivr = Some(r),
                IvrAnswer::Wait => out.ivr_wait = true,
            }
            out
        }
    }
}
