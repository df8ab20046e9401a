//! No secret in the logs: a real ACSE login of the link against the simulator over TCP, with a
//! tracing subscriber at TRACE capturing everything both sides log into a buffer. The password
//! must not appear, neither as text nor as hex, and the redaction marker must show where the
//! authentication value was.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cstagate::codec::acse::AarqParams;
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::values::Secret;
use cstagate::codec::{Body, Operation};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState};
use cstagate::sim::{SimConfig, SimPbx};
use tokio::time::timeout;

/// Generous bound so a broken feature fails instead of hanging; never reached when it works.
const LIMIT: Duration = Duration::from_secs(20);
const USER: &str = "AMHOST";
const PASSWORD: &str = "S3cr3t-pw-4711";
/// A wrong login is usually a typo of the right one: it must not be printed either.
const WRONG: &str = "S3cr3t-pw-4712";

/// Everything the subscriber writes, up to [`MAX_CAPTURED`] (also the process-wide log of
/// `notify_tls.rs`, where every test of the binary writes).
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

/// The log bytes kept at most.
const MAX_CAPTURED: usize = 256 << 20;

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().unwrap();
        if v.len() + buf.len() <= MAX_CAPTURED {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn login(sim: &SimPbx, cfg: &SimConfig, password: &str) -> LinkProfile {
    LinkProfile {
        acse: Some(AarqParams { context: "1.3.12.0.218".into(), credentials: Some((USER.into(), Secret::new(password.to_owned().into()))), user_information: None }),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        ..LinkProfile::new("redaction", &sim.addr().to_string(), cfg.framing, cfg.dialect)
    }
}

// One thread: the link's and the simulator's tasks run where the thread-local subscriber is.
#[tokio::test(flavor = "current_thread")]
async fn an_acse_login_is_traced_with_its_password_redacted() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_ansi(false).with_writer(logs.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.credentials = Some((USER.into(), PASSWORD.into()));
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();

    // A rejected login, then the right one, then traffic on the association.
    let wrong = Link::spawn(login(&sim, &cfg, WRONG));
    let down = timeout(LIMIT, wrong.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.expect("the wrong login is refused");
    assert!(matches!(&down, LinkState::Down { reason } if reason.contains("authentication-failure")), "{down:?}");
    wrong.shutdown().await;
    let link = Link::spawn(login(&sim, &cfg, PASSWORD));
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.expect("the right login is accepted");
    link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
    link.shutdown().await;

    let text = logs.text();
    assert!(text.contains("TRACE"), "nothing traced:\n{text}");
    let lower = text.to_ascii_lowercase();
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "the password {secret} is in the logs:\n{text}");
        assert!(!lower.contains(&hex::encode(secret)), "the password {secret} is in the logs as hex:\n{text}");
    }
    // Both sides trace the APDUs, the AARQs included, with the authentication value marked.
    assert!(text.contains("sim received"), "the simulator traces what it receives:\n{text}");
    assert!(text.matches("<redacted>").count() >= 4, "two AARQs sent, two received, each redacted:\n{text}");
}

#[test]
fn values_holding_secrets_print_without_them() {
    let mut sim = SimConfig::phase3(&["2005"]);
    sim.credentials = Some((USER.into(), PASSWORD.into()));
    let mut link = LinkProfile::new("p", "127.0.0.1:1", sim.framing, sim.dialect);
    link.acse = Some(AarqParams { context: "1.3.12.0.218".into(), credentials: Some((USER.into(), Secret::new(PASSWORD.into()))), user_information: None });
    let notify = cstagate::notify::Target { url: "http://app.internal/events".into(), secret: PASSWORD.into(), ca: Vec::new() };
    for shown in [format!("{sim:?}"), format!("{link:?}"), format!("{notify:?}")] {
        assert!(!shown.contains(PASSWORD) && shown.contains("<redacted>"), "{shown}");
    }
}
