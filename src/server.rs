//! `cstagate run`: the real gateway from a configuration — store, engine, PBX links, HTTP API
//! and IVR webhook — started for real, and stopped in order ([`Running::shutdown`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Secrets;
use crate::api_tls::ApiTls;
use crate::association::{Action, Engine};
use crate::config::{read_secret, Config, ConfigError, SecretSource};
use crate::clock::now_ms;
use crate::gateway::Gateway;
use crate::link::Link;
use crate::shutdown::Shutdown;

pub use crate::gateway::RELEASE_TIMEOUT;

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    /// The FastAGI server's address, when configured.
    pub fastagi_addr: Option<SocketAddr>,
    pub gateway: Gateway,
    /// The accept loops of the API and of FastAGI: each ends, dropping its listener, when the
    /// shutdown begins.
    server: tokio::task::JoinHandle<()>,
    fastagi: Option<tokio::task::JoinHandle<()>>,
    shutdown: Shutdown,
    /// `shutdown_grace`: how long requests in progress have to finish.
    grace: std::time::Duration,
    /// The API's TLS configuration, when `tls_cert` and `tls_key` are set.
    tls: Option<Arc<ApiTls>>,
    /// The configuration in use (what a reload compares the new file with).
    config: std::sync::Mutex<Config>,
    /// The API's principals and readiness threshold, changed by a reload.
    control: crate::api::ApiControl,
    /// The PBXs' directories (`GET /v1/directory/{pbx}`), rebuilt by a reload.
    directories: crate::directory::Directories,
    /// With `[cluster]`: the lease task, which decides which PBXs' links run here.
    cluster: Option<crate::cluster::shell::Cluster>,
}

/// What a reload changed ([`Running::reload`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub links_added: Vec<String>,
    pub links_removed: Vec<String>,
    pub links_restarted: Vec<String>,
    /// `[gateway]` keys that changed but take effect at the next start only.
    pub need_restart: Vec<&'static str>,
}

/// A configuration checked as `cstagate run` checks it before it opens a socket or the store:
/// the file read and validated ([`Config::load`]), the secrets it names read, the policies and
/// each PBX's link profile built (ACSE passwords, CSTA TLS files), the API's TLS files loaded.
/// `check-config`, `run` and a reload all go through [`check`], so they accept the same files.
pub struct Checked {
    pub config: Config,
    pub secrets: Secrets,
}

/// Check the configuration at `path` (see [`Checked`]); no socket is opened, nothing written.
///
/// # Errors
/// What `run` would refuse, naming the key, the variable or the file.
pub fn check(path: &std::path::Path) -> Result<Checked, StartError> {
    let config = Config::load(path)?;
    let secrets = secrets_from_env(&config)?;
    config.policies()?;
    for p in &config.pbx {
        p.profile()?;
        // The directory's sources as `run` and a reload build them (the LDAP password's
        // variable, `ldap_ca`): a file that passes here never fails there.
        p.directory_settings()?;
    }
    config.gateway.fastagi_allow_networks()?;
    if let Some(files) = config.gateway.tls_files() {
        ApiTls::load(files)?;
    }
    Ok(Checked { config, secrets })
}

impl Running {
    /// Whether the API speaks HTTPS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Read the API's certificate, key and client CA again (what SIGHUP does): handshakes begun
    /// afterwards use them, open connections keep theirs. `Ok(false)` without TLS.
    ///
    /// # Errors
    /// A file is unreadable or invalid, or the key does not match: the error names the key and
    /// the file, and the configuration in use is kept.
    pub fn reload_tls(&self) -> Result<bool, ConfigError> {
        match &self.tls {
            None => Ok(false),
            Some(tls) => tls.reload().map(|()| true),
        }
    }

