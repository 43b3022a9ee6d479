//! The DNS listener (UDP and TCP) that captured DNS is redirected to: every query is decided by
//! name with the same policy (see `dns.rs`), refused ones get REFUSED (or NXDOMAIN), allowed
//! ones are forwarded to the upstream resolver from marked sockets and their answers cleaned.
//! Bounded: message size, in-flight queries, and a per-run query rate.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Accepted, Listener};
use crate::dns::{self, MAX_MESSAGE, QueryDecision};
use crate::enforce::{Judgement, Ruling};
use crate::policy::{Decision, Reason};
use crate::state::{Attempt, Shared};

/// UDP queries answered at once; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 512;

/// A token bucket: `rate` per second, bursts of twice that.
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            state: Mutex::new((2.0 * rate, Instant::now())),
        }
    }

    fn take(&self) -> bool {
        let mut s = self.state.lock().expect("rate lock");
        let now = Instant::now();
        let (tokens, last) = *s;
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(2.0 * self.rate);
        *s = if tokens >= 1.0 {
            (tokens - 1.0, now)
        } else {
            (tokens, now)
        };
        tokens >= 1.0
    }
}

/// How often rate-limited queries are summarised in one audit line.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Rate-limited queries not yet written: the first of each interval gets a decision line of
/// its own, the rest are counted here and written as one `dns_rate_limited` line.
#[derive(Default)]
struct Suppressed {
    /// Whether this interval's first rate-limited query was recorded already.
    recorded_first: bool,
    queries: u64,
    bytes: u64,
    since: Option<SystemTime>,
}

/// Shared by every DNS transport.
pub struct DnsState {
    pub limit: RateLimit,
    in_flight: Arc<Semaphore>,
    suppressed: Mutex<Suppressed>,
}

impl DnsState {
    pub fn new(rate: u32) -> Arc<Self> {
        Arc::new(Self {
            limit: RateLimit::new(rate),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            suppressed: Mutex::default(),
        })
    }

    /// Counts one rate-limited query; true when it is the interval's first, to be recorded
    /// in full.
    fn suppress(&self, bytes: usize) -> bool {
        let mut s = self.suppressed.lock().expect("suppressed lock");
        if !s.recorded_first {
            s.recorded_first = true;
            return true;
        }
        s.queries += 1;
        s.bytes += bytes as u64;
        s.since.get_or_insert_with(SystemTime::now);
        false
    }

    /// Writes the interval's summary line, if any query was counted, and starts a new interval.
    pub async fn flush(&self, shared: &Shared) {
        let taken = std::mem::take(&mut *self.suppressed.lock().expect("suppressed lock"));
        let Some(since) = taken.since else {
            return;
        };
        let line = serde_json::json!({
            "schema": crate::audit::SCHEMA,
            "event": "dns_rate_limited",
            "ts": crate::audit::timestamp(SystemTime::now()),
            "run_id": shared.config.run_id,
            "listener": Listener::Dns.as_str(),
            "since": crate::audit::timestamp(since),
            "queries": taken.queries,
            "bytes_up": taken.bytes,
            "verdict": "deny",
            "reason": Reason::DnsRateLimited.as_str(),
        });
        shared.audit.write(&line).await;
    }
}

/// Serves DNS over UDP on `socket` until `stop` is cancelled.
pub async fn serve_udp(
    shared: Arc<Shared>,
    dns: Arc<DnsState>,
    socket: UdpSocket,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = summary.tick() => {
                dns.flush(&shared).await;
                continue;
            }
            () = stop.cancelled() => {
                dns.flush(&shared).await;
                return;
            }
        };
        let Ok(permit) = dns.in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (shared, dns, socket) = (shared.clone(), dns.clone(), socket.clone());
        shared.clone().tasks.spawn(async move {
            let _permit = permit;
            if let Some(rsp) = answer(&shared, &dns, &query, client, true).await {
                let _ = socket.send_to(&rsp, client).await;
            }
        });
    }
}

