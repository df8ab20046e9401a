//! A PBX simulator that speaks CSTA like a real central unit, bytes included: for the demo, the
//! tests and the benchmarks (`cstagate sim-pbx`).
//!
//! - Both BER dialects (Phase III, OXE Phase II) and their framings; the Alcatel `'B'`/`'P'`
//!   preamble; ACSE with optional credentials (a wrong login gets an AARE rejected with
//!   authentication-failure); its own periodic SystemStatus that drops the link after two
//!   unanswered, as OXE does.
//! - CSTA XML (ECMA-323) as an OpenScape or MX-ONE PBX speaks it ([`SimConfig::xml`], framing
//!   `xml-header` or `xml-nul`): the same call model, only the wire differs. An ECMA-354
//!   session stands where ACSE stands: `StartApplicationSession` first when [`SimXml::session`]
//!   is set (a wrong login or no supported protocol version: NegResponse; CSTA requests before
//!   it: `CSTAErrorCode`), its timer reset by `ResetApplicationSessionTimer`, and a session that
//!   lapses gets `ApplicationSessionTerminated` and the link closed. Events carry invoke id
//!   9999, call ids are 32 hex digits as OpenScape's, cross-reference ids decimal text.
//! - A call model ([`switch`]): MonitorStart/Stop, MakeCall producing ServiceInitiated,
//!   Originated, NetworkReached (external numbers), Delivered and Established in a realistic order
//!   and ConnectionCleared when cleared; per-extension behaviour (answers after a delay, never
//!   answers, busy, out of service); per-extension lock state with a local PIN: a MakeCall to the
//!   lock prefix locks the phone, and a locked phone asks its user for the PIN before an outgoing
//!   call: the user keys it after the extension's `pin_delay` and the call goes out (wrong or no
//!   PIN: Failed, cause 35).
//! - Calls to the IVR number reach an IVR endpoint the caller provides ([`IvrSignal`]), with the
//!   digits sent by GenerateDigits/SendDTMFTones or dialled after the number.
//! - Fault injection ([`Faults`]): drop the connection at a chosen message, stall, delay results,
//!   withhold results until released (the request carried out, its answer late), send events
//!   before the MakeCall result, split frames across TCP segments or coalesce them, send
//!   malformed frames, reject operations.
//! - Three ways for the CTI side to go away, which differ in what survives: [`SimPbx::drop_links`]
//!   (the connections drop, the calls go on), [`SimPbx::restart_cti`] (the PBX's CTI process
//!   restarts: the connections drop, monitors and cross-reference numbering are forgotten, the
//!   calls go on) and [`SimPbx::restart`] (a full reset: the calls end too).

mod conn;
pub mod switch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::codec::framing::Framing;
use crate::codec::values::Secret;
use crate::codec::xml::ProtocolVersion;
use crate::codec::{Dialect, Operation, Wrapping};

/// How a simulated phone's user behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Picks up after this long.
    Answer { after: Duration },
    NeverAnswer,
    /// Already on a call: MakeCall from it is refused; calls to it fail with cause busy.
    Busy,
    OutOfService,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Extension {
    pub number: String,
    pub behaviour: Behaviour,
    /// The phone's local lock PIN (known to the phone only, never to the gateway).
    pub pin: Option<String>,
    /// What the simulated user keys when the locked phone asks for the PIN.
    pub user_pin: Option<String>,
    /// How long the user takes to key it, after picking up: the proof call goes out only then.
    pub pin_delay: Duration,
    pub locked: bool,
}

