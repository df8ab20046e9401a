//! IVR adapters. The gateway is the IVR application's logic (the association engine's dialogue);
//! an IVR platform only plays prompts and collects DTMF. Two adapters:
//! - the generic JSON webhook (`POST /v1/ivr/webhook`, HMAC-SHA256 signed), in [`crate::api`];
//! - [`fastagi`]: an Asterisk FastAGI server (default port 4573, script `agi://host/associate`).

pub mod fastagi;
