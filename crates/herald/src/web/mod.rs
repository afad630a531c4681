//! The web app, embedded in the binary: a browser opening the server (or
//! `/<topic>`, as with ntfy) gets a small app that subscribes, shows and publishes
//! notifications over the same API every other client uses, and registers for Web
//! Push. Nothing is built at `cargo build` time: the app is plain ES modules
//! (`assets/`), included as bytes and served with an `ETag` so a browser revalidates
//! instead of downloading again. `/config.js` and `/manifest.webmanifest` are made
//! from the configuration.
//!
//! The module only answers requests the router hands it; the app's data comes from
//! the ntfy API (`api`), so the app can do nothing a `curl` cannot.

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use sha2::{Digest as _, Sha256};

use crate::api::AppState;

/// Where the app lives (`web-root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRoot {
    /// `disable`: no app; `/` answers the plain-text pointer.
    Disabled,
    /// The app's path: `/` (the default) or e.g. `/app`.
    At(String),
}

/// The web app's settings (`web-root`) and Web Push (`web-push-*`).
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub root: WebRoot,
    pub push: Option<crate::webpush::WebPushConfig>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            root: WebRoot::At("/".into()),
            push: None,
        }
    }
}

impl WebConfig {
    /// The app's path as `/v1/config`'s `app_root` reports it (`/` when disabled).
    pub fn app_root(&self) -> &str {
        match &self.root {
            WebRoot::At(path) => path,
            WebRoot::Disabled => "/",
        }
    }
}

/// `web-root`: `/`, `disable`, or a path of topic-name characters such as `/app`.
pub fn parse_web_root(s: &str) -> Result<WebRoot, String> {
    match s {
        "disable" => Ok(WebRoot::Disabled),
        "" | "/" => Ok(WebRoot::At("/".into())),
        path => {
            let name = path.strip_prefix('/').unwrap_or(path).trim_end_matches('/');
            if crate::model::topic::is_valid_name(name) {
                Ok(WebRoot::At(format!("/{name}")))
            } else {
                Err("expected `/`, `disable` or a path such as `/app`".into())
            }
        }
    }
}

/// One embedded file, and its gzip copy (made by `scripts/web-assets-gzip.sh`).
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    gzip: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("assets/", $file)),
            gzip: include_bytes!(concat!("assets/", $file, ".gz")),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every embedded file, by the path it is served at. `index.html` is the app's page.
static ASSETS: &[Asset] = &[
    asset!("/index.html", "index.html", "text/html; charset=utf-8"),
    asset!("/static/app.js", "app.js", JS),
    asset!("/static/render.js", "render.js", JS),
    asset!("/static/api.js", "api.js", JS),
    asset!("/static/admin.js", "admin.js", JS),
    asset!("/static/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/static/icon.svg", "icon.svg", "image/svg+xml"),
    // At the root so its scope is the whole origin.
    asset!("/sw.js", "sw.js", JS),
];

/// The strong validator of each asset, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// Whether the client asked for a page (a browser's navigation), not an API answer.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The answer for a web-app path, or `None` when the request is the API's.
/// `segments` is the path split at `/` without its leading slash.
pub(crate) fn serve(
    state: &AppState,
    method: &Method,
    segments: &[&str],
    headers: &HeaderMap,
) -> Option<Response> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let web = &state.herald.config().web;
    let WebRoot::At(root) = &web.root else {
        return None;
    };
    let page = || asset_response("/index.html", headers);
    match segments {
        ["config.js"] => Some(config_js(state)),
        ["manifest.webmanifest"] => Some(manifest(web)),
        ["sw.js"] => asset_response("/sw.js", headers),
        ["static", name] => asset_response(&format!("/static/{name}"), headers),
        [""] if root == "/" && wants_html(headers) => page(),
        // ntfy: a browser opening `/<topic>` gets the app, subscribed to it.
        [name]
            if !name.is_empty()
                && (root == &format!("/{name}")
                    || (wants_html(headers) && crate::model::topic::is_valid_name(name))) =>
        {
            page()
        }
        _ => None,
    }
}