impl Extension {
    pub fn answering(number: &str, after: Duration) -> Self {
        Extension { number: number.to_owned(), behaviour: Behaviour::Answer { after }, pin: None, user_pin: None, pin_delay: Duration::ZERO, locked: false }
    }
}

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub dialect: Dialect,
    /// The wire: a BER framing, or `XmlHeader`/`XmlNul` for CSTA XML (then `dialect` is Phase
    /// III, whose member tables ECMA-323 uses, and [`SimConfig::xml`] says the rest).
    pub framing: Framing,
    /// Expect `'B'` and answer `'P'` before the first frame (Alcatel).
    pub preamble: bool,
    /// BER: expect an AARQ first (all our BER presets do). XML has its session instead
    /// ([`SimXml::session`]).
    pub acse: bool,
    /// Required login (user, password) of the AARQ or of `StartApplicationSession`; `None`
    /// accepts any. The password is a [`Secret`] so that printing the configuration does not
    /// print it.
    pub credentials: Option<(String, Secret)>,
    /// Period of the PBX's own SystemStatus; the link is dropped after two go unanswered.
    pub keepalive: Option<Duration>,
    pub extensions: Vec<Extension>,
    /// Dialled prefix that locks the calling phone (e.g. `*66`).
    pub lock_prefix: Option<String>,
    /// Public number of the cloud IVR; calls to it (optionally followed by `*digits#`) reach the
    /// IVR endpoint.
    pub ivr_number: Option<String>,
    /// More numbers of the same IVR (a gateway's `ivr_numbers` pool): calls to them reach the IVR
    /// endpoint too, reported with the number dialled.
    pub ivr_pool: Vec<String>,
    /// Prefix that turns an extension into the calling number the outside world sees (its DID).
    pub did_prefix: String,
    /// Phase II: the form of the values whose shape is unverified (makeCall's and
    /// snapshotDevice's results, its own systemStatus argument; asn1/README.md P8) that the
    /// simulated PBX sends: bare as OXE is known to, or wrapped in `SEQUENCE { value,
    /// extensions }` as another Phase II PBX may (`sim-pbx --phase2-results`).
    pub phase2_results: Wrapping,
    /// What a CSTA XML wire needs beyond its framing; unused on a BER wire.
    pub xml: SimXml,
    /// Serve CSTA over TLS (the preamble, ACSE or the XML session inside it), as a PBX's TLS CTI
    /// port does; `None`: plain TCP. Read at each accept, so a test may change it between
    /// connections.
    pub tls: Option<SimTls>,
}

/// The simulator's TLS server side: its certificate and key, and optionally the CA a client
/// certificate must chain to (then one is required, as a PBX configured for mutual TLS does).
#[derive(Clone)]
pub struct SimTls {
    pub config: Arc<rustls::ServerConfig>,
}

// No derive: the server configuration holds the key.
impl std::fmt::Debug for SimTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTls").finish_non_exhaustive()
    }
}

impl SimTls {
    /// From PEM files: the certificate chain, its key, and the CA of client certificates (which
    /// makes one required).
    ///
    /// # Errors
    /// A file cannot be read or does not hold what it should; the message names the file.
    pub fn from_pem_files(cert: &std::path::Path, key: &std::path::Path, client_ca: Option<&std::path::Path>) -> Result<SimTls, String> {
        use crate::link::tls;
        fn named(p: &std::path::Path) -> impl Fn(String) -> String + '_ {
            move |w| format!("{}: {w}", p.display())
        }
        let chain = tls::read_certs(cert).map_err(named(cert))?;
        let k = tls::read_key(key).map_err(named(key))?;
        let ca = match client_ca {
            Some(p) => Some(tls::read_certs(p).map_err(named(p))?),
            None => None,
        };
        let config = tls::server_config(chain, k, ca).map_err(|e| {
            let path = match e.input {
                "ca" => client_ca.unwrap_or(cert),
                "key" => key,
                _ => cert,
            };
            format!("{}: {}", path.display(), e.why)
        })?;
        Ok(SimTls { config: Arc::new(config) })
    }
}

/// The CSTA XML side of the simulator (used when [`SimConfig::framing`] is an XML framing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimXml {
    /// The one ECMA-323 edition the PBX speaks: a `StartApplicationSession` must request it (or
    /// request none), and the documents it sends are in its namespace.
    pub protocol_version: ProtocolVersion,
    /// Require `StartApplicationSession` before any CSTA request (OpenScape, MX-ONE do); without
    /// it, requests are served at once (a session may still be opened).
    pub session: bool,
    /// The longest session the PBX grants (seconds): a longer request gets this.
    pub max_session_duration: u32,
}

