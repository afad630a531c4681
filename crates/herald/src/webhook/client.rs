//! The HTTP client that delivers webhooks, and the SSRF guard around it.
//!
//! A webhook URL is chosen by whoever registers it, and herald usually runs next to
//! services that trust its network position. So destinations are checked where it
//! counts, on the address actually connected to: the resolver ([`GuardedResolver`])
//! drops every loopback, private, link-local, metadata or otherwise non-public
//! address a name resolves to (a name that resolves to a public address at
//! registration and to `127.0.0.1` later is still refused), and URLs with a literal
//! IP are checked before the request (the connector does not resolve those). Unless
//! `webhook-allow-private` or `webhook-allow-cidrs` permit them. Redirects are not
//! followed (a 3xx is a failed attempt) and response bodies are read only up to
//! [`RESPONSE_CAP`]. TLS is rustls on ring with compiled-in Mozilla roots, so a
//! `FROM scratch` image needs no CA bundle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Response bytes read (and kept for the attempt log) at most.
pub const RESPONSE_CAP: usize = 4096;

/// Which destination addresses may be connected to.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Every address, public or not.
    pub allow_private: bool,
    /// Non-public networks allowed anyway.
    pub allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// Whether herald may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_private || is_public(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback, private,
/// shared (CGNAT), link-local (which holds the cloud metadata endpoint
/// 169.254.169.254), unspecified, multicast, broadcast, documentation, benchmarking
/// or reserved; for IPv6 also not unique-local (which holds AWS's `fd00:ec2::254`),
/// link-local, or a NAT64/6to4/Teredo/IPv4-mapped form of a non-public IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // 100.64.0.0/10 shared (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (18..20).contains(&o[1])) // 198.18.0.0/15 benchmarking
        || o[0] >= 240) // 240.0.0.0/4 reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local (deprecated),
    // 2001:db8::/32 documentation.
    if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        return false;
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return false;
    }
    // Forms that embed an IPv4 address: judge the embedded one.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if s[0] == 0x0064 && s[1] == 0xff9b {
        // 64:ff9b::/96 NAT64 (and the 64:ff9b:1::/48 local-use prefix)
        return s[2] == 0 && is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4
        return is_public_v4(embedded(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the client address is stored inverted.
        return is_public_v4(embedded(!s[6], !s[7]));
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        // Deprecated IPv4-compatible addresses.
        return false;
    }
    true
}

/// The system resolver, keeping only addresses the policy permits.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to non-public addresses ({}); see webhook-allow-private",
                    resolved
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// A destination the address policy does not permit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("destination refused: {0}")]
pub struct Refused(pub String);

/// What one request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A response arrived (any status).
    Status {
        status: u16,
        /// `Retry-After` in seconds (delta or HTTP date), if present and valid.
        retry_after: Option<Duration>,
        /// The first [`RESPONSE_CAP`] bytes of the body, lossily decoded.
        body: String,
    },
    /// No response: the request failed.
    Failed { kind: FailureKind, error: String },
}

/// Why no response arrived (the `outcome` label of the attempts metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Timeout,
    Connect,
    /// The address policy refused the destination.
    Refused,
    Other,
}

/// A request to send.
#[derive(Debug)]
pub struct Request<'a> {
    pub url: &'a str,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: String,
}

/// The delivery client (cheap to clone).
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// The client could not be built (TLS setup).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct ClientError(String);

impl DeliveryClient {
    /// A client with `timeout` per request and `policy` for destinations.
    pub fn new(timeout: Duration, policy: AddressPolicy) -> Result<DeliveryClient, ClientError> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .dns_resolver(GuardedResolver {
                policy: policy.clone(),
            })
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(8)
            .user_agent(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(DeliveryClient { client, policy })
    }

