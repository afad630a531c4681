//! Flag values with ntfy's environment fallbacks.
//!
//! ntfy reads each client flag from `NTFY_<FLAG>` when it is not given (`NTFY_TITLE`,
//! `NTFY_USER`, ...); herald reads `HERALD_<FLAG>` first, then ntfy's name, so
//! scripts written for ntfy keep working. clap's own `env` takes one name, hence
//! this small lookup instead.

use clap::ArgMatches;

/// `--name`, else `HERALD_<NAME>`, else `NTFY_<NAME>` (non-empty).
pub(crate) fn string(m: &ArgMatches, name: &str) -> Option<String> {
    if let Some(v) = m.get_one::<String>(name) {
        return Some(v.clone());
    }
    env(name)
}

/// A boolean flag, or `1`/`true`/`yes` in its environment variables.
pub(crate) fn flag(m: &ArgMatches, name: &str) -> bool {
    m.get_flag(name)
        || env(name)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

fn env(name: &str) -> Option<String> {
    let suffix = name.to_ascii_uppercase().replace('-', "_");
    ["HERALD_", "NTFY_"].iter().find_map(|prefix| {
        // `HERALD_CONFIG` is the server's config file; the client's is `NTFY_CONFIG`.
        if *prefix == "HERALD_" && name == "config" {
            return None;
        }
        std::env::var(format!("{prefix}{suffix}"))
            .ok()
            .filter(|v| !v.is_empty())
    })
}

/// The help line's note on where else a flag is read from.
pub(crate) fn env_note(name: &str) -> String {
    let suffix = name.to_ascii_uppercase().replace('-', "_");
    if name == "config" {
        return format!(" [env: NTFY_{suffix}]");
    }
    format!(" [env: HERALD_{suffix}, NTFY_{suffix}]")
}