/// Serves DNS over one TCP connection (length-prefixed messages).
pub async fn serve_tcp(shared: Arc<Shared>, dns: Arc<DnsState>, acc: Accepted) {
    let Accepted {
        mut stream,
        client,
        guard,
        kill,
    } = acc;
    let _guard = guard;
    let idle = shared.config.timeouts.handshake;
    loop {
        let read = async {
            let len = usize::from(stream.read_u16().await.ok()?);
            if len == 0 || len > MAX_MESSAGE {
                return None;
            }
            let mut msg = vec![0u8; len];
            stream.read_exact(&mut msg).await.ok()?;
            Some(msg)
        };
        let query = tokio::select! {
            r = tokio::time::timeout(idle, read) => match r {
                Ok(Some(q)) => q,
                _ => return,
            },
            () = crate::enforce::killed(kill.as_ref()) => return,
        };
        let Some(rsp) = answer(&shared, &dns, &query, client, false).await else {
            return;
        };
        let Ok(len) = u16::try_from(rsp.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&rsp).await.is_err() {
            return;
        }
    }
}

/// Refuses a TCP connection over the cap by closing it.
pub async fn refuse(stream: TcpStream) {
    drop(stream);
}

/// Answers one query, recording the decision.
async fn answer(
    shared: &Shared,
    dns_state: &DnsState,
    query: &[u8],
    client: SocketAddr,
    udp: bool,
) -> Option<Vec<u8>> {
    let mut a = Attempt::new(Listener::Dns, Some(client));
    a.bytes_up = query.len() as u64;
    let parsed = Message::from_vec(query);
    let name = parsed
        .as_ref()
        .ok()
        .and_then(|m| m.queries.first())
        .map(|q| dns::name_text(q.name()));
    // Capture's own probes are answered before the rate limit, so a flood cannot fail them.
    if let (Ok(msg), Some(name)) = (&parsed, &name)
        && shared.probes.arrived_dns(name)
    {
        return dns::refusal(msg, ResponseCode::NXDomain);
    }
    // The rate limit comes before anything is recorded: a flood (junk or not) costs one
    // decision line and one summary line per interval, never a line per datagram.
    let limited = !dns_state.limit.take();
    if limited {
        shared.metrics.dns_rate_limited();
        if !dns_state.suppress(query.len()) {
            return match &parsed {
                Ok(msg) => dns::refusal(msg, ResponseCode::Refused),
                Err(_) => refusal_for_id(query, ResponseCode::Refused),
            };
        }
    }
    let msg = match parsed {
        Ok(m) => m,
        Err(e) if limited => {
            a.set_detail(format!("rate limited; unparseable query: {e}"));
            deny(shared, &mut a, Reason::DnsRateLimited);
            shared.finish(a).await;
            return refusal_for_id(query, ResponseCode::Refused);
        }
        Err(e) => {
            a.set_detail(format!("unparseable query: {e}"));
            deny(shared, &mut a, Reason::MalformedRequest);
            shared.finish(a).await;
            return refusal_for_id(query, ResponseCode::FormErr);
        }
    };
    if let (Some(q), Some(name)) = (msg.queries.first(), &name) {
        a.set_host(name);
        a.set_detail(format!("type={}", q.query_type()));
    }
    let config = &shared.config.dns;
    if limited {
        a.append_detail(
            "rate limited; more in this interval are counted in a dns_rate_limited line",
        );
        deny(shared, &mut a, Reason::DnsRateLimited);
        shared.finish(a).await;
        return dns::refusal(&msg, ResponseCode::Refused);
    }
    let policy = shared.policy();
    match dns::decide(&policy, &msg, &config.types) {
        QueryDecision::Refuse { reason, detail, .. } => {
            if !detail.is_empty() {
                a.append_detail(detail);
            }
            if !deny(shared, &mut a, reason).proceeds() {
                shared.finish(a).await;
                return dns::refusal(&msg, config.deny_rcode);
            }
        }
        QueryDecision::Forward { rule, .. } => {
            // Ruled like every other allow: refused once the audit log is failing.
            let allow = Decision::allow(Reason::DomainAllowed, Some(rule));
            if !a.decide(shared, &allow).proceeds() {
                shared.finish(a).await;
                return dns::refusal(&msg, ResponseCode::Refused);
            }
        }
    }
    let upstream = match forward(shared, query).await {
        Ok(r) => r,
        Err(e) => {
            a.error = Some("dns_upstream_failed");
            a.set_detail(e);
            deny(shared, &mut a, Reason::ResolveFailed);
            shared.finish(a).await;
            return dns::refusal(&msg, ResponseCode::ServFail);
        }
    };
    let (mut rsp, cleaned) = match dns::clean_answer(&policy, &upstream) {
        Ok(pair) => pair,
        Err(e) => {
            a.error = Some("dns_upstream_failed");
            a.set_detail(e);
            deny(shared, &mut a, Reason::ResolveFailed);
            shared.finish(a).await;
            return dns::refusal(&msg, ResponseCode::ServFail);
        }
    };
    // The upstream's own answer code: an allowed name it could not resolve is recorded as
    // such, not as a plain `allow`.
    let rcode = ResponseCode::from(0, rsp.get(3).map_or(0, |b| b & 0x0f));
    if rcode != ResponseCode::NoError {
        a.append_detail(format!("upstream rcode={rcode}"));
        if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
            a.error = Some("dns_upstream_error");
        }
    }
    if !cleaned.stripped.is_empty() || cleaned.ech_removed > 0 {
        let stripped: Vec<String> = cleaned.stripped.iter().map(IpAddr::to_string).collect();
        a.append_detail(format!(
            "stripped=[{}] ech_removed={}",
            stripped.join(","),
            cleaned.ech_removed
        ));
    }
    if udp {
        rsp = truncate_for_udp(&msg, rsp);
    }
    a.bytes_down = rsp.len() as u64;
    shared.finish(a).await;
    Some(rsp)
}

