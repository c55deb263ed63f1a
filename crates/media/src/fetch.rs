//! Downloading an image URL on a user's behalf without letting them reach our internal network
//! (SSRF): every address we would connect to, including each redirect hop and every address a
//! host name resolves to, is checked against a deny-list of non-public ranges unless the operator
//! allowlisted it.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deeptune_core::status::StatusCode;
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Networks that may be fetched from even though they are not public (e.g. an internal
    /// object store). Everything public is always allowed.
    pub allowlist: Vec<IpNet>,
    pub max_bytes: usize,
    /// Limit for the whole download, redirects included.
    pub timeout: Duration,
    pub max_redirects: usize,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allowlist: Vec::new(),
            max_bytes: 32 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
            user_agent: concat!("deeptune/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("refusing to fetch {url}: only http and https URLs are supported, not {scheme}")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("refusing to fetch {url}: {}; add it to the url_allowlist to permit it", describe_refusal(.host, .addr, .reason))]
    ForbiddenAddress { url: String, host: String, addr: IpAddr, reason: String },
    #[error("gave up on {url} after {limit} redirects")]
    TooManyRedirects { url: String, limit: usize },
    #[error("the download is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{url} answered with HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("downloading {url} took longer than {}s", .after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    #[error("could not download {url}: {reason}")]
    Network { url: String, reason: String },
}

fn describe_refusal(host: &str, addr: &IpAddr, reason: &str) -> String {
    if host == addr.to_string() {
        format!("{addr} is {reason}")
    } else {
        format!("{host} resolves to {addr}, which is {reason}")
    }
}

impl FetchError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            FetchError::InvalidUrl { .. }
            | FetchError::UnsupportedScheme { .. }
            | FetchError::ForbiddenAddress { .. } => StatusCode::INPUT_INVALID_URL,
            FetchError::TooLarge { .. } => StatusCode::INPUT_OVER_LIMIT,
            FetchError::TooManyRedirects { .. }
            | FetchError::HttpStatus { .. }
            | FetchError::Timeout { .. }
            | FetchError::Network { .. } => StatusCode::INPUT_CONNECTION_FAILED,
        }
    }

    /// A stable machine-readable name for the failure; never changes once released.
    pub fn error_code(&self) -> &'static str {
        match self {
            FetchError::InvalidUrl { .. } => "url_invalid",
            FetchError::UnsupportedScheme { .. } => "url_unsupported_scheme",
            FetchError::ForbiddenAddress { .. } => "url_forbidden_address",
            FetchError::TooManyRedirects { .. } => "url_too_many_redirects",
            FetchError::TooLarge { .. } => "url_too_large",
            FetchError::HttpStatus { .. } => "url_http_status",
            FetchError::Timeout { .. } => "url_timeout",
            FetchError::Network { .. } => "url_network_error",
        }
    }
}

/// Downloads URLs through the SSRF guard. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct UrlFetcher {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    cfg: Arc<FetchConfig>,
}

