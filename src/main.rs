//! The `cstagate` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cstagate::capture::{self, CapturedFrame};
use cstagate::codec::apdu::guess_dialect;
use cstagate::codec::{Dialect, Framing};
use cstagate::config::LogFormat;
use cstagate::decode;
use cstagate::exit::Exit;

#[derive(Parser)]
#[command(name = "cstagate", version, about = "CSTA CTI gateway: PBX links and self-service extension association")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode PBX traces (.frames.tsv, hex lines, pcap/pcapng, CSTA XML logs): one line or JSON
    /// object per APDU or XML message, the same view for BER and CSTA XML.
    Decode {
        /// PBX profile: framing and CSTA dialect. `auto` guesses both from the trace (per TCP
        /// stream in pcaps): `00 00` + length + 4 digits is CSTA XML with the 8-byte header, a
        /// leading `<` NUL-ended XML, a text file with XML markup an XML log (documents split by
        /// their root elements, an invoke id taken from 4 digits right before a document).
        #[arg(long, value_enum, default_value = "auto")]
        dialect: Profile,
        /// One JSON object per line instead of readable lines.
        #[arg(long)]
        json: bool,
        /// In pcaps, the PBX's CSTA TCP port (default: 2555, 7001, 8800, 8882 or 33333 when seen).
        #[arg(long)]
        port: Option<u16>,
        /// Trace files: .frames.tsv, hex lines, pcap or pcapng, CSTA XML logs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check that a PBX profile works: log in, monitor, optionally place one call, print what
    /// happens. Exit codes: 0 ok, 3 association rejected, 4 CSTA error, 5 configuration error,
    /// 7 connection failed.
    Probe {
        /// The gateway's configuration file (the [[pbx]] tables are read).
        #[arg(long)]
        config: PathBuf,
        /// The id of the [[pbx]] to probe.
        #[arg(long)]
        pbx: String,
        /// Extensions to monitor (repeatable).
        #[arg(long = "monitor")]
        monitors: Vec<String>,
        /// Place one MakeCall FROM TO.
        #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
        make_call: Option<Vec<String>>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Give up (exit 0 once up, 2 before) after this long, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// One JSON object per line (the names of `cstagate decode --json`).
        #[arg(long)]
        json: bool,
        /// Leave the call placed with --make-call up on exit (cleared by default).
        #[arg(long, requires = "make_call")]
        keep_call: bool,
    },
    /// Run the gateway: PBX links, HTTP API, IVR webhook (see README: configuration). SIGTERM
    /// or Ctrl-C stops it cleanly; SIGHUP reloads the configuration.
    Run {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration as `run` would (the file, the secrets in the environment, ranges,
    /// references, the files it names) without opening a socket; print a summary.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// The whole association on loopback, no setup: simulated PBX, the gateway, a simulated IVR
    /// platform and user. Exits 0 on the scenario's expected outcome.
    Demo {
        /// The simulated PBX's dialect.
        #[arg(long, value_enum, default_value = "phase3")]
        dialect: cstagate::demo::DemoDialect,
        /// What happens at the phone.
        #[arg(long, value_enum, default_value = "ok")]
        scenario: cstagate::demo::Scenario,
    },
    /// Run a simulated PBX (for the demo, tests and trying a gateway without a PBX).
    SimPbx {
        /// Address to listen on for the gateway's CSTA link.
        #[arg(long, default_value = "127.0.0.1:33333")]
        listen: String,
        /// The PBX to play (`auto` is for `decode` only: refused here).
        #[arg(long, value_enum, default_value = "phase3")]
        dialect: Profile,
        /// Directory: numbers and ranges, e.g. `2000-2010,3000`.
        #[arg(long, default_value = "2000-2099")]
        extensions: String,
        /// The cloud IVR's number: calls to it are printed and end with `hangup` on stdin.
        #[arg(long, default_value = "0800100200")]
        ivr_number: String,
        /// The feature code that locks a phone (a call to it from an extension).
        #[arg(long, default_value = "*66")]
        lock_prefix: String,
        /// Require this user (in the AARQ, or with --dialect xml in StartApplicationSession);
        /// the password comes from the environment variable named by --acse-password-env.
        #[arg(long, requires = "acse_password_env")]
        acse_user: Option<String>,
        /// The environment variable holding --acse-user's password (required with it).
        #[arg(long, requires = "acse_user")]
        acse_password_env: Option<String>,
        /// Period of the PBX's own SystemStatus (OXE default 30s).
        #[arg(long, value_parser = humantime::parse_duration)]
        keepalive: Option<std::time::Duration>,
        /// How long simulated users take to pick up.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        answer_after: std::time::Duration,
        /// With --dialect oxe: send makeCall's and snapshotDevice's results and the
        /// systemStatus argument `bare` (as OXE) or `wrapped` in SEQUENCE { value, extensions }
        /// (as another Phase II PBX may).
        #[arg(long, default_value = "bare", value_parser = ["bare", "wrapped"])]
        phase2_results: String,
        /// The phones' local lock PIN, which their simulated users know: a phone locked with the
        /// lock prefix asks for it before its next outgoing call, and the user keys it after
        /// --pin-delay. Without it a locked phone stays locked (the call fails: phone_locked).
        #[arg(long, value_name = "PIN")]
        local_pin: Option<String>,
        /// How long a simulated user takes to key the PIN after picking up.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        pin_delay: std::time::Duration,
        /// With --dialect xml or xml-nul: `required` (StartApplicationSession before any CSTA request, as
        /// OpenScape and MX-ONE) or `none` (requests served at once).
        #[arg(long, default_value = "required", value_parser = ["required", "none"])]
        xml_session: String,
        /// Serve CSTA over TLS with this certificate chain (PEM), as a PBX's TLS CTI port does;
        /// with --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require a client certificate signed by a CA of this PEM file (mutual TLS).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// ECMA-285 Phase III, 2-byte length framing (Panasonic and most Phase III PBXs).
    Phase3,
    /// Alcatel OXE: Phase II, 2-byte length framing.
    Oxe,
    /// Siemens HiPath / OpenScape Business: Phase III, 0x26 framing.
    Hipath,
    /// CSTA XML (ECMA-323) with the 8-byte header `00 00 LL LL` + 4-digit invoke id.
    Xml,
    /// CSTA XML documents each ended by a NUL byte.
    XmlNul,
    /// Guess framing and dialect per file.
    Auto,
}

impl Profile {
    fn fixed(self) -> Option<(Framing, Dialect)> {
        match self {
            Profile::Phase3 => Some((Framing::TwoByteLength, Dialect::Phase3)),
            Profile::Oxe => Some((Framing::TwoByteLength, Dialect::Phase2)),
            Profile::Hipath => Some((Framing::Siemens, Dialect::Phase3)),
            // ECMA-323 is the XML form of Phase III: its members are read by the Phase III tables.
            Profile::Xml => Some((Framing::XmlHeader, Dialect::Phase3)),
            Profile::XmlNul => Some((Framing::XmlNul, Dialect::Phase3)),
            Profile::Auto => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { dialect, json, port, files } => {
            init_logs("warn", LogFormat::Text);
            run_decode(dialect, json, port, &files)
        }
        Command::Probe { config, pbx, monitors, make_call, count, timeout, json, keep_call } => {
            init_logs("warn", LogFormat::Text);
            runtime().block_on(cstagate::probe::run(cstagate::probe::Probe { config, pbx, monitors, make_call: make_call.map(|v| (v[0].clone(), v[1].clone())), count, timeout, json, keep_call }))
        }
        Command::Run { config } => runtime().block_on(run_gateway(&config)),
        Command::CheckConfig { config } => {
            init_logs("warn", LogFormat::Text);
            check_config(&config)
        }
        Command::Demo { dialect, scenario } => {
            init_logs("warn", LogFormat::Text);
            runtime().block_on(async move {
                // The demo stamps its lines with the time since it began, in the order things happened.
                let say = |l: &str| println!("{l}");
                match cstagate::demo::run(dialect, scenario, &say).await {
                    Ok((_, true)) => ExitCode::SUCCESS,
                    Ok((v, false)) => {
                        eprintln!("cstagate demo: unexpected outcome: {v}");
                        Exit::Failure.into()
                    }
                    Err(e) => {
                        eprintln!("cstagate demo: {e}");
                        Exit::Failure.into()
                    }
                }
            })
        }
        Command::SimPbx { listen, dialect, extensions, ivr_number, lock_prefix, acse_user, acse_password_env, keepalive, answer_after, phase2_results, local_pin, pin_delay, xml_session, tls_cert, tls_key, tls_client_ca } => {
            init_logs("info", LogFormat::Text);
            let usage = |msg: String| {
                eprintln!("cstagate sim-pbx: {msg}");
                ExitCode::from(Exit::Usage)
            };
            let (framing, dialect, preamble) = match dialect {
                Profile::Oxe => (Framing::TwoByteLength, Dialect::Phase2, true),
                Profile::Hipath => (Framing::Siemens, Dialect::Phase3, false),
                Profile::Xml => (Framing::XmlHeader, Dialect::Phase3, false),
                Profile::XmlNul => (Framing::XmlNul, Dialect::Phase3, false),
                Profile::Phase3 => (Framing::TwoByteLength, Dialect::Phase3, false),
                // A PBX speaks one dialect: there is nothing to guess.
                Profile::Auto => return usage("--dialect auto is for `decode`; a simulated PBX speaks one of phase3, oxe, hipath, xml, xml-nul".into()),
            };
            let numbers = match cstagate::config::parse_directory(&extensions) {
                Ok(n) => n,
                Err(e) => return usage(format!("--extensions: {e}")),
            };
            if local_pin.as_deref().is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#')) {
                return usage("--local-pin: digits, * and # only".into());
            }
            let credentials = match (acse_user, acse_password_env) {
                (Some(u), Some(var)) => match std::env::var(&var) {
                    Ok(p) if !p.is_empty() => Some((u, p.into())),
                    _ => return usage(format!("--acse-password-env names {var}, which is not set or empty")),
                },
                // clap requires both or neither: a login without a password would check nothing.
                _ => None,
            };
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => match cstagate::sim::SimTls::from_pem_files(cert, key, tls_client_ca.as_deref()) {
                    Ok(t) => Some(t),
                    // A certificate or key file that does not serve: configuration, as for `run`.
                    Err(e) => {
                        eprintln!("cstagate sim-pbx: TLS: {e}");
                        return Exit::Config.into();
                    }
                },
                // clap requires both or neither.
                _ => None,
            };
            let cfg = cstagate::sim::SimConfig {
                dialect,
                framing,
                preamble,
                // XML opens with its session instead (`xml` below).
                acse: !framing.is_xml(),
                credentials,
                keepalive,
                extensions: numbers
                    .iter()
                    .map(|n| cstagate::sim::Extension { pin: local_pin.clone(), user_pin: local_pin.clone(), pin_delay, ..cstagate::sim::Extension::answering(n, answer_after) })
                    .collect(),
                lock_prefix: Some(lock_prefix),
                ivr_number: Some(ivr_number),
                ivr_pool: Vec::new(),
                did_prefix: "+3314400".into(),
                // clap allowed only the two names.
                phase2_results: phase2_results.parse().unwrap_or_default(),
                // clap allowed only `required` and `none`.
                xml: cstagate::sim::SimXml { session: xml_session == "required", ..cstagate::sim::SimXml::default() },
                tls,
            };
            let rt = runtime();
            let code = rt.block_on(run_sim(cfg, &listen));
            // A read of stdin may still block its thread: do not wait for it.
            rt.shutdown_background();
            code
        }
    }
}

/// The logs on stderr: `RUST_LOG` if set (e.g. `cstagate=debug`), else `default`; readable lines
/// or one JSON object per line.
fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

/// `cstagate check-config`: [`cstagate::server::check`], then a one-screen summary.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = match cstagate::server::check(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cstagate check-config: {e}");
            return e.exit().into();
        }
    };
    let c = &checked.config;
    let g = &c.gateway;
    println!("{}: OK", path.display());
    println!("API        {}://{}", if g.tls_files().is_some() { "https" } else { "http" }, g.listen);
    if let Some(f) = &g.fastagi_listen {
        println!("FastAGI    {f}");
    }
    println!("database   {}", g.database.display());
    let ready = g.ready_min_links.map_or_else(|| "all PBX links".to_owned(), |n| format!("{n} PBX link(s)"));
    println!("readyz     store and {ready} up");
    println!("tenants    {}", if c.tenant.is_empty() { "none".to_owned() } else { c.tenant.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ") });
    for p in &c.pbx {
        // `check` built every profile already.
        let (address, dialect, tls) = p.profile().map(|l| (l.address, format!("{:?}", p.dialect).to_lowercase(), l.tls.is_some())).unwrap_or_default();
        let policy = p.tenant.as_deref().map_or_else(|| "no tenant (link only)".to_owned(), |t| format!("tenant {t}, {} extension range(s)", p.extensions.len()));
        println!("pbx        {} {dialect} {address}{} — {policy}", p.id, if tls { " (TLS)" } else { "" });
    }
    ExitCode::SUCCESS
}

async fn run_gateway(path: &std::path::Path) -> ExitCode {
    // Before anything starts: a SIGTERM during the start stops the gateway as well, instead of
    // killing the process halfway.
    let stop = match StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cstagate run: cannot watch for SIGTERM and Ctrl-C: {e}");
            return Exit::CannotStart.into();
        }
    };
    let hangup = watch_hangup();
    // The same checks as `check-config` and a reload.
    let checked = match cstagate::server::check(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cstagate run: {e}");
            return e.exit().into();
        }
    };
    init_logs("info", checked.config.gateway.log_format);
    let running = match cstagate::server::start(&checked.config, checked.secrets).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cstagate run: {e}");
            return e.exit().into();
        }
    };
    println!("cstagate gateway API on {}://{}", if running.tls() { "https" } else { "http" }, running.addr);
    if let Some(addr) = running.fastagi_addr {
        println!("cstagate FastAGI on {addr}");
    }
    let signal = tokio::select! {
        s = stop.recv() => s,
        () = reload_on_hangup(hangup, &running, path) => "none",
    };
    tracing::info!(signal, "stop requested");
    running.shutdown().await;
    println!("cstagate gateway stopped");
    ExitCode::SUCCESS
}

