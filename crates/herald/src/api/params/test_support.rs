//! Helpers shared by the parameter tests: requests built from header and query pairs.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::{ParamSource, PublishLimits, PublishParams, parse_publish, parse_subscribe};
use crate::error::ApiError;
use crate::subscribe::SubscribeParams;

/// Wednesday 2024-05-15 11:30:00 UTC.
pub(super) const NOW: i64 = 1_715_772_600;

pub(super) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    map
}

pub(super) fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn get(headers: &[(&str, &str)], q: &[(&str, &str)], names: &[&str]) -> Option<String> {
    let headers = header_map(headers);
    let q = query(q);
    ParamSource {
        headers: &headers,
        query: &q,
    }
    .get(names)
}

pub(super) fn publish(
    headers: &[(&str, &str)],
    q: &[(&str, &str)],
) -> Result<PublishParams, ApiError> {
    let headers = header_map(headers);
    let q = query(q);
    let src = ParamSource {
        headers: &headers,
        query: &q,
    };
    parse_publish(&src, &PublishLimits::default(), NOW)
}

pub(super) fn publish_ok(headers: &[(&str, &str)], q: &[(&str, &str)]) -> PublishParams {
    match publish(headers, q) {
        Ok(p) => p,
        Err(e) => panic!("{headers:?} {q:?}: {e}"),
    }
}

pub(super) fn subscribe(
    headers: &[(&str, &str)],
    q: &[(&str, &str)],
) -> Result<SubscribeParams, ApiError> {
    let headers = header_map(headers);
    let q = query(q);
    let src = ParamSource {
        headers: &headers,
        query: &q,
    };
    parse_subscribe(&src, NOW)
}

/// Turns `x-e-mail` into `X-E-Mail`, the way clients usually spell headers.
pub(super) fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}
