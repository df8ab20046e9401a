//! `cstagate run`: the real gateway from a configuration — store, engine, PBX links, HTTP API
//! and IVR webhook — started for real.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Secrets;
use crate::association::{Action, Engine};
use crate::config::{read_secret, Config, ConfigError, SecretSource};
use crate::clock::now_ms;
use crate::gateway::Gateway;
use crate::link::Link;
use crate::store::{SqliteStore, Store};

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    /// The FastAGI server's address, when configured.
    pub fastagi_addr: Option<SocketAddr>,
    pub gateway: Gateway,
    server: tokio::task::JoinHandle<()>,
    fastagi: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop serving, stop the engine (its last writes committed, the database closed), then
    /// release every PBX link. Associations in flight are ended by the next start.
    pub async fn shutdown(self) {
        self.server.abort();
        if let Some(f) = &self.fastagi {
            f.abort();
        }
        self.gateway.stop().await;
        for l in self.gateway.links().values() {
            l.shutdown().await;
        }
    }
}

/// The API's HTTP/1.1 server: at most `max_connections` connections at once — the next ones
/// wait in the listen queue until one closes — and `header_timeout` for each request's headers
/// (also while a kept-alive connection waits for its next request), so that clients that connect
/// and say nothing, or send headers byte by byte, cannot hold the API: their slots free up within
/// `header_timeout`. (`axum::serve` has neither limit.)
async fn serve(listener: tokio::net::TcpListener, app: axum::Router, max_connections: usize, header_timeout: std::time::Duration) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: give connections time to close.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            if let Err(e) = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
        });
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
    if let Some(v) = &c.gateway.ivr_secret_env {
        s.ivr_secret = Some(read_secret("[gateway]", "ivr_secret_env", SecretSource::Env(v))?);
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
        if let (Some(url), Some(env)) = (&t.notify_url, &t.notify_secret_env) {
            let secret = read_secret(&at, "notify_secret_env", SecretSource::Env(env))?;
            s.notify.insert(t.id.clone(), crate::notify::Target { url: url.clone(), secret });
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
    let store = SqliteStore::open(&config.gateway.database)?;
    let snap = store.snapshot(now_ms())?;
    let (engine, restored): (Engine, Vec<Action>) = Engine::restore(policies, snap, now_ms());
    let links: HashMap<_, _> = profiles.into_iter().map(|p| (p.id.clone(), Link::spawn(p))).collect();
    let notifier = (!secrets.notify.is_empty()).then(|| crate::notify::Notifier::start(secrets.notify.clone()));
    let gateway = Gateway::start(engine, Box::new(store), links, notifier, restored);
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await.map_err(|source| StartError::Listen { addr: config.gateway.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.gateway.listen.clone(), source })?;
    let guards = crate::ivr::IvrGuards::new(config.gateway.ivr_guesses_per_minute);
    let app = crate::api::router_with(gateway.clone(), secrets, guards.clone());
    let server = tokio::spawn(serve(listener, app, config.gateway.max_connections, config.gateway.header_timeout));
    tracing::info!(%addr, "gateway API listening");
    let mut fastagi_addr = None;
    let mut fastagi = None;
    if let Some(listen) = &config.gateway.fastagi_listen {
        let l = tokio::net::TcpListener::bind(listen).await.map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
        fastagi_addr = l.local_addr().ok();
        let settings = crate::ivr::fastagi::FastAgiSettings {
            prompts: config.gateway.fastagi_prompts.clone(),
            fallback: config.gateway.fastagi_fallback.clone().unwrap_or_else(|| "cstagate/tts".into()),
            allow: config.gateway.fastagi_allow_networks()?,
            guesses_per_minute: config.gateway.ivr_guesses_per_minute,
            ..Default::default()
        };
        fastagi = Some(tokio::spawn(crate::ivr::fastagi::serve_guarded(l, gateway.clone(), std::sync::Arc::new(settings), guards)));
        tracing::info!(addr = ?fastagi_addr, "FastAGI server listening");
    }
    Ok(Running { addr, fastagi_addr, gateway, server, fastagi })
}