impl std::fmt::Debug for UrlFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlFetcher").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl UrlFetcher {
    pub fn new(cfg: FetchConfig) -> Self {
        Self::with_lookup(cfg, Arc::new(SystemLookup))
    }

    fn with_lookup(cfg: FetchConfig, lookup: Arc<dyn Lookup>) -> Self {
        let policy = Arc::new(AddressPolicy { allowlist: cfg.allowlist.clone() });
        let client = reqwest::Client::builder()
            // Every hop must pass the address check, so we follow redirects ourselves.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and connect on our behalf, bypassing the guard entirely.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone(), lookup }))
            .connect_timeout(cfg.timeout)
            .user_agent(cfg.user_agent.clone())
            .build()
            // Only fails when the TLS backend cannot initialise, i.e. a broken build.
            .expect("the HTTP client could not be built");
        UrlFetcher { client, policy, cfg: Arc::new(cfg) }
    }

    /// Downloads `url` (http or https), following up to `max_redirects` redirects, and returns
    /// the body if it is at most `max_bytes` long.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let after = self.cfg.timeout;
        tokio::time::timeout(after, self.fetch_following_redirects(url))
            .await
            .unwrap_or_else(|_| Err(FetchError::Timeout { url: url.to_string(), after }))
    }

    async fn fetch_following_redirects(&self, original: &str) -> Result<Bytes, FetchError> {
        let mut url = Url::parse(original.trim())
            .map_err(|e| FetchError::InvalidUrl { url: original.to_string(), reason: e.to_string() })?;
        let mut redirects = 0;
        loop {
            self.check_url(&url)?;
            let response = self.client.get(url.clone()).send().await.map_err(|e| self.request_error(&url, e))?;
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
                    return Err(FetchError::HttpStatus { url: url.to_string(), status: status.as_u16() });
                };
                if redirects == self.cfg.max_redirects {
                    return Err(FetchError::TooManyRedirects {
                        url: original.to_string(),
                        limit: self.cfg.max_redirects,
                    });
                }
                redirects += 1;
                let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
                url = url.join(&location).map_err(|e| FetchError::InvalidUrl {
                    url: location.clone(),
                    reason: format!("bad redirect from {url}: {e}"),
                })?;
                tracing::debug!(%url, redirects, "following redirect");
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::HttpStatus { url: url.to_string(), status: status.as_u16() });
            }
            return self.read_body(&url, response).await;
        }
    }

    /// The checks that can be made before connecting. Host names are checked by the resolver,
    /// because reqwest never asks the resolver about IP literals.
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::UnsupportedScheme { url: url.to_string(), scheme: url.scheme().to_string() });
        }
        let addr = match url.host() {
            None => return Err(FetchError::InvalidUrl { url: url.to_string(), reason: "the URL has no host".into() }),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        self.policy.check(addr).map_err(|reason| FetchError::ForbiddenAddress {
            url: url.to_string(),
            // The URL may spell the address differently ([::ffff:7f00:1]); name it the plain way.
            host: addr.to_string(),
            addr,
            reason,
        })
    }

    fn request_error(&self, url: &Url, err: reqwest::Error) -> FetchError {
        if let Some(refused) = find_in_chain::<ResolutionRefused>(&err) {
            return FetchError::ForbiddenAddress {
                url: url.to_string(),
                host: refused.host.clone(),
                addr: refused.addr,
                reason: refused.reason.clone(),
            };
        }
        if err.is_timeout() {
            return FetchError::Timeout { url: url.to_string(), after: self.cfg.timeout };
        }
        FetchError::Network { url: url.to_string(), reason: error_chain(&err) }
    }

    async fn read_body(&self, url: &Url, response: reqwest::Response) -> Result<Bytes, FetchError> {
        let limit = self.cfg.max_bytes;
        // Refuse early when the server admits the body is too big; the streaming check below
        // covers servers that lie or omit the length.
        if response.content_length().is_some_and(|len| len > limit as u64) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.request_error(url, e))?;
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// reqwest buries the interesting cause a few levels down (and `io::Error` hides its payload from
/// `source()`), so walk the chain and look inside `io::Error`s too.
fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(found) =
            e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// "error sending request" alone tells a user nothing; the innermost causes do.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Decides whether an address may be connected to.
#[derive(Debug)]
struct AddressPolicy {
    allowlist: Vec<IpNet>,
}

impl AddressPolicy {
    /// `Err(reason)` when the address is not public and not allowlisted.
    fn check(&self, addr: IpAddr) -> Result<(), String> {
        let Some(reason) = non_public_reason(addr) else {
            return Ok(());
        };
        // An IPv4-mapped IPv6 address reaches the same host as its IPv4 form, so either spelling
        // in the allowlist permits it.
        let canonical = addr.to_canonical();
        if self.allowlist.iter().any(|net| net.contains(&addr) || net.contains(&canonical)) {
            return Ok(());
        }
        Err(reason)
    }
}