    /// Read the configuration at `path` again and apply what changed (what SIGHUP does): the
    /// file is checked whole first ([`check`]); a file that does not pass changes nothing. Then,
    /// by PBX: a PBX added starts its link; a PBX removed fails its associations in flight
    /// `pbx_removed`, clears their calls and releases its link; a PBX whose link keys changed
    /// gets a new link (its associations in flight fail their attempt `link_down`); links whose
    /// keys did not change keep their connection. The policies are swapped (new associations see
    /// them), the tenants' tokens and the IVR secret too, and `ready_min_links`. `[gateway]` keys
    /// that need a restart (listeners, database, ...) are listed in the answer and not applied.
    /// The API's TLS files are read again as well.
    ///
    /// # Errors
    /// The new configuration does not pass [`check`] (the error names the key), or the gateway
    /// stopped.
    pub async fn reload(&self, path: &std::path::Path) -> Result<Reloaded, StartError> {
        let owned = path.to_owned();
        let checked = tokio::task::spawn_blocking(move || check(&owned)).await.map_err(|_| StartError::Stopped)??;
        let new = checked.config;
        let old = self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut done = Reloaded { need_restart: old.restart_keys(&new), ..Reloaded::default() };
        let mut links = Vec::new();
        // With [cluster], which links run is the leases' decision (the gate's): a change of
        // the PBXs or of their link keys waits for a restart.
        let pbxs = |c: &Config| c.pbx.iter().map(|p| (p.id.clone(), p.link_settings())).collect::<Vec<_>>();
        let clustered = self.cluster.is_some();
        if clustered && pbxs(&old) != pbxs(&new) {
            done.need_restart.push("[[pbx]] (ids and link keys, with [cluster])");
        }
        for p in new.pbx.iter().filter(|_| !clustered) {
            match old.pbx(&p.id) {
                Some(o) if o.link_settings() == p.link_settings() => continue,
                Some(_) => done.links_restarted.push(p.id.clone()),
                None => done.links_added.push(p.id.clone()),
            }
            links.push((p.id.clone(), Link::spawn(p.profile()?)));
        }
        done.links_removed = old.pbx.iter().filter(|o| !clustered && new.pbx(&o.id).is_none()).map(|o| o.id.clone()).collect();
        let change = crate::gateway::Reconfigure { policies: new.policies()?, links, removed: done.links_removed.clone() };
        self.gateway.reconfigure(change).await.map_err(|_| StartError::Stopped)?;
        self.control.set_secrets(checked.secrets);
        self.control.set_ready_min_links(new.gateway.ready_min_links);
        // The directory sources (names, CSV files, LDAP) of the new file; on error the ones in
        // use stay, and the reload says so.
        if let Err(e) = self.directories.reload(&new) {
            tracing::warn!(error = %e, "directories not reloaded: the previous ones stay in use");
        }
        if let Some(tls) = &self.tls {
            tls.reload_logged("SIGHUP");
        }
        *self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(done)
    }

    /// The API's control handle (reload counters for `/metrics`).
    pub fn control(&self) -> &crate::api::ApiControl {
        &self.control
    }

    /// Stop, in this order, and return when done: stop accepting connections (API and FastAGI:
    /// their listeners are closed, a new connection is refused) and let the requests and
    /// sessions in progress finish, for `shutdown_grace` at most (connections still open then
    /// are closed); stop the gateway (the engine's last commits made; it ends the associations
    /// in flight); release every PBX link (RLRQ), for [`RELEASE_TIMEOUT`] at most.
    pub async fn shutdown(self) {
        tracing::info!(grace = ?self.grace, "shutting down: no new connections, requests in progress may finish");
        self.shutdown.begin();
        // The accept loops end at once; awaiting them makes sure their listeners are closed.
        let _ = self.server.await;
        if let Some(f) = self.fastagi {
            let _ = f.await;
        }
        tracing::info!(open = self.shutdown.open(), "stopped accepting connections");
        let left = self.shutdown.drain(self.grace).await;
        if left > 0 {
            tracing::warn!(closed = left, grace = ?self.grace, "connections still open after the grace period were closed");
        }
        self.gateway.stop().await;
        tracing::info!("gateway stopped: last commits made");
        let links: Vec<Link> = self.gateway.links().values().cloned().collect();
        let release = futures_util::future::join_all(links.iter().map(Link::shutdown));
        if tokio::time::timeout(RELEASE_TIMEOUT, release).await.is_err() {
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, "a PBX did not confirm the release of its link in time");
        }
        tracing::info!(links = links.len(), "PBX links released; stopped");
        if let Some(c) = self.cluster {
            c.stop().await;
        }
    }

    /// With `[cluster]`: the PBXs this instance owns now, with their lease epochs.
    pub fn owned(&self) -> Option<std::collections::BTreeMap<String, i64>> {
        self.cluster.as_ref().map(crate::cluster::shell::Cluster::owned)
    }
}

