//! The ntfy-compatible HTTP API.

pub mod actions;
pub mod params;
pub mod timeparse;
