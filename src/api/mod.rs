//! The HTTP API (JSON), served with axum: associations, bindings, CTI control of a bound
//! extension, admin views, health and metrics, the OpenAPI document, and the IVR webhook.
//!
//! Authentication: `Authorization: Bearer <token>`. Tenant tokens (the tenant's cloud service
//! acting for its accounts, which it names in the request) and one admin token, compared in
//! constant time ([`extract::Caller`]). A wrong or missing token gives 401; another tenant's
//! object gives 404. Bodies, path segments and query strings are parsed strictly
//! ([`extract`]): malformed JSON, unknown fields, wrong types, over-long strings, control or
//! bidirectional-formatting characters, characters outside a field's alphabet and invalid
//! percent-encoding give 400 with the field named; bodies over 16 KiB give 413; every refusal,
//! the framework's own included, is a JSON `{"error", "field"?, "code"?}` ([`HttpError`]). The
//! token is checked first, so an unauthenticated caller learns nothing but 401. Nothing is
//! changed when a request is refused. A stopped gateway or a failing store is 503 `unavailable`.
//!
//! The routes are registered with their `#[utoipa::path]` descriptions ([`utoipa_axum`]), so the
//! OpenAPI document served at `/v1/openapi.json` is generated from the very handlers and the
//! types they exchange: a route cannot be served without being documented.
//!
//! One file per group of routes: [`associations`], [`bindings`], [`cti`], [`admin`], [`ivr`]
//! (the webhook), [`twiml`] (the TwiML adapter), [`ops`] (health, metrics, the document),
//! [`directory`] (finding an extension by name). Besides the API, the admin console's static
//! files at `/console/` ([`console`]), which call this API only.

pub mod admin;
pub mod associations;
pub mod bindings;
pub mod console;
pub mod cti;
pub mod directory;
pub mod error;
pub mod extract;
pub mod ivr;
pub mod ops;
pub mod route;
pub mod twiml;

use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ErrorBody, HttpError};

use crate::config::Secrets;
use crate::gateway::Gateway;
use crate::webhook::{ReplayCache, REPLAY_CACHE_CAPACITY};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// Event streams (server-sent events) one tenant may hold open at once: each holds a connection,
/// a PBX monitor subscription and up to 1,024 buffered events, and the API's connections are
/// shared by all tenants.
pub const MAX_EVENT_STREAMS_PER_TENANT: usize = 64;

/// CSPRNG digits handed to the engine for a proof call's context id: enough for a few tries of
/// the longest (16 digits) should one collide with a live attempt's.
const CONTEXT_RANDOM_DIGITS: usize = 64;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    gw: Gateway,
    /// The secrets and principals, swapped whole by a configuration reload ([`ApiControl`]).
    control: ApiControl,
    replay: Arc<Mutex<ReplayCache>>,
    /// Event streams open, by tenant.
    streams: cti::Streams,
    /// The IVR adapters' guessing limits and counters (the webhook's, and FastAGI's for `/metrics`).
    ivr: crate::ivr::IvrGuards,
    /// The OpenAPI document, serialized once.
    openapi: Arc<str>,
    /// The PBXs' directories (`GET /v1/directory/{pbx}`, and their state in `GET /v1/pbx`).
    directory: crate::directory::Directories,
}

/// The API's secrets and the tokens' digests (computed once per configuration).
pub(crate) struct Auth {
    pub(crate) secrets: Secrets,
    pub(crate) tokens: extract::Tokens,
}

/// What a configuration reload changes in a running API, and what `/metrics` reads of the
/// reloads. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct ApiControl {
    auth: Arc<std::sync::RwLock<Arc<Auth>>>,
    /// PBX links that must be up for `/readyz`; `usize::MAX`: all of them.
    ready_min_links: Arc<std::sync::atomic::AtomicUsize>,
    reloads: Arc<crate::metrics::Reloads>,
    /// With `[cluster]`: where requests for other instances' PBXs go (set once, at start).
    routing: Arc<std::sync::OnceLock<Arc<route::Routing>>>,
}

impl ApiControl {
    fn new(secrets: Secrets, ready_min_links: Option<usize>) -> ApiControl {
        let tokens = extract::Tokens::new(&secrets);
        ApiControl {
            auth: Arc::new(std::sync::RwLock::new(Arc::new(Auth { secrets, tokens }))),
            ready_min_links: Arc::new(std::sync::atomic::AtomicUsize::new(ready_min_links.unwrap_or(usize::MAX))),
            reloads: Arc::default(),
            routing: Arc::default(),
        }
    }

    /// `[cluster]`: route each request to the instance that owns its PBX (set once, at start;
    /// later calls change nothing).
    pub fn set_routing(&self, routing: route::Routing) {
        let _ = self.routing.set(Arc::new(routing));
    }

    pub(crate) fn routing(&self) -> Option<Arc<route::Routing>> {
        self.routing.get().cloned()
    }