/// The API's HTTP/1.1 server: at most `max_connections` connections at once — the next ones
/// wait in the listen queue until one closes — and `header_timeout` for each request's headers
/// (also while a kept-alive connection waits for its next request), so that clients that connect
/// and say nothing, or send headers byte by byte, cannot hold the API: their slots free up within
/// `header_timeout`. (`axum::serve` has neither limit.)
///
/// With `tls`, every connection first completes a TLS handshake with the configuration in use
/// at that moment (within `header_timeout`, holding its slot); one that fails is closed without
/// an HTTP answer, so a plain HTTP request gets nothing.
///
/// When `shutdown` begins it returns, closing the listener, and each connection finishes the
/// response in progress and closes (an idle one at once: hyper's graceful shutdown); one still
/// open when the grace period is over is closed.
async fn serve(listener: tokio::net::TcpListener, app: axum::Router, max_connections: usize, header_timeout: std::time::Duration, tls: Option<Arc<ApiTls>>, shutdown: Shutdown) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.stopping() => return,
            a = async {
                let slot = slots.clone().acquire_owned().await.ok()?;
                Some((slot, listener.accept().await))
            } => a,
        };
        let Some((slot, accepted)) = accepted else { return };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: give connections time to close.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        shutdown.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return serve_connection(hyper_util::rt::TokioIo::new(stream), app, header_timeout, stop, peer).await;
            };
            // The handshake has `header_timeout` as well: a client that connects and says
            // nothing, or trickles its ClientHello, frees its slot as soon as with plain HTTP.
            let handshake = tokio::select! {
                h = tokio::time::timeout(header_timeout, tls.acceptor().accept(stream)) => h,
                () = stop.stopping() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_connection(hyper_util::rt::TokioIo::new(stream), app, header_timeout, stop, peer).await,
                // Plain HTTP, an untrusted client certificate or none when one is required.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, timeout = ?header_timeout, "API TLS handshake not finished in time"),
            }
        });
    }
}

/// HTTP/1.1 on one accepted connection (TCP, or TLS once the handshake is done) until it
/// closes, the client is too slow with its headers, or the shutdown's grace period ends.
async fn serve_connection<I>(io: I, app: axum::Router, header_timeout: std::time::Duration, stop: Shutdown, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.stopping() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            // The response in progress goes out, then the connection closes.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                // Grace period over: dropping the connection closes it.
                () = stop.closing() => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "API connection ended");
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("secret: {0}")]
    Secret(String),
    /// The gateway stopped (during a reload).
    #[error("the gateway stopped")]
    Stopped,
}

impl StartError {
    /// The exit code of `cstagate run` (and `check-config`) for this error: a configuration the
    /// start refused (a key, a secret, a file) is [`Exit::Config`](crate::exit::Exit::Config);
    /// a store that cannot be opened or an address that cannot be bound is
    /// [`Exit::CannotStart`](crate::exit::Exit::CannotStart).
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            StartError::Config(_) | StartError::Secret(_) => crate::exit::Exit::Config,
            StartError::Store(_) | StartError::Listen { .. } | StartError::Stopped => crate::exit::Exit::CannotStart,
        }
    }
}

