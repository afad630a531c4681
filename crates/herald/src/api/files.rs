//! `GET|HEAD /file/<id>[.<ext>]`: attachment downloads (ntfy's `handleFile`), over
//! [`crate::attachment::Attachments::download`]. Single byte ranges are served
//! (`206`), which ntfy does not do; a client that sends no `Range` sees ntfy's answer.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::ApiError;

/// Serves `file` (the path segment after `/file/`).
pub async fn serve(state: &AppState, req: Request, file: &str) -> Result<Response, ApiError> {
    let Some(attachments) = &state.attachments else {
        return Err(ApiError::NOT_FOUND);
    };
    // ntfy's `^/file/([-_A-Za-z0-9]{1,64})(?:\.[A-Za-z0-9]{1,16})?$`; the extension
    // is decoration.
    let (id, ext) = file.split_once('.').unwrap_or((file, ""));
    let ext_ok = ext.is_empty() && !file.contains('.')
        || (1..=16).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ext_ok || !crate::model::topic::is_valid_name(id) {
        return Err(ApiError::NOT_FOUND);
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let head = req.method() == Method::HEAD;
    drop(req);
    let answer = match attachments.download(id, range.as_deref(), head).await {
        Err(crate::attachment::AttachmentError::RangeNotSatisfiable { size }) => {
            let mut resp = ApiError::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        other => other?,
    };
    let size = answer.size();
    let (status, length) = match answer.range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, last + 1 - first),
        None => (StatusCode::OK, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(answer.name()),
        );
    if let Ok(v) = HeaderValue::from_str(answer.content_type()) {
        builder = builder.header(header::CONTENT_TYPE, v);
    }
    if let Some((first, last)) = answer.range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{size}"),
        );
    }
    let body = match answer.into_body() {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    builder.body(body).map_err(|e| {
        tracing::error!(error = %e, "building a file response");
        ApiError::INTERNAL
    })
}

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>`
/// (RFC 6266): any name, however odd (quotes, control characters, non-ASCII),
/// yields a valid header that cannot inject another one.
fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let encoded: String = form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or(HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_names_make_safe_headers() {
        assert_eq!(
            content_disposition("photo.jpg"),
            "attachment; filename=\"photo.jpg\"; filename*=UTF-8''photo.jpg"
        );
        let v = content_disposition("a\"b\r\nX-Evil: 1\0.txt");
        let s = v.to_str().unwrap();
        assert!(!s.contains('\r') && !s.contains('\n'), "{s}");
        assert!(
            s.starts_with("attachment; filename=\"a_b__X-Evil: 1_.txt\""),
            "{s}"
        );
        let v = content_disposition("ünïcödé file.pdf");
        assert!(
            v.to_str()
                .unwrap()
                .contains("%C3%BCn%C3%AFc%C3%B6d%C3%A9%20file.pdf")
        );
    }
}