    /// The principals and secrets in use (a request keeps the ones it took).
    pub(crate) fn auth(&self) -> Arc<Auth> {
        match self.auth.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A reload: requests from now on are checked against these tokens (tenants added and
    /// removed, tokens changed) and this IVR secret.
    pub fn set_secrets(&self, secrets: Secrets) {
        let tokens = extract::Tokens::new(&secrets);
        let auth = Arc::new(Auth { secrets, tokens });
        match self.auth.write() {
            Ok(mut a) => *a = auth,
            Err(poisoned) => *poisoned.into_inner() = auth,
        }
    }

    /// A reload: `ready_min_links` (`None`: every link).
    pub fn set_ready_min_links(&self, n: Option<usize>) {
        self.ready_min_links.store(n.unwrap_or(usize::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    fn ready_min_links(&self) -> usize {
        self.ready_min_links.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The reloads counted for `/metrics`.
    pub fn reloads(&self) -> &crate::metrics::Reloads {
        &self.reloads
    }
}

/// The document's frame: what the handlers do not say themselves.
#[derive(OpenApi)]
#[openapi(
    info(title = "cstagate", description = "CTI gateway: self-service binding of a desk-phone extension to a cloud account by a proof call, and CTI control of the bound extension."),
    modifiers(&BearerAuth),
    components(schemas(crate::association::Reason, crate::association::State)),
)]
struct ApiDoc;

/// The `bearer` security scheme the routes name.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("a tenant token or the admin token")).build()));
    }
}

/// Every route with its description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(associations::create, associations::list))
        .routes(routes!(associations::get_association, associations::cancel))
        .routes(routes!(associations::complete))
        .routes(routes!(bindings::bindings_of))
        .routes(routes!(bindings::binding, bindings::unbind))
        .routes(routes!(cti::make_call))
        .routes(routes!(cti::clear_call))
        .routes(routes!(cti::events))
        .routes(routes!(admin::pbx_list))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::counters))
        .routes(routes!(admin::counters_reset))
        .routes(routes!(admin::blocks))
        .routes(routes!(admin::blocks_lift))
        .routes(routes!(ivr::ivr_webhook))
        .routes(routes!(directory::search))
        .routes(routes!(twiml::ivr_twiml))
}

/// The OpenAPI document of this API, as `/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The API's router.
pub fn router(gw: Gateway, secrets: Secrets) -> Router {
    router_with(gw, secrets, crate::ivr::IvrGuards::default())
}

/// The API's router, its webhook guarded by (and `/metrics` reading) `ivr`, without directories.
pub fn router_with(gw: Gateway, secrets: Secrets, ivr: crate::ivr::IvrGuards) -> Router {
    router_control(gw, secrets, ivr, None, crate::directory::Directories::default()).0
}

/// [`router_with`], `/readyz` requiring `ready_min_links` PBX links up (`None`: all), searching
/// `directory`; and the handle a configuration reload changes it through.
pub fn router_control(gw: Gateway, secrets: Secrets, ivr: crate::ivr::IvrGuards, ready_min_links: Option<usize>, directory: crate::directory::Directories) -> (Router, ApiControl) {
    let (router, doc) = routes().split_for_parts();
    let openapi: Arc<str> = doc.to_json().unwrap_or_default().into();
    let control = ApiControl::new(secrets, ready_min_links);
    let state = AppState { gw, control: control.clone(), replay: Arc::new(Mutex::new(ReplayCache::new(REPLAY_CACHE_CAPACITY))), streams: Arc::default(), ivr, openapi, directory };
    // The console's static files are the same on every instance: merged after the routing
    // layer, which only sends API requests to their PBX's owner.
    let public = router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), route::route))
        .merge(console::router())
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_refusals))
        .with_state(state.clone());
    // The internal surface (`[cluster]` forwarding) is unwrapped before the public routes are
    // matched: it is the public API served for another instance, not a route of its own (and
    // so never in the OpenAPI document).
    let router = Router::new().fallback_service(public).layer(axum::middleware::from_fn_with_state(state, route::internal)).layer(axum::middleware::map_response(json_refusals));
    (router, control)
}

async fn no_route() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The framework's own refusals (405, 413, ...) come as text; make every client error JSON.
/// Every refusal also closes the connection (`Connection: close`): a request is often refused
/// before its body is read (bad token, too large), and HTTP/1.1 cannot go on after an unread
/// body — without the header the client would reuse a connection the server is closing.
async fn json_refusals(resp: Response) -> Response {
    let mut resp = json_refusal(resp).await;
    if resp.status().is_client_error() {
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

async fn json_refusal(resp: Response) -> Response {
    let json = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !resp.status().is_client_error() || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    let msg = if text.is_empty() { parts.status.canonical_reason().unwrap_or("refused").to_owned() } else { text };
    // A body over the limit says which limit, however it was refused.
    let refusal = if parts.status == StatusCode::PAYLOAD_TOO_LARGE { HttpError::too_large() } else { HttpError::new(parts.status, msg) };
    let mut out = refusal.into_response();
    for (k, v) in &parts.headers {
        if k != "content-type" && k != "content-length" {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
