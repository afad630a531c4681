//! Reading credentials from a request exactly as ntfy does (docs/COMPATIBILITY.md §4).
//!
//! The `Authorization` header, or the `auth`/`authorization` query parameter (which
//! wins) holding the whole header value in raw URL-safe base64 (what browsers'
//! WebSocket clients must use). Only values starting with `Basic ` or `Bearer `
//! (any case) are credentials; anything else (`WebPush ...`) is ignored. `Bearer`
//! (this exact case) carries a token; everything else is parsed as Basic, where an
//! empty user name means the password is a token (`curl -u :tk_...`).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Credentials a request carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password { user: String, password: String },
    Token(String),
}

// Never print secrets, not even in debug output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Credentials::Token(_) => write!(f, "Token(..)"),
        }
    }
}

impl Credentials {
    /// The user name, for per-user throttling (tokens name none).
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Credentials::Password { user, .. } => Some(user),
            Credentials::Token(_) => None,
        }
    }
}

/// What a request's auth header (or parameter) amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No credentials (or an unsupported scheme): anonymous.
    None,
    Credentials(Credentials),
    /// Credentials that cannot be parsed: `401`.
    Malformed,
}

/// Reads the credentials of a request from its headers and raw query string.
pub fn read(headers: &HeaderMap, query: Option<&str>) -> Presented {
    let from_query = query.and_then(auth_query_param);
    let value = match from_query {
        Some(encoded) => match URL_SAFE_NO_PAD.decode(encoded.as_bytes()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Err(_) => return Presented::Malformed,
        },
        None => match headers.get(header::AUTHORIZATION) {
            Some(v) => match v.to_str() {
                Ok(s) => s.trim().to_string(),
                Err(_) => return Presented::Malformed,
            },
            None => return Presented::None,
        },
    };
    parse_header_value(&value)
}

/// ntfy's `readQueryParam(r, "authorization", "auth")`: the first non-empty of the
/// two (lowercase names only).
fn auth_query_param(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    ["authorization", "auth"].iter().find_map(|name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Parses an `Authorization` value.
pub fn parse_header_value(value: &str) -> Presented {
    let lower = value.to_ascii_lowercase();
    if !(lower.starts_with("basic ") || lower.starts_with("bearer ")) {
        return Presented::None;
    }
    if let Some(token) = value.strip_prefix("Bearer") {
        return Presented::Credentials(Credentials::Token(token.trim().to_string()));
    }
    // Go's `Request.BasicAuth`: case-insensitive `Basic ` prefix, standard base64,
    // split at the first colon.
    let Some(encoded) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("basic "))
        .map(|_| &value[6..])
    else {
        return Presented::Malformed;
    };
    let Ok(decoded) = STANDARD.decode(encoded.as_bytes()) else {
        return Presented::Malformed;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Presented::Malformed;
    };
    match decoded.split_once(':') {
        Some(("", token)) => Presented::Credentials(Credentials::Token(token.to_string())),
        Some((user, password)) => Presented::Credentials(Credentials::Password {
            user: user.to_string(),
            password: password.to_string(),
        }),
        None => Presented::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    fn password(user: &str, pw: &str) -> Presented {
        Presented::Credentials(Credentials::Password {
            user: user.into(),
            password: pw.into(),
        })
    }

    #[test]
    fn basic_bearer_and_token_as_password() {
        let basic = format!("Basic {}", STANDARD.encode("phil:mypass"));
        assert_eq!(read(&headers(&basic), None), password("phil", "mypass"));
        let lower = format!("basic {}", STANDARD.encode("phil:a:b"));
        assert_eq!(read(&headers(&lower), None), password("phil", "a:b"));
        assert_eq!(
            read(&headers("Bearer tk_abc"), None),
            Presented::Credentials(Credentials::Token("tk_abc".into()))
        );
        let as_password = format!("Basic {}", STANDARD.encode(":tk_abc"));
        assert_eq!(
            read(&headers(&as_password), None),
            Presented::Credentials(Credentials::Token("tk_abc".into()))
        );
    }

    #[test]
    fn ntfys_edge_cases() {
        // Unsupported schemes are ignored: anonymous.
        assert_eq!(read(&headers("WebPush abc"), None), Presented::None);
        assert_eq!(read(&HeaderMap::new(), None), Presented::None);
        // Lowercase `bearer` falls into Basic parsing and fails.
        assert_eq!(read(&headers("bearer tk_abc"), None), Presented::Malformed);
        assert_eq!(read(&headers("Basic !!!"), None), Presented::Malformed);
        let no_colon = format!("Basic {}", STANDARD.encode("phil"));
        assert_eq!(read(&headers(&no_colon), None), Presented::Malformed);
    }

    #[test]
    fn query_parameter_is_raw_url_safe_base64_and_wins() {
        let header_value = format!("Basic {}", STANDARD.encode("phil:mypass"));
        let encoded = URL_SAFE_NO_PAD.encode(&header_value);
        let query = format!("since=all&auth={encoded}");
        assert_eq!(
            read(&headers("Bearer tk_other"), Some(&query)),
            password("phil", "mypass")
        );
        let bearer = URL_SAFE_NO_PAD.encode("Bearer tk_abc");
        assert_eq!(
            read(&HeaderMap::new(), Some(&format!("authorization={bearer}"))),
            Presented::Credentials(Credentials::Token("tk_abc".into()))
        );
        // Padded standard base64 is not what ntfy decodes.
        assert_eq!(
            read(&HeaderMap::new(), Some("auth=QmVhcmVyIHRrX2FiYw%3D%3D")),
            Presented::Malformed
        );
        assert_eq!(read(&HeaderMap::new(), Some("auth=")), Presented::None);
    }
}