/// Whether the client takes a gzip-coded answer.
fn takes_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn asset_response(path: &str, headers: &HeaderMap) -> Option<Response> {
    let index = ASSETS.iter().position(|a| a.path == path)?;
    let asset = &ASSETS[index];
    let gzip = takes_gzip(headers);
    // Each coding is its own representation, with its own strong validator.
    let etag = if gzip {
        format!("{}-gz\"", ETAGS[index].trim_end_matches('"'))
    } else {
        ETAGS[index].clone()
    };
    let etag = &etag;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(if gzip { asset.gzip } else { asset.body }))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip && !fresh {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated on every load (one 304 per file), so a new binary's app is used at
    // once; the files are small and the answer to a matching ETag is empty.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type.starts_with("text/html") {
        // The app loads only its own scripts; images and links may point anywhere.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src * data:; connect-src *; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    Some(resp)
}

/// `GET /config.js`: what `/v1/config` says, as a script the page loads first
/// (ntfy's `var config = {...}`).
fn config_js(state: &AppState) -> Response {
    let body = format!(
        "// Generated from the server's configuration\nvar config = {};\n",
        crate::api::info::config_body(state)
    );
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JS));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /manifest.webmanifest`: makes the app installable (and Web Push usable on
/// iOS, which requires an installed app).
fn manifest(web: &WebConfig) -> Response {
    let body = serde_json::json!({
        "name": "herald",
        "short_name": "herald",
        "description": "Notifications from your herald server",
        "start_url": web.app_root(),
        "scope": "/",
        "display": "standalone",
        "background_color": "#ffffff",
        "theme_color": "#1f5f8b",
        "icons": [{"src": "/static/icon.svg", "sizes": "any", "type": "image/svg+xml"}],
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/manifest+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Bytes the embedded files add to the binary (reported in docs/BENCHMARKS.md).
#[cfg(test)]
fn embedded_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len() + a.gzip.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_root_values() {
        assert_eq!(parse_web_root("/"), Ok(WebRoot::At("/".into())));
        assert_eq!(parse_web_root("/app"), Ok(WebRoot::At("/app".into())));
        assert_eq!(parse_web_root("app/"), Ok(WebRoot::At("/app".into())));
        assert_eq!(parse_web_root("disable"), Ok(WebRoot::Disabled));
        assert!(parse_web_root("/a/b").is_err());
        assert!(parse_web_root("/a b").is_err());
    }

    #[test]
    fn every_asset_has_a_distinct_etag_and_the_app_stays_small() {
        let mut tags = ETAGS.clone();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
        // The binary budget is tight: a regression here is a conscious choice.
        assert!(embedded_bytes() < 96 * 1024, "{} bytes", embedded_bytes());
        // Each gzip copy is a gzip stream (its magic) and smaller than the file.
        for a in ASSETS {
            assert_eq!(a.gzip[..2], [0x1f, 0x8b], "{}", a.path);
            assert!(a.gzip.len() < a.body.len(), "{}", a.path);
        }
    }

    #[test]
    fn a_matching_etag_answers_304() {
        let mut headers = HeaderMap::new();
        let first = asset_response("/static/app.js", &headers).unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, etag);
        let second = asset_response("/static/app.js", &headers).unwrap();
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert!(asset_response("/static/nope.js", &headers).is_none());
    }

    #[test]
    fn gzip_only_when_accepted() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(takes_gzip(&with("gzip, deflate, br")));
        assert!(takes_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(!takes_gzip(&with("gzip;q=0, br")));
        assert!(!takes_gzip(&with("identity")));
        assert!(!takes_gzip(&HeaderMap::new()));
        let resp = asset_response("/static/app.js", &with("gzip")).unwrap();
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(
            resp.headers()[header::ETAG]
                .to_str()
                .unwrap()
                .ends_with("-gz\"")
        );
    }
}