/// On each SIGHUP, reload the configuration ([`cstagate::server::Running::reload`]: the PBX
/// links, policies, tenants, and the API's TLS files), logging and counting the outcome. Never
/// returns (pending forever when SIGHUP cannot be watched, or off Unix).
async fn reload_on_hangup(hangup: Hangup, running: &cstagate::server::Running, path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::sync::atomic::Ordering::Relaxed;
        match hangup {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                    match running.reload(path).await {
                        Ok(r) => {
                            running.control().reloads().applied.fetch_add(1, Relaxed);
                            if !r.need_restart.is_empty() {
                                tracing::warn!(keys = ?r.need_restart, "changed keys take effect at the next start only: not applied");
                            }
                            tracing::info!(added = ?r.links_added, removed = ?r.links_removed, restarted = ?r.links_restarted, "configuration reloaded");
                        }
                        Err(e) => {
                            running.control().reloads().failed.fetch_add(1, Relaxed);
                            tracing::warn!(trigger = "SIGHUP", error = %e, "configuration reload failed: the configuration in use is kept");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch for SIGHUP: no configuration reload (the API certificate is reloaded on file changes only)"),
        }
    }
    #[cfg(not(unix))]
    let _ = (hangup, running, path);
    std::future::pending::<()>().await;
}

/// SIGHUP, watched from the start on (its default action would end the process).
#[cfg(unix)]
type Hangup = std::io::Result<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn watch_hangup() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    }
}

