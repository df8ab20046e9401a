//! ECMA-354 application-session messages: how a CSTA XML link opens (instead of ACSE), keeps
//! and ends its session.
//!
//! The login of `StartApplicationSession` differs per vendor (issue 17): OpenScape puts a
//! `SessionLoginInfo { userName, password }` inside `applicationSpecificInfo`, others a bare
//! `user` and `password`; both are read, the configured one is written. The password is a
//! [`Secret`]: it never shows in `Debug` or logs.

use super::tree::Element;
use crate::codec::values::Secret;

/// The ECMA-354 namespace.
pub const APPL_SESSION_NS: &str = "http://www.ecma-international.org/standards/ecma-354/appl_session";

/// How the login is written in `StartApplicationSession` (config key `xml_login`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoginStyle {
    /// `<applicationSpecificInfo><SessionLoginInfo><userName/><password/>…` (OpenScape).
    #[default]
    SessionLoginInfo,
    /// `<applicationSpecificInfo><user/><password/>…`.
    UserPassword,
    /// No login.
    None,
}

/// Credentials of a session (user and password), or none.
#[derive(Clone, PartialEq)]
pub struct Login {
    pub style: LoginStyle,
    pub user: String,
    pub password: Secret,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("style", &self.style).field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// `StartApplicationSession`.
#[derive(Debug, Clone, PartialEq)]
pub struct StartSession {
    pub application_id: String,
    pub login: Option<Login>,
    /// ECMA-323 namespace URIs, preferred first.
    pub protocol_versions: Vec<String>,
    /// Seconds.
    pub duration: Option<u32>,
}

/// An ECMA-354 message. Errors are kept as the text of their error element (e.g.
/// `invalidApplicationInfo`) so that a refusal names its reason.
#[derive(Debug, Clone, PartialEq)]
pub enum AppSession {
    Start(StartSession),
    StartPos { session_id: String, protocol_version: Option<String>, duration: Option<u32> },
    StartNeg { error: String },
    ResetTimer { session_id: String, duration: Option<u32> },
    ResetTimerPos { duration: Option<u32> },
    ResetTimerNeg { error: String },
    Stop { session_id: String },
    StopPos,
    StopNeg { error: String },
    Terminated { session_id: Option<String>, reason: String },
}

impl AppSession {
    /// The element name.
    pub fn name(&self) -> &'static str {
        match self {
            AppSession::Start(_) => "StartApplicationSession",
            AppSession::StartPos { .. } => "StartApplicationSessionPosResponse",
            AppSession::StartNeg { .. } => "StartApplicationSessionNegResponse",
            AppSession::ResetTimer { .. } => "ResetApplicationSessionTimer",
            AppSession::ResetTimerPos { .. } => "ResetApplicationSessionTimerPosResponse",
            AppSession::ResetTimerNeg { .. } => "ResetApplicationSessionTimerNegResponse",
            AppSession::Stop { .. } => "StopApplicationSession",
            AppSession::StopPos => "StopApplicationSessionPosResponse",
            AppSession::StopNeg { .. } => "StopApplicationSessionNegResponse",
            AppSession::Terminated { .. } => "ApplicationSessionTerminated",
        }
    }

    /// Read a session message from its root element; `None` when the root is no ECMA-354
    /// message.
    pub fn from_element(root: &Element<'_>) -> Option<AppSession> {
        let text = |name: &str| root.child_text(name).map(str::to_owned);
        let seconds = |name: &str| root.child_text(name).and_then(|t| t.parse().ok());
        Some(match root.name {
            "StartApplicationSession" => {
                let info = root.child("applicationInfo");
                let application_id = info.and_then(|i| i.child_text("applicationID")).unwrap_or_default().to_owned();
                let specific = info.and_then(|i| i.child("applicationSpecificInfo"));
                let login = specific.and_then(|s| {
                    if let Some(l) = s.child("SessionLoginInfo") {
                        return Some(Login { style: LoginStyle::SessionLoginInfo, user: l.child_text("userName")?.to_owned(), password: secret(l.child_text("password").unwrap_or_default()) });
                    }
                    Some(Login { style: LoginStyle::UserPassword, user: s.child_text("user")?.to_owned(), password: secret(s.child_text("password").unwrap_or_default()) })
                });
                let protocol_versions = root.child("requestedProtocolVersions").map(|v| v.children.iter().map(|c| c.text.to_string()).collect()).unwrap_or_default();
                AppSession::Start(StartSession { application_id, login, protocol_versions, duration: seconds("requestedSessionDuration") })
            }
            "StartApplicationSessionPosResponse" => AppSession::StartPos { session_id: text("sessionID").unwrap_or_default(), protocol_version: text("actualProtocolVersion"), duration: seconds("actualSessionDuration") },
            "StartApplicationSessionNegResponse" => AppSession::StartNeg { error: error_text(root) },
            "ResetApplicationSessionTimer" => AppSession::ResetTimer { session_id: text("sessionID").unwrap_or_default(), duration: seconds("requestedSessionDuration") },
            "ResetApplicationSessionTimerPosResponse" => AppSession::ResetTimerPos { duration: seconds("actualSessionDuration") },
            "ResetApplicationSessionTimerNegResponse" => AppSession::ResetTimerNeg { error: error_text(root) },
            "StopApplicationSession" => AppSession::Stop { session_id: text("sessionID").unwrap_or_default() },
            "StopApplicationSessionPosResponse" => AppSession::StopPos,
            "StopApplicationSessionNegResponse" => AppSession::StopNeg { error: error_text(root) },
            "ApplicationSessionTerminated" => AppSession::Terminated {
                session_id: text("sessionID"),
                reason: root.child("sessionTermReason").map(leaf_text).unwrap_or_default(),
            },
            _ => return None,
        })
    }