/// Why `addr` is not a public unicast address, or `None` if it is one.
pub fn non_public_reason(addr: IpAddr) -> Option<String> {
    match addr {
        IpAddr::V4(v4) => v4_reason(v4).map(str::to_string),
        IpAddr::V6(v6) => {
            // Addresses that carry an IPv4 address are judged by that address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4).map(|r| format!("an IPv4-mapped form of {v4}, {r}"));
            }
            if NAT64.contains(&v6) {
                let v4 = Ipv4Addr::from_bits(v6.to_bits() as u32);
                return v4_reason(v4).map(|r| format!("a NAT64 form of {v4}, {r}"));
            }
            if SIX_TO_FOUR.contains(&v6) {
                let v4 = Ipv4Addr::from_bits((v6.to_bits() >> 80) as u32);
                return v4_reason(v4).map(|r| format!("a 6to4 form of {v4}, {r}"));
            }
            V6_RANGES.iter().find(|(net, _)| net.contains(&v6)).map(|(_, reason)| reason.to_string())
        }
    }
}

const fn v4net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6net(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

const BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

/// Non-public IPv4 ranges (IANA special-purpose registry), most specific first.
const V4_RANGES: &[(Ipv4Net, &str)] = &[
    (v4net(0, 0, 0, 0, 8), "an unspecified (\"this network\") address"),
    (v4net(10, 0, 0, 0, 8), "a private address"),
    (v4net(100, 64, 0, 0, 10), "a carrier-grade NAT (shared) address"),
    (v4net(127, 0, 0, 0, 8), "a loopback address"),
    (v4net(169, 254, 169, 254, 32), "the cloud metadata service address"),
    (v4net(169, 254, 0, 0, 16), "a link-local address"),
    (v4net(172, 16, 0, 0, 12), "a private address"),
    (v4net(192, 0, 0, 0, 24), "a reserved (IETF protocol assignment) address"),
    (v4net(192, 0, 2, 0, 24), "a documentation address"),
    (v4net(192, 88, 99, 0, 24), "a reserved (6to4 relay) address"),
    (v4net(192, 168, 0, 0, 16), "a private address"),
    (v4net(198, 18, 0, 0, 15), "a reserved (benchmarking) address"),
    (v4net(198, 51, 100, 0, 24), "a documentation address"),
    (v4net(203, 0, 113, 0, 24), "a documentation address"),
    (v4net(224, 0, 0, 0, 4), "a multicast address"),
    (v4net(240, 0, 0, 0, 4), "a reserved address"),
];

fn v4_reason(v4: Ipv4Addr) -> Option<&'static str> {
    if v4 == BROADCAST {
        return Some("the broadcast address");
    }
    V4_RANGES.iter().find(|(net, _)| net.contains(&v4)).map(|(_, reason)| *reason)
}

