//! egress-warden: an egress-control sidecar for agent sandboxes. Every outbound connection is
//! decided against domain and IP allowlists, counted per run, audited, and a violation ends the run.
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod host;
pub mod policy;
pub mod size;