impl Default for SimXml {
    fn default() -> Self {
        SimXml { protocol_version: ProtocolVersion::Ed4, session: true, max_session_duration: 3600 }
    }
}

impl SimConfig {
    /// A Phase III PBX (2-byte framing, ACSE, no login) with extensions that answer after 1 s.
    pub fn phase3(extensions: &[&str]) -> Self {
        SimConfig {
            dialect: Dialect::Phase3,
            framing: Framing::TwoByteLength,
            preamble: false,
            acse: true,
            credentials: None,
            keepalive: None,
            extensions: extensions.iter().map(|e| Extension::answering(e, Duration::from_secs(1))).collect(),
            lock_prefix: Some("*66".into()),
            ivr_number: Some("0800100200".into()),
            ivr_pool: Vec::new(),
            did_prefix: "+3314400".into(),
            phase2_results: Wrapping::Bare,
            xml: SimXml::default(),
            tls: None,
        }
    }
    /// An Alcatel OXE: Phase II, preamble, SystemStatus every 30 s.
    pub fn oxe(extensions: &[&str]) -> Self {
        SimConfig { dialect: Dialect::Phase2, preamble: true, keepalive: Some(Duration::from_secs(30)), ..SimConfig::phase3(extensions) }
    }
    /// A CSTA XML PBX (OpenScape, MX-ONE): `framing` `XmlHeader` or `XmlNul`, an ECMA-354 session
    /// required (ed4, no login), SystemStatus every 30 s.
    pub fn xml(extensions: &[&str], framing: Framing) -> Self {
        SimConfig { framing, acse: false, keepalive: Some(Duration::from_secs(30)), ..SimConfig::phase3(extensions) }
    }
}

/// Where to stop answering or what to garble. Changed at run time through [`SimPbx::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection instead of answering an invoke of this operation.
    pub drop_on: Option<Operation>,
    /// Close the connection after this many frames were received on it.
    pub drop_after_frames: Option<u64>,
    /// Stop reading and writing, keeping the TCP connection open (a half-open peer).
    pub stall: bool,
    /// Delay every result by this long.
    pub result_delay: Option<Duration>,
    /// Send a MakeCall's first events before its result.
    pub events_before_result: bool,
    /// Write every frame in 1-byte TCP segments.
    pub split_frames: bool,
    /// Hold frames back and write several in one segment.
    pub coalesce: bool,
    /// Send a well-framed but undecodable APDU every N frames sent.
    pub malformed_every: Option<u64>,
    /// Answer these operations with a ROSE Reject.
    pub reject: Vec<Operation>,
    /// Answer MonitorStart with this universalFailure (operation category) value.
    pub monitor_error: Option<i64>,
    /// Send every result twice (a PBX bug the gateway must absorb).
    pub duplicate_results: bool,
    /// Delay every result and every step of a call (ringing, answering, the IVR answering) by a
    /// further random time below this: a loaded PBX. The events of one call keep their order.
    pub jitter: Option<Duration>,
    /// Swallow invokes of these operations: no result, no effect (a request the PBX lost). Tests
    /// use it to hold an association at a step.
    pub hold: Vec<Operation>,
    /// Carry out invokes of these operations (a MakeCall places its call and the phone rings) but
    /// keep their answer (result or error) back until [`SimPbx::release_results`]: a PBX slow to
    /// answer. The events that follow a withheld answer on its connection wait behind it, so wire
    /// order is kept (with [`Faults::events_before_result`], a MakeCall's first event goes out
    /// before its answer is withheld); other answers (keep-alives) are not held. Answers held on a
    /// connection that closes are lost with it. [`SimStats::results_withheld`] counts those held.
    pub withhold_results: Vec<Operation>,
}