/// Read the API secrets the configuration names from the environment.
///
/// # Errors
/// A named variable is not set or empty ([`ConfigError::Secret`]), or two principals share a
/// token ([`StartError::Secret`]): the variables are named, their values never.
pub fn secrets_from_env(c: &Config) -> Result<Secrets, StartError> {
    let mut s = Secrets::default();
    // (variable, token) of every principal, to refuse a token shared by two of them: the API
    // could not tell them apart, and one tenant would act as another, or as the admin.
    let mut tokens: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &c.gateway.admin_token_env {
        let t = read_secret("[gateway]", "admin_token_env", SecretSource::Env(v))?;
        tokens.push((v, t.clone()));
        s.admin_token = Some(t);
    }
    if let Some(v) = c.cluster.as_ref().and_then(|c| c.internal_token_env.as_ref()) {
        let t = read_secret("[cluster]", "internal_token_env", SecretSource::Env(v))?;
        tokens.push((v, t.clone()));
        s.internal_token = Some(t);
    }
    if let Some(v) = &c.gateway.ivr_secret_env {
        s.ivr_secret = Some(read_secret("[gateway]", "ivr_secret_env", SecretSource::Env(v))?);
    }
    if let (Some(v), Some(url)) = (&c.gateway.twiml_auth_token_env, &c.gateway.public_url) {
        let auth_token = read_secret("[gateway]", "twiml_auth_token_env", SecretSource::Env(v))?;
        s.twiml = Some(crate::ivr::twiml::TwimlSettings { auth_token, public_url: url.trim_end_matches('/').to_owned(), voices: c.twiml_voices(&c.prompts()?)? });
    }
    for t in &c.tenant {
        let at = format!("tenant `{}`", t.id);
        let token = read_secret(&at, "token_env", SecretSource::Env(&t.token_env))?;
        if let Some((other, _)) = tokens.iter().find(|(_, o)| *o == token) {
            return Err(StartError::Secret(format!("{at}: `token_env`: environment variables {} and {other} hold the same token; the admin and each tenant need their own", t.token_env)));
        }
        tokens.push((&t.token_env, token.clone()));
        s.tenant_tokens.insert(t.id.clone(), token);
        // `Config::parse` made sure a notify_url comes with its secret.
        if let (Some(_), Some(env)) = (&t.notify_url, &t.notify_secret_env) {
            let secret = read_secret(&at, "notify_secret_env", SecretSource::Env(env))?;
            if let Some(target) = t.notify_target(secret)? {
                s.notify.insert(t.id.clone(), target);
            }
        }
    }
    Ok(s)
}

