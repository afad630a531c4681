//! Redis plumbing shared by every cluster-mode module: one way to connect
//! (`cluster::connector`), one default time limit per operation, key names
//! under `redis-key-prefix`, and Lua scripts built from the `.lua` files next to the
//! module that runs them.
//!
//! Each caller maps [`RedisFailure`] to its own error type: "unavailable" (try again
//! later, 503) and "failed" (a fault) stay distinct.

use std::fmt;
use std::time::Duration;

use redis::{RedisError, RedisWrite, Script, ToRedisArgs, ToSingleRedisArg};

/// Longest wait for one Redis operation before the caller is told "unavailable".
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(3);

pub use super::connector::check_url;

/// Why a Redis operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFailure {
    /// Redis is unreachable or did not answer in time; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Redis answered with an error (a script error, a wrong type).
    #[error("{0}")]
    Failed(String),
}

impl From<RedisError> for RedisFailure {
    /// Lost connections and timeouts are "unavailable", anything else a failure.
    fn from(e: RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_connection_refusal()
        {
            RedisFailure::Unavailable(e.to_string())
        } else {
            RedisFailure::Failed(e.to_string())
        }
    }
}

/// Runs one Redis operation with [`OP_TIMEOUT`].
pub(crate) async fn timed<T>(
    op: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result.map_err(RedisFailure::from),
        Err(_) => Err(RedisFailure::Unavailable(
            "Redis did not answer in time".into(),
        )),
    }
}

/// The `redis-key-prefix` every key of one cluster starts with (tests and separate
/// clusters sharing a Redis use their own). Passed to a script as an argument, it is
/// the prefix itself, for scripts that derive key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPrefix(String);

impl KeyPrefix {
    pub(crate) fn new(prefix: &str) -> KeyPrefix {
        KeyPrefix(prefix.to_string())
    }

    /// The key `name` under this prefix.
    pub(crate) fn key(&self, name: impl fmt::Display) -> String {
        format!("{}{name}", self.0)
    }

    /// A narrower prefix for one part's keys (`P wh:`).
    pub(crate) fn nested(&self, name: &str) -> KeyPrefix {
        KeyPrefix(self.key(name))
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ToRedisArgs for KeyPrefix {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        self.0.write_redis_args(out)
    }
}

impl ToSingleRedisArg for KeyPrefix {}

/// A Lua script made of `sources` in order (shared helper functions first, then the
/// body), each usually an `include_str!` of a `.lua` file.
pub(crate) fn script(sources: &[&str]) -> Script {
    Script::new(&sources.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_nested_prefixes_share_the_prefix() {
        let p = KeyPrefix::new("x:");
        assert_eq!(p.key("log"), "x:log");
        assert_eq!(p.key(format_args!("t:{}", "alerts")), "x:t:alerts");
        let wh = p.nested("wh:");
        assert_eq!(wh.key("hooks"), "x:wh:hooks");
        assert_eq!(wh.to_string(), "x:wh:");
        assert_eq!(wh.to_redis_args(), vec![b"x:wh:".to_vec()]);
    }

    #[test]
    fn scripts_are_their_sources_joined() {
        let joined = script(&["local a = 1\n", "return a\n"]);
        assert_eq!(
            joined.get_hash(),
            Script::new("local a = 1\nreturn a\n").get_hash()
        );
    }

    #[test]
    fn connection_level_errors_are_unavailable() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            RedisFailure::from(io),
            RedisFailure::Unavailable(_)
        ));
        let reply = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "wrong type"));
        assert!(matches!(RedisFailure::from(reply), RedisFailure::Failed(_)));
    }
}