/// What the IVR endpoint sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrSignal {
    /// A call reached the IVR: call id (hex of the BER octets; over XML the `callID` itself,
    /// hex digits already), calling number as presented, dialled number.
    Connected { call: String, calling: String, called: String },
    /// DTMF digits on the call (dialled suffix, GenerateDigits or SendDTMFTones).
    Digits { call: String, digits: String },
    /// The call was cleared by the PBX side.
    Cleared { call: String },
}

/// How a call of the simulator ended (see [`SimPbx::calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallEnd {
    /// A CTI client's ClearConnection ended it (the gateway cleared it).
    ClearConnection,
    /// The IVR side hung up ([`SimPbx::ivr_hangup`]).
    IvrHangup,
    /// The PBX ended it itself: the lock feature call, done once its user picked up.
    Feature,
    /// The call failed (a locked phone whose user keyed no or the wrong PIN).
    Failed,
    /// A full PBX reset ([`SimPbx::restart`], [`SimPbx::stop`]) ended it.
    Reset,
}

/// The calls of the simulator: those up now, and how the last ones (up to 4,096) ended; call ids
/// as [`IvrSignal`] names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimCalls {
    pub live: Vec<String>,
    pub ended: HashMap<String, CallEnd>,
}

/// The IVR endpoint's side of the simulator: it hangs up calls.
#[derive(Clone)]
pub struct IvrHandle {
    switch: mpsc::UnboundedSender<switch::Msg>,
}

impl IvrHandle {
    pub fn hangup(&self, call: &str) {
        let _ = self.switch.send(switch::Msg::IvrHangup(call.to_owned()));
    }
}

/// Counters of the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub connections: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub keepalives_sent: u64,
    pub keepalives_answered: u64,
    /// Results or errors the simulator received for invokes it never sent, or twice.
    pub unexpected_responses: u64,
    /// Invoke ids of the client seen more than once while outstanding.
    pub duplicate_invokes: u64,
    pub requests: HashMap<String, u64>,
    /// Graceful releases received: RLRQs, or (XML) StopApplicationSession of the open session.
    pub releases: u64,
    /// Calls up in the switch now (prompting, ringing or connected).
    pub live_calls: u64,
    /// Answers held back now by [`Faults::withhold_results`].
    pub results_withheld: u64,
    /// TLS handshakes that failed (with [`SimConfig::tls`]): the client refused our certificate,
    /// or had none when one is required.
    pub tls_failures: u64,
    /// Connections with a live application association now (past the AARQ, the XML session
    /// start, or needing neither), until they close.
    pub associated: u64,
    /// The most such connections open at once since the start: the split-brain oracle of
    /// several gateways sharing PBXs (it must never exceed 1 for a PBX served by a cluster).
    pub associated_max: u64,
}

pub(crate) struct Shared {
    pub(crate) config: Mutex<SimConfig>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) stats: watch::Sender<SimStats>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make every later access panic too.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running simulated PBX.
pub struct SimPbx {
    addr: SocketAddr,
    shared: Arc<Shared>,
    switch: mpsc::UnboundedSender<switch::Msg>,
    ivr: Option<mpsc::UnboundedReceiver<IvrSignal>>,
    stop: watch::Sender<bool>,
}

impl SimPbx {
    /// Listen on `bind` (e.g. `127.0.0.1:0`) and start serving.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn start(config: SimConfig, bind: &str) -> std::io::Result<SimPbx> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { config: Mutex::new(config), faults: Mutex::new(Faults::default()), stats: watch::Sender::new(SimStats::default()) });
        let (ivr_tx, ivr_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let switch = switch::spawn(shared.clone(), ivr_tx);
        tokio::spawn(conn::accept_loop(listener, shared.clone(), switch.clone(), stop_rx));
        Ok(SimPbx { addr, shared, switch, ivr: Some(ivr_rx), stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change the injected faults.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.shared.faults)
    }
    /// Change the configuration (extension behaviours, credentials, ...).
    pub fn config(&self) -> MutexGuard<'_, SimConfig> {
        lock(&self.shared.config)
    }
    pub fn stats(&self) -> SimStats {
        self.shared.stats.borrow().clone()
    }