/// Open the store, rebuild the engine from it, start the links, the gateway and the API.
///
/// # Errors
/// Bad configuration, unusable database, or the API address cannot be bound.
pub async fn start(config: &Config, secrets: Secrets) -> Result<Running, StartError> {
    // Everything the configuration can refuse (policies, ACSE passwords) before the store.
    let policies = config.policies()?;
    let profiles = config.pbx.iter().map(crate::config::PbxConfig::profile).collect::<Result<Vec<_>, _>>()?;
    let tls = config.gateway.tls_files().map(ApiTls::load).transpose()?;
    let password = config.gateway.database_password_env.as_deref().map(|v| read_secret("[gateway]", "database_password_env", SecretSource::Env(v))).transpose()?;
    let backend = config.gateway.database_backend()?;
    // With [cluster]: the store fenced by this instance's lease epochs, and no link until a
    // lease is owned (the gate starts it).
    let cluster = match (&config.cluster, &backend) {
        (Some(c), crate::store::Backend::Postgres(target)) => Some(crate::cluster::Parts::new(c, target, password.clone(), config.pbx.iter().map(|p| p.id.clone()))?),
        _ => None,
    };
    let store: Box<dyn crate::store::Store> = match (&cluster, &backend) {
        (Some(parts), crate::store::Backend::Postgres(target)) => Box::new(crate::store::PostgresStore::open(target, password)?.fenced(parts.fence.clone())),
        _ => backend.open(password)?,
    };
    let mut snap = store.snapshot(now_ms())?;
    if cluster.is_some() {
        // The associations in flight are their PBX owners' (maybe alive): not this start's to end.
        snap.in_flight.clear();
    }
    let (mut engine, restored): (Engine, Vec<Action>) = Engine::restore(policies.clone(), snap, now_ms());
    if cluster.is_some() {
        // No PBX is acted for until its lease is taken and it is adopted (the gate).
        engine.set_served(Some(std::collections::HashSet::new()));
    }
    let (links, cluster_profiles): (HashMap<_, _>, HashMap<_, _>) = match cluster {
        None => (profiles.into_iter().map(|p| (p.id.clone(), Link::spawn(p))).collect(), HashMap::new()),
        Some(_) => (HashMap::new(), profiles.into_iter().map(|p| (p.id.clone(), p)).collect()),
    };
    let notifier = (!secrets.notify.is_empty()).then(|| crate::notify::Notifier::start(secrets.notify.clone()));
    let gateway = Gateway::start(engine, store, links, notifier, restored);
    let route_policies = cluster.as_ref().map(|_| policies.clone()).unwrap_or_default();
    let cluster = cluster.map(|parts| parts.start(gateway.clone(), cluster_profiles, policies));
    let listener = listen(&config.gateway.listen).await.map_err(|source| StartError::Listen { addr: config.gateway.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.gateway.listen.clone(), source })?;
    let guards = crate::ivr::IvrGuards::new(config.gateway.ivr_guesses_per_minute);
    let directories = crate::directory::Directories::start(config)?;
    let (app, control) = crate::api::router_control(gateway.clone(), secrets, guards.clone(), config.gateway.ready_min_links, directories.clone());
    if let (Some(c), Some(settings)) = (&cluster, &config.cluster) {
        let forwarder = crate::cluster::forward::Forwarder::new(settings.forward_tls()?);
        control.set_routing(crate::api::route::Routing::new(c.view(), route_policies, forwarder));
    }
    let shutdown = Shutdown::new();
    let tls = tls.map(Arc::new);
    if let Some(t) = &tls {
        tokio::spawn(t.clone().watch(shutdown.clone()));
    }
    let server = tokio::spawn(serve(listener, app, config.gateway.max_connections, config.gateway.header_timeout, tls.clone(), shutdown.clone()));
    if tls.is_some() {
        tracing::info!(%addr, client_certificates = config.gateway.tls_client_ca.is_some(), "gateway API listening (HTTPS)");
    } else {
        tracing::warn!(%addr, "the API serves plain HTTP: bearer tokens and IVR webhook signatures cross the network in clear; set [gateway] tls_cert and tls_key");
        tracing::info!(%addr, "gateway API listening");
    }
    let mut fastagi_addr = None;
    let mut fastagi = None;
    if let Some(listen) = &config.gateway.fastagi_listen {
        let l = self::listen(listen).await.map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
        fastagi_addr = l.local_addr().ok();
        let files = config.fastagi_files(&config.prompts()?)?;
        let settings = crate::ivr::fastagi::FastAgiSettings {
            prompts: files.all,
            prompts_by_language: files.by_language,
            fallback: config.gateway.fastagi_fallback.clone().unwrap_or_else(|| "cstagate/tts".into()),
            allow: config.gateway.fastagi_allow_networks()?,
            guesses_per_minute: config.gateway.ivr_guesses_per_minute,
            cluster: cluster.as_ref().map(|_| crate::ivr::fastagi::ClusterIvr(control.clone())),
            ..Default::default()
        };
        fastagi = Some(tokio::spawn(crate::ivr::fastagi::serve_until(l, gateway.clone(), std::sync::Arc::new(settings), guards, shutdown.clone())));
        tracing::info!(addr = ?fastagi_addr, "FastAGI server listening");
    }
    Ok(Running { addr, fastagi_addr, gateway, server, fastagi, shutdown, grace: config.gateway.shutdown_grace, tls, config: std::sync::Mutex::new(config.clone()), control, directories, cluster })
}

/// Connections the kernel queues for a listener before the gateway accepts them. A burst of app
/// requests or IVR webhooks (a thousand users at nine o'clock) overflowed the standard 128: the
/// kernel reset the connections it had no room for. Capped by `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

/// Bind a TCP listener on `addr` (`host:port`, the first address it resolves to) with
/// [`LISTEN_BACKLOG`].
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")))
}
