//! Where capture lives — the warden's own network namespace (`serve --capture`) or the sandbox
//! namespace it made (`run --isolate`) — and the blocking work done there: installing or
//! verifying the ruleset, proving it with probes, and reading it back while the run lasts.

use super::netns::{Namespace, NetnsError};
use super::probe::{self, Probes, Report};
use super::{DropClass, Spec};
use crate::config::{CaptureConfig, CaptureMode};

pub enum Place {
    /// The warden's own namespace.
    Here,
    /// A sandbox namespace made by the warden.
    Inside(Namespace),
}

impl Place {
    /// Runs `f` on a thread of its own in this place's namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        match self {
            Place::Here => Ok(std::thread::scope(|s| {
                s.spawn(f).join().expect("capture thread does not panic")
            })),
            Place::Inside(ns) => ns.run(f),
        }
    }

    /// The path a sandbox command opens to enter this namespace (`None`: it is already there).
    pub fn netns_path(&self) -> Option<String> {
        match self {
            Place::Here => None,
            Place::Inside(ns) => Some(ns.path()),
        }
    }
}

/// Installs (or, for `verify`, checks) the ruleset `config` describes.
pub fn establish(place: &Place, config: &CaptureConfig) -> Result<(), String> {
    let spec = config.spec;
    let result = place.run(move || match config.mode {
        CaptureMode::Install => super::install(&spec).and_then(|()| super::verify(&spec)),
        CaptureMode::Verify => super::verify(&spec),
        CaptureMode::Off => Ok(()),
    });
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Proves capture with probes from ordinary sockets in the captured namespace.
pub fn prove(place: &Place, probes: &Probes) -> Result<Report, String> {
    place
        .run(|| {
            let dropped_udp = || {
                super::drop_counters()
                    .ok()?
                    .into_iter()
                    .find(|(c, _)| *c == DropClass::Udp)
                    .map(|(_, n)| n)
            };
            probe::run(probes, &dropped_udp)
        })
        .map_err(|e| e.to_string())
}

/// Checks the ruleset is still exactly the one installed and reads the drop counters.
/// Needs no namespace switch: an isolated namespace is read through the socket kept open in
/// it, the warden's own through a fresh one.
pub fn inspect(place: &Place, spec: &Spec) -> Result<Vec<(DropClass, u64)>, String> {
    let read = |sock: &mut super::netlink::Socket| {
        super::verify_with(sock, spec).and_then(|()| super::drop_counters_with(sock))
    };
    let result = match place {
        Place::Here => super::open().and_then(|mut sock| read(&mut sock)),
        Place::Inside(ns) => ns.with_netfilter(read),
    };
    result.map_err(|e| e.to_string())
}
