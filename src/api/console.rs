//! The admin console: a few static files (`console/` at the repository's root) embedded in the
//! binary and served at `/console/`, so that an operator needs nothing but a browser and the
//! gateway (no CDN, no build step, nothing fetched at run time).
//!
//! The page is plain JavaScript modules that call the public API only, with the token the
//! operator typed in `Authorization: Bearer` (kept in `sessionStorage`; never in a URL, which
//! would land in logs, history and `Referer`). Every console response carries a strict Content
//! Security Policy ([`CSP`]): scripts, styles and connections from this origin only, no inline
//! script or style, no framing, no form posts; so a value shown on the page (an account name, a
//! PBX's reason text) cannot run as code even if the page's own escaping failed.
//!
//! The files are not under `/v1/` and not in the OpenAPI document: they are not API.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::error::HttpError;

/// The Content Security Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the console is served (`/console` redirects here).
pub const PATH: &str = "/console/";

/// One embedded file: its name under `/console/`, its content type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The console's files. The page is `index.html`; the rest it loads by name.
const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../../console/index.html") },
    Asset { name: "console.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../console/console.css") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../console/app.js") },
    Asset { name: "api.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../console/api.js") },
    Asset { name: "words.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../console/words.js") },
];

/// Each file's entity tag (a digest of its bytes), computed once: the browser revalidates every
/// load (`no-cache`) and gets a 304 while the binary, hence the file, is the same.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| ASSETS.iter().map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12]))).collect());

/// The console's routes, merged into the API's router.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/console/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }))
}

/// The file `name` (404 if the console has none of that name), or 304 when the browser's copy
/// is current; with the console's security headers either way.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return HttpError::new(StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS.get(i).map_or("", String::as_str);
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response() };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_the_policy() {
        for a in ASSETS {
            let r = serve(a.name, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert_eq!(serve("../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_current_copy_gets_304() {
        let etag = serve("app.js", &HeaderMap::new()).headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        let r = serve("app.js", &h);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    }
}
