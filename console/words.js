// The API's states, reasons and history steps in words, for people reading the console.
// The names are the API's (src/association/mod.rs `State`, `Reason`; the engine's steps); an
// unknown name (a newer gateway) is shown as it is.

export const STATES = {
  code_issued: "Code issued: waiting for the user to say they are at their phone.",
  monitoring: "Starting to watch the extension on the PBX.",
  locking: "Locking the phone; its user unlocks it with the phone's own PIN.",
  calling: "The gateway asked the PBX to make the phone call the IVR.",
  ringing: "The phone is ringing.",
  in_ivr: "The user is on the proof call with the IVR.",
  bound: "Bound: the extension is linked to the account.",
  failed: "The last attempt failed.",
  expired: "The code expired before the extension was bound.",
  cancelled: "Cancelled.",
};

export const REASONS = {
  wrong_code: "A wrong code was keyed on the proof call.",
  attempts_exhausted: "Too many wrong codes: the code can no longer be used.",
  no_answer: "Nobody answered the phone.",
  busy: "The phone was busy.",
  phone_locked: "The phone stayed locked: its user did not unlock it.",
  link_down: "The link to the PBX was down.",
  rejected_by_pbx: "The PBX refused the request.",
  expired: "The code expired.",
  call_cleared: "The call ended before the code was entered correctly.",
  not_confirmed: "The person at the phone did not confirm (press 1) after hearing the account's name.",
  locked_out: "Too many failures on this account or extension: an admin must reset its counters.",
  rate_limited: "Too many proof calls to this extension this hour.",
  gateway_restarted: "The gateway restarted during the attempt.",
  cancelled_by_user: "The user cancelled.",
  ivr_timeout: "The IVR platform stopped answering during the call.",
  ivr_call_mismatch: "Suspected attack: a call other than the proof call presented the attempt's secret, or the calling number did not match the extension.",
  refused_by_phone_owner: "The person at the phone pressed 9: they did not ask for this.",
  pbx_flood: "The PBX sent more events about the proof call than any real call has.",
  call_diverted: "The proof call left the extension (forwarded, transferred or conferenced), so whoever keyed the code may not be at that phone.",
  code_not_delivered: "The code's notification could not be delivered, so the user never got it.",
  pbx_removed: "The PBX was removed from the configuration.",
};

export const STEPS = {
  code_issued: "Code issued",
  monitoring: "Watching the extension",
  locking: "Locking the phone",
  locked: "Phone locked",
  calling: "Calling the IVR",
  ringing: "Phone ringing",
  answered: "Picked up",
  reaching_ivr: "Reaching the IVR",
  in_ivr: "On the IVR",
  ivr_identified: "Proof call identified",
  confirmed: "Confirmed by the phone's owner",
  code_entered: "Code entered",
  wrong_code: "Wrong code",
  bound: "Bound",
  failed: "Failed",
  expired: "Expired",
  cancelled: "Cancelled",
  unbound: "Unbound",
  rate_limited: "Rate limited",
  dtmf_failed: "Context digits refused",
  counter_reset: "Counters reset",
  owner_block_lifted: "Owner block lifted",
  refused_by_phone_owner: "Refused by the phone's owner",
  suspected_attack: "Suspected attack",
  gateway_restarted: "Gateway restarted",
  ivr_unknown_context: "Unknown context on an IVR call",
  truncated: "Earlier steps left out",
};

export function stateWords(s) {
  return STATES[s] || s;
}

export function reasonWords(r) {
  if (r === null || r === undefined) return "";
  return REASONS[r] || r;
}

export function stepWords(s) {
  return STEPS[s] || s.replace(/_/g, " ");
}

/** A time in milliseconds since the epoch, as the reader's local date and time. */
export function when(ms) {
  if (typeof ms !== "number" || !isFinite(ms)) return "";
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A duration in seconds, as "3 h 02 min", "4 min 05 s" or "12 s". */
export function duration(s) {
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(sec).padStart(2, "0")} s`;
  return `${sec} s`;
}