/// Ctrl-C (SIGINT), or SIGTERM (what service managers and `kill` send): either stops the gateway
/// the same way ([`cstagate::server::Running::shutdown`]) and the process exits 0.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Take over both signals from now on.
    fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The name of the first signal received.
    async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cstagate: cannot start the async runtime: {e}");
            std::process::exit(i32::from(Exit::CannotStart.code()));
        }
    }
}

/// The simulated PBX, printing what its IVR number receives; commands on stdin play the IVR
/// platform's side of the call (`hangup`).
async fn run_sim(cfg: cstagate::sim::SimConfig, listen: &str) -> ExitCode {
    use cstagate::sim::IvrSignal;
    let mut sim = match cstagate::sim::SimPbx::start(cfg, listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cstagate sim-pbx: cannot listen on {listen}: {e}");
            return Exit::CannotStart.into();
        }
    };
    println!("simulated PBX listening on {}", sim.addr());
    let mut ivr = sim.take_ivr();
    let line = sim.ivr_handle();
    // Calls the IVR number answered and not yet ended, for `hangup` without a call id.
    let mut answered = std::collections::BTreeSet::new();
    let mut commands = if stdin_is_ours() { Some(tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()))) } else { None };
    loop {
        tokio::select! {
            s = async { match ivr.as_mut() { Some(r) => r.recv().await, None => None } } => match s {
                // What the IVR platform receives: the call, the digits dialled after the number
                // or sent as DTMF (the context), the PBX ending the call.
                Some(IvrSignal::Connected { call, calling, called }) => {
                    println!("ivr: call {call} from {calling} to {called} answered");
                    answered.insert(call);
                }
                Some(IvrSignal::Digits { call, digits }) => println!("ivr: call {call} digits {digits}"),
                Some(IvrSignal::Cleared { call }) => {
                    println!("ivr: call {call} cleared by the PBX");
                    answered.remove(&call);
                }
                None => ivr = None,
            },
            l = async { match commands.as_mut() { Some(c) => c.next_line().await, None => std::future::pending().await } } => match l {
                // The IVR platform ends its calls after its last prompt: `hangup [CALL]`.
                Ok(Some(l)) => {
                    let calls: Vec<String> = match l.split_whitespace().collect::<Vec<_>>()[..] {
                        ["hangup"] => std::mem::take(&mut answered).into_iter().collect(),
                        ["hangup", call] => {
                            let found = answered.take(call);
                            if found.is_none() {
                                eprintln!("cstagate sim-pbx: no IVR call {call} (calls: {answered:?})");
                            }
                            found.into_iter().collect()
                        }
                        [] => Vec::new(),
                        _ => {
                            eprintln!("cstagate sim-pbx: commands: `hangup` (every IVR call) or `hangup CALL`");
                            Vec::new()
                        }
                    };
                    for call in calls {
                        line.hangup(&call);
                        println!("ivr: call {call} hung up by the IVR");
                    }
                }
                // stdin closed (`< /dev/null`, a script): no more commands, the PBX runs on.
                Ok(None) | Err(_) => commands = None,
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// Whether `sim-pbx` may read commands on stdin: not when it is a background job of an
/// interactive shell (`cstagate sim-pbx ... &`), where reading the terminal would stop it.
fn stdin_is_ours() -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return true;
    }
    // /proc/self/stat after the command name: state ppid pgrp session tty_nr tpgid (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    match (fields.get(2), fields.get(5)) {
        (Some(pgrp), Some(tpgid)) => pgrp == tpgid,
        _ => true,
    }
}

