//! `client.yml`, with ntfy's keys: `default-host`, `default-user`,
//! `default-password`, `default-token`, `default-command`, and the `subscribe:`
//! list (`topic`, `user`, `password`, `token`, `command`, `if`).
//!
//! Looked for where ntfy looks: `--config`, else `/etc/ntfy/client.yml` for root and
//! `$XDG_CONFIG_HOME/ntfy/client.yml` (`~/.config/ntfy/client.yml`) for everyone
//! else; a missing default file is no error. Unknown keys are ignored, as ntfy's
//! YAML decoder does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// ntfy's default server.
pub(crate) const DEFAULT_HOST: &str = "https://ntfy.sh";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct ClientConfig {
    pub default_host: String,
    pub default_user: Option<String>,
    pub default_password: Option<String>,
    pub default_token: Option<String>,
    pub default_command: Option<String>,
    pub subscribe: Vec<Subscription>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            default_host: DEFAULT_HOST.into(),
            default_user: None,
            default_password: None,
            default_token: None,
            default_command: None,
            subscribe: Vec::new(),
        }
    }
}

/// One entry of `subscribe:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Subscription {
    pub topic: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub command: Option<String>,
    /// Server-side filters (`message`, `title`, `priority`, `tags`, `id`).
    #[serde(rename = "if")]
    pub filters: BTreeMap<String, String>,
}

/// Loads `explicit`, else the default file if there is one, else the defaults.
pub(crate) fn load(explicit: Option<&str>) -> anyhow::Result<ClientConfig> {
    let path = match explicit {
        Some(p) => PathBuf::from(p),
        None => match default_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(ClientConfig::default()),
        },
    };
    read(&path)
}

fn read(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read client config {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(ClientConfig::default());
    }
    // Through `serde_json::Value`, as the server's config file: the YAML parser is
    // then instantiated once in the binary (its code is most of its size).
    let invalid = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("invalid client config {}: {e}", path.display())
    };
    let doc: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| invalid(&e))?;
    let mut config: ClientConfig = serde_json::from_value(doc).map_err(|e| invalid(&e))?;
    if config.default_host.is_empty() {
        config.default_host = DEFAULT_HOST.into();
    }
    Ok(config)
}

fn default_path() -> Option<PathBuf> {
    // Root's file is system-wide, as ntfy's (`/etc/ntfy/client.yml`).
    if std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var("HOME").is_ok_and(|h| h == "/root")
    {
        return Some(PathBuf::from("/etc/ntfy/client.yml"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ntfy").join("client.yml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ntfys_keys() {
        let dir = std::env::temp_dir().join(format!("herald-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.yml");
        std::fs::write(
            &path,
            "default-host: http://localhost:8080\ndefault-token: tk_x\ndefault-command: echo \"$m\"\nunknown: 1\nsubscribe:\n  - topic: a\n  - topic: b\n    command: cat\n    user: phil\n    password: pw\n    if:\n      priority: high,urgent\n",
        )
        .unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.default_host, "http://localhost:8080");
        assert_eq!(c.default_token.as_deref(), Some("tk_x"));
        assert_eq!(c.subscribe.len(), 2);
        assert_eq!(c.subscribe[1].command.as_deref(), Some("cat"));
        assert_eq!(c.subscribe[1].filters["priority"], "high,urgent");
        std::fs::write(&path, "").unwrap();
        assert_eq!(read(&path).unwrap().default_host, DEFAULT_HOST);
        std::fs::write(&path, "subscribe: 3\n").unwrap();
        assert!(read(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