const NAT64: Ipv6Net = v6net([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6net([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// Non-public IPv6 ranges, after the IPv4-embedding forms above are handled.
const V6_RANGES: &[(Ipv6Net, &str)] = &[
    (v6net([0, 0, 0, 0, 0, 0, 0, 0], 128), "the unspecified address"),
    (v6net([0, 0, 0, 0, 0, 0, 0, 1], 128), "a loopback address"),
    (v6net([0, 0, 0, 0, 0, 0, 0, 0], 96), "a deprecated IPv4-compatible address"),
    (v6net([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "a local-use NAT64 address"),
    (v6net([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "a discard-only address"),
    (v6net([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "a reserved (IETF protocol assignment) address"),
    (v6net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "a documentation address"),
    (v6net([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "a documentation address"),
    (v6net([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "a private (unique local) address"),
    (v6net([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "a link-local address"),
    (v6net([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "a deprecated site-local address"),
    (v6net([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "a multicast address"),
];

/// Host name lookup, replaceable in tests so they never query real DNS.
trait Lookup: Send + Sync {
    fn lookup(&self, host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// The resolver reqwest connects through: it hands back only addresses that pass the policy, so
/// the address checked is the address connected to and a second, rebinding answer can't slip in.
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    lookup: Arc<dyn Lookup>,
}

/// Raised inside reqwest's connector when every address of a host is refused; recovered by
/// `find_in_chain` to build `FetchError::ForbiddenAddress`.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to refused addresses such as {addr} ({reason})")]
struct ResolutionRefused {
    host: String,
    addr: IpAddr,
    reason: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        let lookup = self.lookup.lookup(host.clone());
        Box::pin(async move {
            let mut refused = None;
            let allowed: Vec<SocketAddr> = lookup
                .await?
                .into_iter()
                .filter(|&ip| match policy.check(ip) {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::debug!(%host, %ip, %reason, "dropping refused address");
                        refused.get_or_insert((ip, reason));
                        false
                    }
                })
                // Port 0 is replaced by the URL's port.
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            match refused {
                Some((addr, reason)) if allowed.is_empty() => {
                    Err(Box::new(ResolutionRefused { host, addr, reason }) as Box<dyn StdError + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode as HttpStatusCode;
    use axum::middleware::{self, Next};
    use axum::response::Redirect;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PNG_BYTES: &[u8] = b"\x89PNG\r\n\x1a\nnot really a png but bytes are bytes";

    /// A local test server on `ip`:0 that counts the requests it receives.
    struct TestServer {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
    }

    impl TestServer {
        async fn start(ip: &str, redirect_to: Option<String>) -> TestServer {
            let hits = Arc::new(AtomicUsize::new(0));
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let redirect_to = redirect_to.unwrap_or_default();
            let counter = hits.clone();
            let app = Router::new()
                .route("/a.png", get(|| async { PNG_BYTES }))
                .route("/big", get(|| async { vec![7u8; 4096] }))
                .route(
                    "/big-unsized",
                    get(|| async {
                        // A streamed body has no Content-Length, so only the streaming check can catch it.
                        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 1024])));
                        Body::from_stream(futures::stream::iter(chunks))
                    }),
                )
                .route("/missing", get(|| async { HttpStatusCode::NOT_FOUND }))
                .route("/redirect", get(move || std::future::ready(Redirect::temporary(&redirect_to))))
                .route("/loop", get(|| async { Redirect::temporary("/loop") }))
                .route("/hop", get(|| async { Redirect::to("/a.png") }))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        "late"
                    }),
                )
                .route("/no-location", get(|| async { HttpStatusCode::FOUND }))
                .layer(middleware::from_fn(move |req: Request, next: Next| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(req)
                }));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            TestServer { addr, hits }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn allowing(nets: &[&str]) -> UrlFetcher {
        UrlFetcher::new(FetchConfig {
            allowlist: nets.iter().map(|n| n.parse().unwrap()).collect(),
            ..FetchConfig::default()
        })
    }

    #[tokio::test]
    async fn allowlisted_loopback_server_is_fetched() {
        let server = TestServer::start("127.0.0.1", None).await;
        let body = allowing(&["127.0.0.1/32"]).fetch(&server.url("/a.png")).await.unwrap();
        assert_eq!(&body[..], PNG_BYTES);
    }

    #[tokio::test]
    async fn loopback_is_refused_without_connecting_unless_allowlisted() {
        let server = TestServer::start("127.0.0.1", None).await;
        let url = server.url("/a.png");
        let err = allowing(&[]).fetch(&url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to fetch {url}: 127.0.0.1 is a loopback address; add it to the url_allowlist to permit it"
            )
        );
        assert_eq!(err.status_code(), StatusCode::INPUT_INVALID_URL);
        assert_eq!(err.error_code(), "url_forbidden_address");
        assert_eq!(server.hits(), 0, "a refused address must never be contacted");
    }

    #[tokio::test]
    async fn redirect_to_a_non_allowlisted_address_is_refused() {
        let forbidden = TestServer::start("127.0.0.2", None).await;
        let public_looking = TestServer::start("127.0.0.1", Some(forbidden.url("/a.png"))).await;
        let err = allowing(&["127.0.0.1/32"]).fetch(&public_looking.url("/redirect")).await.unwrap_err();
        match &err {
            FetchError::ForbiddenAddress { addr, .. } => assert_eq!(*addr, "127.0.0.2".parse::<IpAddr>().unwrap()),
            other => panic!("expected ForbiddenAddress, got {other:?}"),
        }
        assert_eq!(public_looking.hits(), 1);
        assert_eq!(forbidden.hits(), 0, "the redirect target must not be contacted");
    }

    #[tokio::test]
    async fn redirects_are_followed_up_to_the_limit() {
        let server = TestServer::start("127.0.0.1", None).await;
        let fetcher = allowing(&["127.0.0.1/32"]);
        assert_eq!(&fetcher.fetch(&server.url("/hop")).await.unwrap()[..], PNG_BYTES);

        let hits_before = server.hits();
        let err = fetcher.fetch(&server.url("/loop")).await.unwrap_err();
        assert!(matches!(err, FetchError::TooManyRedirects { limit: 5, .. }), "{err:?}");
        assert_eq!(server.hits() - hits_before, 6, "the original request plus 5 redirects");
        assert_eq!(err.status_code(), StatusCode::INPUT_CONNECTION_FAILED);
    }

    #[tokio::test]
    async fn odd_ipv4_spellings_of_loopback_are_refused() {
        let server = TestServer::start("127.0.0.1", None).await;
        let port = server.addr.port();
        let fetcher = allowing(&[]);
        for host in ["2130706433", "0x7f.0.0.1", "017700000001", "127.1", "0177.0.0.1", "127.0.0.1."] {
            let err = fetcher.fetch(&format!("http://{host}:{port}/a.png")).await.unwrap_err();
            assert!(
                matches!(err, FetchError::ForbiddenAddress { addr, .. } if addr == IpAddr::V4(Ipv4Addr::LOCALHOST)),
                "{host}: {err:?}"
            );
        }
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn ipv6_literals_for_internal_addresses_are_refused() {
        let fetcher = allowing(&[]);
        for (literal, why) in [
            ("[::1]", "::1 is a loopback address"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address"),
            ("[::ffff:169.254.169.254]", "metadata"),
            ("[fe80::1]", "link-local"),
            ("[fd12:3456::1]", "unique local"),
            ("[::]", "unspecified"),
            ("[64:ff9b::a00:1]", "NAT64 form of 10.0.0.1"),
        ] {
            let err = fetcher.fetch(&format!("http://{literal}:9/x.png")).await.unwrap_err();
            assert!(matches!(err, FetchError::ForbiddenAddress { .. }), "{literal}: {err:?}");
            assert!(err.to_string().contains(why), "{literal}: {err}");
        }
    }

    #[tokio::test]
    async fn ipv4_mapped_loopback_is_permitted_by_its_ipv4_allowlist_entry() {
        // Only checks the policy: connecting to ::ffff:127.0.0.1 needs a dual-stack listener.
        let fetcher = allowing(&["127.0.0.1/32"]);
        assert!(fetcher.policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(fetcher.policy.check("::ffff:127.0.0.2".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn cloud_metadata_address_is_refused() {
        let err = allowing(&[]).fetch("http://169.254.169.254/latest/meta-data/").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to fetch http://169.254.169.254/latest/meta-data/: 169.254.169.254 is the cloud metadata \
             service address; add it to the url_allowlist to permit it"
        );
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_allowlisted() {
        let server = TestServer::start("127.0.0.1", None).await;
        let url = format!("http://localhost:{}/a.png", server.addr.port());
        let err = allowing(&[]).fetch(&url).await.unwrap_err();
        match &err {
            FetchError::ForbiddenAddress { host, addr, .. } => {
                assert_eq!(host, "localhost");
                assert!(addr.is_loopback(), "{addr}");
            }
            other => panic!("expected ForbiddenAddress, got {other:?}"),
        }
        assert!(err.to_string().contains("localhost resolves to"), "{err}");
        assert_eq!(server.hits(), 0);

        let body = allowing(&["127.0.0.1/32"]).fetch(&url).await.unwrap();
        assert_eq!(&body[..], PNG_BYTES);
    }

    /// Answers every name with fixed addresses, standing in for a hostile DNS server.
    struct FixedLookup(Vec<IpAddr>);

    impl Lookup for FixedLookup {
        fn lookup(&self, _host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            let addrs = self.0.clone();
            Box::pin(async move { Ok(addrs) })
        }
    }

    fn fetcher_with_dns(allowlist: &[&str], answers: &[&str]) -> UrlFetcher {
        let cfg =
            FetchConfig { allowlist: allowlist.iter().map(|n| n.parse().unwrap()).collect(), ..FetchConfig::default() };
        UrlFetcher::with_lookup(cfg, Arc::new(FixedLookup(answers.iter().map(|a| a.parse().unwrap()).collect())))
    }

    #[tokio::test]
    async fn a_name_resolving_to_internal_addresses_is_refused() {
        let server = TestServer::start("127.0.0.1", None).await;
        let url = format!("http://images.example.test:{}/a.png", server.addr.port());
        let err = fetcher_with_dns(&[], &["10.1.2.3", "127.0.0.1"]).fetch(&url).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::ForbiddenAddress { host, addr, .. } if host == "images.example.test" && addr.to_string() == "10.1.2.3"),
            "{err:?}"
        );
        assert_eq!(err.status_code(), StatusCode::INPUT_INVALID_URL);
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn only_permitted_addresses_of_a_name_are_connected_to() {
        // The forbidden answer comes first; the fetch must still go to the permitted one.
        let server = TestServer::start("127.0.0.1", None).await;
        let url = format!("http://images.example.test:{}/a.png", server.addr.port());
        let body = fetcher_with_dns(&["127.0.0.1/32"], &["127.0.0.2", "127.0.0.1"]).fetch(&url).await.unwrap();
        assert_eq!(&body[..], PNG_BYTES);
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn only_http_and_https_are_fetched() {
        let err = allowing(&[]).fetch("ftp://example.com/cat.png").await.unwrap_err();
        assert_eq!(
            err,
            FetchError::UnsupportedScheme { url: "ftp://example.com/cat.png".into(), scheme: "ftp".into() }
        );
        assert_eq!(err.status_code(), StatusCode::INPUT_INVALID_URL);
        for bad in ["file:///etc/passwd", "gopher://127.0.0.1/"] {
            assert!(matches!(allowing(&[]).fetch(bad).await, Err(FetchError::UnsupportedScheme { .. })), "{bad}");
        }
        let err = allowing(&[]).fetch("not a url").await.unwrap_err();
        assert!(matches!(err, FetchError::InvalidUrl { .. }), "{err:?}");
        assert_eq!(err.error_code(), "url_invalid");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let server = TestServer::start("127.0.0.1", None).await;
        let fetcher = UrlFetcher::new(FetchConfig {
            allowlist: vec!["127.0.0.1/32".parse().unwrap()],
            max_bytes: 1000,
            ..FetchConfig::default()
        });
        for path in ["/big", "/big-unsized"] {
            let err = fetcher.fetch(&server.url(path)).await.unwrap_err();
            assert_eq!(err, FetchError::TooLarge { limit: 1000 }, "{path}");
            assert_eq!(err.status_code(), StatusCode::INPUT_OVER_LIMIT);
        }
        assert_eq!(&fetcher.fetch(&server.url("/a.png")).await.unwrap()[..], PNG_BYTES);
    }

    #[tokio::test]
    async fn error_statuses_are_reported() {
        let server = TestServer::start("127.0.0.1", None).await;
        let fetcher = allowing(&["127.0.0.1/32"]);
        let err = fetcher.fetch(&server.url("/missing")).await.unwrap_err();
        assert_eq!(err, FetchError::HttpStatus { url: server.url("/missing"), status: 404 });
        assert_eq!(err.status_code(), StatusCode::INPUT_CONNECTION_FAILED);
        let err = fetcher.fetch(&server.url("/no-location")).await.unwrap_err();
        assert!(matches!(err, FetchError::HttpStatus { status: 302, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn slow_servers_time_out() {
        let server = TestServer::start("127.0.0.1", None).await;
        let fetcher = UrlFetcher::new(FetchConfig {
            allowlist: vec!["127.0.0.1/32".parse().unwrap()],
            timeout: Duration::from_millis(200),
            ..FetchConfig::default()
        });
        let err = fetcher.fetch(&server.url("/slow")).await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
        assert_eq!(err.status_code(), StatusCode::INPUT_CONNECTION_FAILED);
    }

    #[tokio::test]
    async fn connection_failures_are_network_errors() {
        // Bind then drop a listener to get a loopback port with nothing behind it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = allowing(&["127.0.0.1/32"]).fetch(&format!("http://127.0.0.1:{port}/")).await.unwrap_err();
        assert!(matches!(err, FetchError::Network { .. }), "{err:?}");
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }

    #[test]
    fn address_classification() {
        for internal in [
            "0.0.0.0",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2001:db8::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(non_public_reason(ip).is_some(), "{internal} should be refused");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(non_public_reason(ip), None, "{public} should be allowed");
        }
    }
}