    /// Write the document (root in the ECMA-354 namespace).
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut w = super::Writer::new(out);
        w.open_root(self.name(), APPL_SESSION_NS);
        match self {
            AppSession::Start(s) => {
                w.open("applicationInfo");
                w.leaf("applicationID", &s.application_id);
                if let Some(l) = &s.login {
                    match l.style {
                        LoginStyle::SessionLoginInfo => {
                            w.open("applicationSpecificInfo");
                            w.open("SessionLoginInfo");
                            w.leaf("userName", &l.user);
                            w.leaf("password", &String::from_utf8_lossy(l.password.expose()));
                            w.close("SessionLoginInfo");
                            w.close("applicationSpecificInfo");
                        }
                        LoginStyle::UserPassword => {
                            w.open("applicationSpecificInfo");
                            w.leaf("user", &l.user);
                            w.leaf("password", &String::from_utf8_lossy(l.password.expose()));
                            w.close("applicationSpecificInfo");
                        }
                        LoginStyle::None => {}
                    }
                }
                w.close("applicationInfo");
                w.open("requestedProtocolVersions");
                for v in &s.protocol_versions {
                    w.leaf("protocolVersion", v);
                }
                w.close("requestedProtocolVersions");
                if let Some(d) = s.duration {
                    w.leaf("requestedSessionDuration", &d.to_string());
                }
            }
            AppSession::StartPos { session_id, protocol_version, duration } => {
                w.leaf("sessionID", session_id);
                if let Some(v) = protocol_version {
                    w.leaf("actualProtocolVersion", v);
                }
                if let Some(d) = duration {
                    w.leaf("actualSessionDuration", &d.to_string());
                }
            }
            // An empty reason goes out as an empty element (it came as one, or without any).
            AppSession::StartNeg { error } | AppSession::ResetTimerNeg { error } | AppSession::StopNeg { error } if error.is_empty() => w.empty("errorCode"),
            AppSession::StartNeg { error } | AppSession::ResetTimerNeg { error } | AppSession::StopNeg { error } => {
                w.open("errorCode");
                w.leaf("definedError", error);
                w.close("errorCode");
            }
            AppSession::ResetTimer { session_id, duration } => {
                w.leaf("sessionID", session_id);
                if let Some(d) = duration {
                    w.leaf("requestedSessionDuration", &d.to_string());
                }
            }
            AppSession::ResetTimerPos { duration } => {
                if let Some(d) = duration {
                    w.leaf("actualSessionDuration", &d.to_string());
                }
            }
            AppSession::Stop { session_id } => {
                w.leaf("sessionID", session_id);
                w.open("sessionEndReason");
                w.leaf("appEndReason", "normal");
                w.close("sessionEndReason");
            }
            AppSession::StopPos => {}
            AppSession::Terminated { session_id, reason } => {
                if let Some(s) = session_id {
                    w.leaf("sessionID", s);
                }
                if reason.is_empty() {
                    w.empty("sessionTermReason");
                } else {
                    w.open("sessionTermReason");
                    w.leaf("definedTermReason", reason);
                    w.close("sessionTermReason");
                }
            }
        }
        w.close_root(self.name());
    }
}

fn secret(s: &str) -> Secret {
    Secret::new(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// The reason inside an `errorCode` (or any element): its deepest text, else its deepest name.
fn error_text(root: &Element<'_>) -> String {
    root.child("errorCode").map(leaf_text).unwrap_or_else(|| "unspecified".into())
}

/// A reason element itself empty is an empty reason (what `write` makes of one), not its own
/// name (fuzz finding 11: `ApplicationSessionTerminated` without a reason came back with the
/// reason `definedTermReason`).
fn leaf_text(e: &Element<'_>) -> String {
    let mut leaf = e;
    while let Some(c) = leaf.children.first() {
        leaf = c;
    }
    match (leaf.text.is_empty(), std::ptr::eq(leaf, e)) {
        (false, _) => leaf.text.to_string(),
        (true, false) => leaf.name.to_owned(),
        (true, true) => String::new(),
    }
}
