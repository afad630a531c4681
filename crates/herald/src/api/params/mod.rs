//! Reading publish and subscribe parameters from a request, by ntfy's rules.
//!
//! ntfy lets every parameter arrive under several names, as a header or in the query
//! string (`X-Title`, `Title`, `t`, `?title=`), with MIME-encoded header values and a few
//! quirks that real clients depend on. This module reproduces those rules so that the
//! HTTP handlers deal only in validated [`PublishParams`] / [`crate::subscribe::SubscribeParams`]; it knows
//! nothing about bodies, topics in paths, storage or limits beyond the delay window.
//!
//! One file per concept: the names and where they are read from (`aliases`), RFC 2047
//! header decoding (`rfc2047`), the publish parameters (`publish`), publishing as JSON
//! (`json_publish`) and the subscribe parameters (`subscribe`).

mod aliases;
mod json_publish;
mod publish;
mod rfc2047;
mod subscribe;
#[cfg(test)]
mod test_support;

#[cfg(test)]
pub(crate) use aliases::is_idempotency_name;
pub use aliases::{ParamSource, names};
pub use json_publish::{JsonPublish, parse_json_publish};
pub use publish::{PublishLimits, PublishParams, parse_priority, parse_publish};
pub use rfc2047::decode_rfc2047;
pub use subscribe::{parse_since, parse_subscribe};
