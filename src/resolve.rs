//! The warden's own resolver: allowed names are resolved here — never by the sandbox — so the
//! addresses checked are the addresses dialled. Answers are cached for their TTL (by hickory).
//! No search domains, no hosts file: a name means the same thing in every environment.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::proto::rr::Name;

use crate::host::DomainName;
use crate::metrics::{LookupOutcome, Metrics};
use crate::sockets::MarkedRuntime;

/// Most addresses kept from one lookup (bounded work per connection attempt).
pub const MAX_ADDRESSES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no address records for the name")]
    NotFound,
    #[error("DNS lookup timed out")]
    Timeout,
    #[error("DNS lookup failed: {0}")]
    Failed(String),
    #[error("no DNS upstream configured (--dns-upstream, or a nameserver in /etc/resolv.conf)")]
    NoUpstream,
}

pub struct Resolver {
    inner: Option<hickory_resolver::Resolver<MarkedRuntime>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Resolver {
    /// `mark` is set on the resolver's sockets under transparent capture.
    pub fn new(
        upstream: Option<SocketAddr>,
        timeout: Duration,
        mark: Option<u32>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = upstream.map(|addr| {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for conn in &mut ns.connections {
                conn.port = addr.port();
            }
            let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
            let mut opts = ResolverOpts::default();
            // Check every address the name has, of both families.
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.ndots = 0;
            opts.timeout = timeout;
            opts.attempts = 2;
            opts.try_tcp_on_error = true;
            opts.cache_size = 4096;
            let mut builder =
                hickory_resolver::Resolver::builder_with_config(config, MarkedRuntime::new(mark));
            *builder.options_mut() = opts;
            builder
                .build()
                .expect("a resolver with one plain name server always builds")
        });
        Self {
            inner,
            timeout,
            metrics,
        }
    }

    /// Resolves `name` to at most [`MAX_ADDRESSES`] addresses (A and AAAA).
    pub async fn lookup(&self, name: &DomainName) -> Result<Vec<IpAddr>, ResolveError> {
        let result = self.lookup_inner(name).await;
        let outcome = match &result {
            Ok(_) => LookupOutcome::Ok,
            Err(ResolveError::NotFound) => LookupOutcome::NotFound,
            Err(ResolveError::Timeout) => LookupOutcome::Timeout,
            Err(_) => LookupOutcome::Error,
        };
        self.metrics.lookup(outcome);
        result
    }

    async fn lookup_inner(&self, name: &DomainName) -> Result<Vec<IpAddr>, ResolveError> {
        let resolver = self.inner.as_ref().ok_or(ResolveError::NoUpstream)?;
        // Fully qualified: no search-list expansion.
        let fqdn = Name::from_ascii(format!("{name}."))
            .map_err(|e| ResolveError::Failed(e.to_string()))?;
        // hickory bounds each query by `timeout`, with retries; this bounds the whole lookup.
        let lookup = tokio::time::timeout(self.timeout * 3, resolver.lookup_ip(fqdn))
            .await
            .map_err(|_| ResolveError::Timeout)?
            .map_err(|e| {
                if e.is_no_records_found() || e.is_nx_domain() {
                    ResolveError::NotFound
                } else if matches!(e, hickory_resolver::net::NetError::Timeout) {
                    ResolveError::Timeout
                } else {
                    ResolveError::Failed(e.to_string())
                }
            })?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
            if addrs.len() == MAX_ADDRESSES {
                break;
            }
        }
        if addrs.is_empty() {
            return Err(ResolveError::NotFound);
        }
        Ok(addrs)
    }
}
