//! The HTTP side of the client: one reqwest client (TLS as the binary configures
//! it: rustls with compiled-in roots), credentials, topic URLs and error answers.

use std::time::Duration;

use crate::config::ClientConfig;

/// Connecting gives up after this (a stream itself may stay open for days).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error bodies are read up to this (ntfy's client reads 4 KiB).
const ERROR_BODY_CAP: usize = 4096;

/// A reqwest client with `tls` (built by the binary: rustls on ring, compiled-in
/// roots, so a `FROM scratch` image needs no CA bundle).
pub(crate) fn client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))
}

/// Credentials sent with a request.
#[derive(Debug, Clone, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl Auth {
    /// From `--user user[:password]` / `--token` (not both), else the config's
    /// defaults, as ntfy chooses. A `--user` without a password asks for it.
    pub(crate) fn choose(
        user: Option<String>,
        token: Option<String>,
        config: &ClientConfig,
    ) -> anyhow::Result<Auth> {
        match (user, token) {
            (Some(_), Some(_)) => anyhow::bail!("cannot set both --user and --token"),
            (None, Some(token)) => Ok(Auth::Bearer(token)),
            (Some(user), None) => match user.split_once(':') {
                Some((u, p)) => Ok(Auth::Basic {
                    user: u.into(),
                    password: p.into(),
                }),
                None => {
                    let password = rpassword_prompt()?;
                    Ok(Auth::Basic { user, password })
                }
            },
            (None, None) => Ok(Auth::from_defaults(
                config.default_user.as_deref(),
                config.default_password.as_deref(),
                config.default_token.as_deref(),
            )),
        }
    }

    /// A token wins over a user, and a user needs a password (ntfy's rule).
    pub(crate) fn from_defaults(
        user: Option<&str>,
        password: Option<&str>,
        token: Option<&str>,
    ) -> Auth {
        match (token, user, password) {
            (Some(t), _, _) if !t.is_empty() => Auth::Bearer(t.into()),
            (_, Some(u), Some(p)) if !u.is_empty() => Auth::Basic {
                user: u.into(),
                password: p.into(),
            },
            _ => Auth::None,
        }
    }

    pub(crate) fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// Reads a password from the terminal without echo (as ntfy's `Enter Password:`).
fn rpassword_prompt() -> anyhow::Result<String> {
    rpassword::prompt_password("Enter Password: ")
        .map_err(|e| anyhow::anyhow!("cannot read the password: {e}"))
}

/// A topic as given on the command line, as a URL (ntfy's rules): a full URL stays,
/// `host/topic` gets `https://` (`http://` for `localhost` and loopback addresses,
/// which rarely speak TLS), a bare name is appended to `default-host`.
pub(crate) fn topic_url(topic: &str, default_host: &str) -> String {
    if topic.starts_with("http://") || topic.starts_with("https://") {
        topic.to_string()
    } else if topic.contains('/') {
        let host = topic.split('/').next().unwrap_or("");
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if matches!(name, "localhost" | "[::1]") || name.starts_with("127.") {
            format!("http://{topic}")
        } else {
            format!("https://{topic}")
        }
    } else {
        format!("{}/{topic}", default_host.trim_end_matches('/'))
    }
}

/// A non-2xx answer, as the server put it (ntfy's JSON error, or its text).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub(crate) struct ServerError {
    pub status: u16,
    pub body: String,
}

impl ServerError {
    pub(crate) async fn read(resp: reqwest::Response) -> ServerError {
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let mut resp = resp;
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY_CAP {
                body.truncate(ERROR_BODY_CAP);
                break;
            }
        }
        ServerError {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        }
    }

    fn describe(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Shape {
            code: u32,
            error: String,
        }
        match serde_json::from_str::<Shape>(&self.body) {
            Ok(e) => format!("{} (HTTP {}, code {})", e.error, self.status, e.code),
            Err(_) if self.body.is_empty() => format!("HTTP {}", self.status),
            Err(_) => format!("HTTP {}: {}", self.status, self.body),
        }
    }

    /// Whether the same request may succeed later: the server was unavailable or
    /// asked the client to slow down.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
    }
}

/// Whether a failed request (no answer) may succeed if sent again.
pub(crate) fn is_transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_urls_follow_ntfy() {
        assert_eq!(topic_url("t", "https://ntfy.sh"), "https://ntfy.sh/t");
        assert_eq!(topic_url("t", "http://h:1/"), "http://h:1/t");
        assert_eq!(
            topic_url("ntfy.example.com/t", "x"),
            "https://ntfy.example.com/t"
        );
        assert_eq!(
            topic_url("localhost:8080/t", "x"),
            "http://localhost:8080/t"
        );
        assert_eq!(
            topic_url("127.0.0.1:80/a,b", "x"),
            "http://127.0.0.1:80/a,b"
        );
        assert_eq!(topic_url("http://h/t", "x"), "http://h/t");
    }

    #[test]
    fn errors_show_the_servers_text() {
        let e = ServerError {
            status: 400,
            body: r#"{"code":40009,"http":400,"error":"invalid request: topic invalid"}"#.into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid request: topic invalid (HTTP 400, code 40009)"
        );
        assert!(!e.is_transient());
        assert!(
            ServerError {
                status: 503,
                body: String::new()
            }
            .is_transient()
        );
    }

    #[test]
    fn credentials_follow_ntfys_precedence() {
        let config = ClientConfig {
            default_user: Some("u".into()),
            default_password: Some("p".into()),
            ..ClientConfig::default()
        };
        assert!(Auth::choose(Some("a:b".into()), Some("t".into()), &config).is_err());
        assert!(matches!(
            Auth::choose(None, None, &config).unwrap(),
            Auth::Basic { .. }
        ));
        assert!(matches!(
            Auth::choose(None, Some("tk".into()), &config).unwrap(),
            Auth::Bearer(_)
        ));
        assert!(matches!(
            Auth::from_defaults(Some("u"), None, None),
            Auth::None
        ));
    }
}
