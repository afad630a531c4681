//! Which topic (and token) a recipient address names: ntfy's
//! `<prefix><topic>@<domain>` and `<prefix><topic>+<token>@<domain>`.

use crate::model::topic;

/// Why a recipient is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressError {
    /// Not `local@domain`.
    Malformed,
    /// Another domain (this server relays nothing).
    OtherDomain,
    /// The local part does not start with `smtp-server-addr-prefix` or names no
    /// valid topic.
    NoTopic,
}

/// A recipient of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipient {
    pub topic: String,
    pub token: Option<String>,
}

/// Parses the `RCPT TO` path (`<a@b>` or `a@b`, with optional parameters after it).
pub(crate) fn parse_recipient(
    path: &str,
    domain: &str,
    prefix: &str,
) -> Result<Recipient, AddressError> {
    let path = path.trim();
    let address = match path.strip_prefix('<') {
        Some(rest) => rest
            .split_once('>')
            .map(|(a, _)| a)
            .ok_or(AddressError::Malformed)?,
        None => path.split_whitespace().next().unwrap_or(""),
    };
    // A source route (`@a,@b:user@domain`, RFC 5321 §4.1.2) is ignored.
    let address = address.rsplit_once(':').map_or(address, |(_, a)| a);
    let (local, host) = address.rsplit_once('@').ok_or(AddressError::Malformed)?;
    if local.is_empty() || host.is_empty() {
        return Err(AddressError::Malformed);
    }
    if !host.trim_end_matches('.').eq_ignore_ascii_case(domain) {
        return Err(AddressError::OtherDomain);
    }
    let rest = strip_prefix_ignore_case(local, prefix).ok_or(AddressError::NoTopic)?;
    let (name, token) = match rest.split_once('+') {
        Some((name, token)) if !token.is_empty() => (name, Some(token.to_string())),
        Some(_) => return Err(AddressError::NoTopic),
        None => (rest, None),
    };
    if !topic::is_valid_name(name) {
        return Err(AddressError::NoTopic);
    }
    Ok(Recipient {
        topic: name.to_string(),
        token,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_as_ntfy() {
        let p = |s| parse_recipient(s, "ntfy.example.com", "ntfy-");
        assert_eq!(
            p("<ntfy-alerts@ntfy.example.com>"),
            Ok(Recipient {
                topic: "alerts".into(),
                token: None
            })
        );
        assert_eq!(
            p("<NTFY-alerts+tk_abc@NTFY.example.com.> SIZE=10"),
            Ok(Recipient {
                topic: "alerts".into(),
                token: Some("tk_abc".into())
            })
        );
        assert_eq!(p("ntfy-a_b-c@ntfy.example.com").unwrap().topic, "a_b-c");
        assert_eq!(p("<@relay:ntfy-x@ntfy.example.com>").unwrap().topic, "x");
        assert_eq!(
            p("<ntfy-alerts@example.com>"),
            Err(AddressError::OtherDomain)
        );
        assert_eq!(p("<alerts@ntfy.example.com>"), Err(AddressError::NoTopic));
        assert_eq!(p("<ntfy-@ntfy.example.com>"), Err(AddressError::NoTopic));
        assert_eq!(p("<ntfy-a.b@ntfy.example.com>"), Err(AddressError::NoTopic));
        assert_eq!(p("<ntfy-a+@ntfy.example.com>"), Err(AddressError::NoTopic));
        assert_eq!(p("<nobody>"), Err(AddressError::Malformed));
        assert_eq!(p("<ntfy-a@ntfy.example.com"), Err(AddressError::Malformed));
        assert_eq!(p(""), Err(AddressError::Malformed));
        // No prefix configured: the whole local part is the topic.
        assert_eq!(
            parse_recipient("<alerts@h>", "h", "").unwrap().topic,
            "alerts"
        );
    }
}
