//! egress-warden: an egress-control sidecar for agent sandboxes. Every outbound connection is
//! decided against domain and IP allowlists, counted per run, audited, and a violation ends
//! the run. See `docs/architecture.md` for how the modules fit together.
#![deny(unsafe_code)]

pub mod admin;
pub mod allowlist;
pub mod app;
pub mod audit;
pub mod audit_line;
pub mod bind;
pub mod budget;
pub mod capture;
pub mod check;
pub mod config;
pub mod connect;
pub mod dns;
pub mod enforce;
pub mod forward;
pub mod host;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod prefixed;
pub mod privileges;
pub mod readiness;
pub mod relay;
pub mod sandbox;
pub mod shards;
pub mod signals;
pub mod size;
pub mod sniff;
pub mod sockets;
pub mod splice;
pub mod state;
pub mod summary;
pub mod tunnel;

pub use app::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, main_with};
pub use config::Cli;