/// An error answer for bytes that did not parse as a message but carry an id.
fn refusal_for_id(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    dns::error_for_id(id, rcode)
}

/// Rules on a DNS refusal: a violation only when `--dns-denial-is-violation` says so.
fn deny(shared: &Shared, a: &mut Attempt, reason: Reason) -> Judgement {
    if shared.config.dns.denial_is_violation {
        return a.deny(shared, reason);
    }
    a.reason = Some(reason);
    a.ruling = Some(Ruling::new(Judgement::Deny, false));
    Judgement::Deny
}

/// A UDP answer larger than the client can take becomes an empty, truncated one, so the client
/// retries over TCP.
fn truncate_for_udp(query: &Message, rsp: Vec<u8>) -> Vec<u8> {
    let limit = query
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()).max(512));
    if rsp.len() <= limit {
        return rsp;
    }
    match Message::from_vec(&rsp) {
        Ok(m) => {
            let mut t = m.truncate();
            t.metadata.truncation = true;
            t.answers.clear();
            t.authorities.clear();
            t.additionals.clear();
            t.to_vec().unwrap_or(rsp)
        }
        Err(_) => rsp,
    }
}

/// Forwards a query to the upstream resolver from a marked socket: UDP, then TCP when the
/// answer is truncated.
async fn forward(shared: &Shared, query: &[u8]) -> Result<Vec<u8>, String> {
    let upstream = shared
        .config
        .dns_upstream
        .ok_or("no DNS upstream configured")?;
    let config = &shared.config;
    dns::upstream::exchange(upstream, query, config.timeouts.dns, config.mark)
        .await
        .map_err(|e| e.to_string())
}

/// How long a burst of `n` queries takes to refill at `rate` (for docs and tests).
pub fn refill_time(n: u32, rate: u32) -> Duration {
    Duration::from_secs_f64(f64::from(n) / f64::from(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_a_burst_then_the_rate() {
        let limit = RateLimit::new(10);
        let allowed = (0..100).filter(|_| limit.take()).count();
        assert_eq!(allowed, 20, "burst of twice the rate");
        tokio::time::advance(refill_time(5, 10)).await;
        let allowed = (0..100).filter(|_| limit.take()).count();
        assert_eq!(allowed, 5);
    }
}