/// `cstagate decode`: exit 0, [`Exit::Usage`] when a file cannot be read, is in no known format or
/// has no packet on `--port`, else [`Exit::Protocol`] when an APDU did not decode.
fn run_decode(profile: Profile, json: bool, port: Option<u16>, files: &[PathBuf]) -> ExitCode {
    let mut failed = 0usize;
    let mut unreadable = 0usize;
    let mut n = 0usize;
    let mut out = std::io::stdout().lock();
    let code = |unreadable: usize, failed: usize| -> ExitCode {
        if unreadable > 0 {
            Exit::Usage.into()
        } else if failed > 0 {
            Exit::Protocol.into()
        } else {
            ExitCode::SUCCESS
        }
    };
    for path in files {
        let frames = match capture::read_file(path, profile.fixed().map(|p| p.0), port) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("cstagate decode: {e}");
                unreadable += 1;
                continue;
            }
        };
        let (framing, dialect) = profile.fixed().unwrap_or_else(|| {
            let framing = capture::guess_framing(&frames);
            (framing, guess(&frames, framing))
        });
        for frame in &frames {
            n += 1;
            let result = decode::decode_frame(frame, framing, dialect);
            if result.is_err() {
                failed += 1;
            }
            let j = decode::to_json(n, frame, &result, dialect);
            let line = if json { j.to_string() } else { format!("{} [{}]", decode::to_line(&j), frame.origin) };
            // A closed pipe (`| head`) ends the output quietly.
            if writeln!(out, "{line}").is_err() {
                return code(unreadable, failed);
            }
        }
    }
    if failed > 0 {
        eprintln!("cstagate decode: {failed} APDU(s) failed to decode");
    }
    code(unreadable, failed)
}

/// The dialect the first discriminating BER APDU of a trace shows; Phase III when none does (XML
/// frames are always read as Phase III).
fn guess(frames: &[CapturedFrame], framing: Framing) -> Dialect {
    frames
        .iter()
        .filter(|f| !f.framing.unwrap_or(framing).is_xml())
        .filter_map(|f| f.framed.as_ref().ok().and_then(|b| capture::unframe(f.framing.unwrap_or(framing), b).ok()))
        .find_map(|apdu| guess_dialect(&apdu))
        .unwrap_or(Dialect::Phase3)
}