    /// Refuses a URL that is not `http(s)://host...` or whose host is a literal IP
    /// the policy does not permit. Names are checked when connecting.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, Refused> {
        check_url(&self.policy, url)
    }

    /// Sends one signed request; never fails, the outcome is in the result.
    pub async fn send(&self, request: Request<'_>) -> (Response, Duration) {
        let started = Instant::now();
        let url = match self.check_url(request.url) {
            Ok(url) => url,
            Err(e) => {
                let failed = Response::Failed {
                    kind: FailureKind::Refused,
                    error: e.to_string(),
                };
                return (failed, started.elapsed());
            }
        };
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", request.id)
            .header("webhook-timestamp", request.timestamp.to_string())
            .header("webhook-signature", request.signature)
            .body(request.body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return (failure(&e), started.elapsed()),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        // Read up to the cap, then drop the rest (and with it the connection).
        while body.len() < RESPONSE_CAP {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(RESPONSE_CAP - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        (
            Response::Status {
                status,
                retry_after,
                body,
            },
            started.elapsed(),
        )
    }
}

/// Makes ring the process's default rustls provider, which reqwest clients built
/// without a preconfigured TLS setup (the OpenTelemetry exporter, tests) need since
/// reqwest is built with `rustls-no-provider`. Harmless when one is installed.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// rustls on ring with the compiled-in Mozilla roots (no CA bundle needed).
pub fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn check_url(policy: &AddressPolicy, url: &str) -> Result<reqwest::Url, Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Refused(format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused("only http and https URLs are allowed".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused("URLs with credentials are not allowed".into()));
    }
    let literal = match parsed.host() {
        None => return Err(Refused("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = literal
        && !policy.permits(ip)
    {
        return Err(Refused(format!(
            "{ip} is not a public address; see webhook-allow-private"
        )));
    }
    Ok(parsed)
}

fn failure(e: &reqwest::Error) -> Response {
    // The refusal travels as the source of a connect error.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return Response::Failed {
                kind: FailureKind::Refused,
                error: refused.to_string(),
            };
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Other
    };
    // The full chain says what happened (e.g. "connection refused").
    let mut error = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        error.push_str(": ");
        error.push_str(&s.to_string());
        source = s.source();
    }
    Response::Failed { kind, error }
}

/// `Retry-After`: delta seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = at.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        let policy = AddressPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!policy.permits(ip(refused)), "{refused} must be refused");
        }
        for allowed in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert!(policy.permits(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_lists_and_allow_private() {
        let policy = AddressPolicy {
            allow_private: false,
            allow: super::super::parse_cidrs("10.0.0.0/8").unwrap(),
        };
        assert!(policy.permits(ip("10.9.9.9")));
        assert!(!policy.permits(ip("127.0.0.1")));
        let all = AddressPolicy {
            allow_private: true,
            allow: vec![],
        };
        assert!(all.permits(ip("127.0.0.1")));
    }

    #[test]
    fn urls_are_checked() {
        let policy = AddressPolicy::default();
        assert!(check_url(&policy, "https://example.com/hook").is_ok());
        assert!(check_url(&policy, "http://127.0.0.1:8080/").is_err());
        assert!(check_url(&policy, "http://[::1]/").is_err());
        assert!(check_url(&policy, "http://169.254.169.254/latest/meta-data").is_err());
        assert!(check_url(&policy, "ftp://example.com/").is_err());
        assert!(check_url(&policy, "https://user:pw@example.com/").is_err());
        assert!(check_url(&policy, "not a url").is_err());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// `localhost` resolves to loopback: refused when connecting, not only by URL.
    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let client = DeliveryClient::new(Duration::from_secs(5), AddressPolicy::default()).unwrap();
        let (response, _) = client
            .send(Request {
                url: "http://localhost:9/",
                id: "m",
                timestamp: 0,
                signature: "v1,x",
                body: "{}".into(),
            })
            .await;
        match response {
            Response::Failed {
                kind: FailureKind::Refused,
                error,
            } => assert!(error.contains("non-public"), "{error}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
