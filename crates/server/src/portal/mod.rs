//! The web portal: one HTML page, a stylesheet and a script, compiled into the binary so that
//! `deeptune serve` needs nothing beside it (no Node toolchain to build, no files to deploy).
//!
//! The page is a client of the same v2 API as the CLI: everything it shows comes from those
//! routes, with the caller's personal access token in the `Authorization` header. The token is
//! also kept in a `SameSite=Strict` cookie, which the API accepts for GET requests only, so that
//! `<img src>` thumbnails and download links work without exposing any write to cross-site requests.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// The cookie the portal stores its token in (read by [`crate::auth::Caller`] on GET requests).
pub const TOKEN_COOKIE: &str = "deeptune_key";

/// `/` and `/portal/…`. The page routes by its URL fragment (`/portal/#/apps/…`), so the server
/// serves the same page for every portal address.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal/") }))
        .route("/portal", get(|| async { Redirect::to("/portal/") }))
        .route("/portal/", get(|| async { asset("index.html", INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/portal/app.js", get(|| async { asset("app.js", APP_JS, "text/javascript; charset=utf-8") }))
        .route("/portal/app.css", get(|| async { asset("app.css", APP_CSS, "text/css; charset=utf-8") }))
        .route("/portal/favicon.svg", get(|| async { asset("favicon.svg", FAVICON_SVG, "image/svg+xml") }))
}

/// The asset compiled in, or, when `DEEPTUNE_PORTAL_DIR` names a folder (portal development:
/// edit and reload without rebuilding), the file of that name there.
fn asset(name: &str, embedded: &'static str, content_type: &'static str) -> Response {
    let body = match std::env::var_os("DEEPTUNE_PORTAL_DIR") {
        Some(dir) => {
            std::fs::read_to_string(std::path::Path::new(&dir).join(name)).unwrap_or_else(|_| embedded.to_string())
        }
        None => embedded.to_string(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary; revalidating is cheap on loopback and never shows a
    // page from one version with a script from another.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// The portal's address; with a token, a link that signs in (the token rides in the fragment,
/// which browsers never send to the server, so it stays out of access logs).
pub fn sign_in_url(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    // A wildcard listen address is not somewhere a browser can go; loopback is.
    let host = match addr.ip() {
        ip if ip.is_unspecified() => std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    };
    match token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => format!("http://{host}/portal/#key={token}"),
        None => format!("http://{host}/portal/"),
    }
}

#[cfg(test)]
mod tests {
    use super::sign_in_url;

    #[test]
    fn the_sign_in_link_points_a_browser_at_a_reachable_address() {
        let wildcard = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(sign_in_url(wildcard, Some("dt_abc\n")), "http://127.0.0.1:8080/portal/#key=dt_abc");
        let bound = "192.168.1.5:9000".parse().unwrap();
        assert_eq!(sign_in_url(bound, None), "http://192.168.1.5:9000/portal/");
        assert_eq!(sign_in_url(bound, Some(" ")), "http://192.168.1.5:9000/portal/");
    }
}