    /// Wait until the counters satisfy `pred` (tests synchronise on this, not on sleeps).
    pub async fn wait_stats(&self, pred: impl Fn(&SimStats) -> bool) -> SimStats {
        let mut rx = self.shared.stats.subscribe();
        let r = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.stats())
    }

    /// The IVR endpoint's signals (once).
    pub fn take_ivr(&mut self) -> Option<mpsc::UnboundedReceiver<IvrSignal>> {
        self.ivr.take()
    }

    /// The IVR hangs up a call.
    pub fn ivr_hangup(&self, call: &str) {
        self.ivr_handle().hangup(call);
    }

    /// A handle the IVR endpoint keeps to hang up calls.
    pub fn ivr_handle(&self) -> IvrHandle {
        IvrHandle { switch: self.switch.clone() }
    }

    /// The prefix that turns an extension into the calling number the IVR sees.
    pub fn did_prefix(&self) -> String {
        lock(&self.shared.config).did_prefix.clone()
    }

    /// What the phone of `device` shows it is dialling now (its live outgoing call, `*digits#`
    /// suffix included), as anyone standing at it — or watching its display — would see it.
    pub async fn dialled(&self, device: &str) -> Option<String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.switch.send(switch::Msg::Dialled { device: device.to_owned(), reply }).ok()?;
        rx.await.ok().flatten()
    }

    /// Whether an extension's phone is locked.
    pub fn is_locked(&self, ext: &str) -> bool {
        lock(&self.shared.config).extensions.iter().any(|e| e.number == ext && e.locked)
    }

    /// Send `count` Delivered events to every monitor of `device` as fast as the switch can
    /// (load and benchmarks).
    pub fn flood_events(&self, device: &str, count: u64) {
        let _ = self.switch.send(switch::Msg::Flood { device: device.to_owned(), count });
    }

    /// A full PBX reset: every connection drops, and every call ends with it (the IVR hears of
    /// those it answered); monitors are forgotten. Unlike [`SimPbx::restart_cti`] and
    /// [`SimPbx::drop_links`], nothing is left on the phones for the gateway to clear.
    pub fn restart(&self) {
        let _ = self.switch.send(switch::Msg::Restart);
    }

    /// The PBX's CTI process restarts while its call processing goes on: every CTI connection
    /// drops, the monitors and cross-reference ids are forgotten (the numbering starts again, so
    /// the ids of the new connections' monitors are those of the old ones), answers not yet sent
    /// are lost, but the calls go on on the phones: whoever placed them must clear them once
    /// reconnected. Unlike [`SimPbx::restart`] (a full reset), calls are not touched; unlike
    /// [`SimPbx::drop_links`], the CTI's own state (its numbering) starts afresh.
    pub fn restart_cti(&self) {
        let _ = self.switch.send(switch::Msg::RestartCti);
    }

    /// The CTI links drop (every connection closes; the PBX forgets their monitors and the answers
    /// it had not sent, as it does for any connection it sees die) but the calls go on, as when a
    /// WAN link or a cable fails between the gateway and the PBX. The CTI process itself carries
    /// on: its numbering (cross-reference ids) continues, unlike after [`SimPbx::restart_cti`].
    pub fn drop_links(&self) {
        let _ = self.switch.send(switch::Msg::DropLinks);
    }

    /// Send the answers [`Faults::withhold_results`] held back (and the events queued behind them),
    /// in order, on the connections they were meant for (still open ones: the others lost theirs).
    /// Answers of later invokes are withheld again while the fault stays set.
    pub fn release_results(&self) {
        let _ = self.switch.send(switch::Msg::ReleaseResults);
    }

    /// The calls up now and how the last ones ended.
    pub async fn calls(&self) -> SimCalls {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.switch.send(switch::Msg::Calls { reply }).is_err() {
            return SimCalls::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Stop listening and drop every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let _ = self.switch.send(switch::Msg::Restart);
    }
}

impl Drop for SimPbx {
    fn drop(&mut self) {
        self.stop();
    }
}
