//! Transparent capture: the nftables ruleset that makes the warden the only way out of a
//! network namespace, installed, verified and removed over netlink by the binary itself.
//! See `ruleset.rs` for the rules and `docs/capture.md` for why they are what they are.

pub mod netlink;
pub mod netns;
pub mod nft;
pub mod place;
pub mod probe;
pub mod ruleset;

use nix::sys::socket::SockProtocol;

pub use ruleset::{DropClass, Spec};

use self::netlink::{NetlinkError, Socket};
use self::nft::{Batch, Dump, NF_INET_LOCAL_OUT};
use self::ruleset::TABLE;

/// The default SO_MARK of the warden's upstream sockets ("ew").
pub const DEFAULT_MARK: u32 = 0x6577;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot talk to nf_tables: {0} (is CAP_NET_ADMIN granted?)")]
    Netlink(#[from] NetlinkError),
    #[error("the kernel ruleset differs from the one installed: {0}")]
    Mismatch(String),
}

/// A netfilter netlink socket in the current thread's network namespace.
pub fn open() -> Result<Socket, CaptureError> {
    Ok(Socket::open(SockProtocol::NetlinkNetFilter)?)
}

/// Installs (or atomically replaces) the capture ruleset in the current network namespace.
/// Idempotent: the table is created if missing, deleted and rebuilt in one kernel batch, so
/// there is no moment without capture when it is replaced.
pub fn install(spec: &Spec) -> Result<(), CaptureError> {
    let mut sock = open()?;
    let mut batch = Batch::new(sock.next_seq());
    batch.add_table(TABLE);
    batch.delete_table(TABLE);
    batch.add_table(TABLE);
    for chain in ruleset::chains() {
        batch.add_chain(TABLE, &chain);
    }
    for e in ruleset::entries(spec) {
        batch.add_rule(TABLE, &e.rule);
    }
    let (bytes, acks) = batch.finish();
    sock.transact(&bytes, &acks)?;
    Ok(())
}

/// Removes the capture ruleset (no error if it is not there).
pub fn remove() -> Result<(), CaptureError> {
    let mut sock = open()?;
    let mut batch = Batch::new(sock.next_seq());
    batch.add_table(TABLE);
    batch.delete_table(TABLE);
    let (bytes, acks) = batch.finish();
    sock.transact(&bytes, &acks)?;
    Ok(())
}

/// Whether the capture table exists in the current network namespace.
pub fn is_installed() -> Result<bool, CaptureError> {
    let mut sock = open()?;
    let seq = sock.next_seq();
    let tables = sock.dump(&nft::dump_request(Dump::Tables, TABLE, seq))?;
    Ok(tables
        .iter()
        .filter_map(|(_, p)| nft::parse_table(p))
        .any(|t| t == TABLE))
}

/// Reads the ruleset back from the kernel and checks it is exactly the one `spec` describes:
/// the two base chains on the output hook with their types and priorities, and every rule in
/// order with its comment and expressions.
pub fn verify(spec: &Spec) -> Result<(), CaptureError> {
    verify_with(&mut open()?, spec)
}

/// [`verify`] over an already open netfilter socket (of the namespace to check).
pub fn verify_with(sock: &mut Socket, spec: &Spec) -> Result<(), CaptureError> {
    let seq = sock.next_seq();
    let chains: Vec<_> = sock
        .dump(&nft::dump_request(Dump::Chains, TABLE, seq))?
        .iter()
        .filter_map(|(_, p)| nft::parse_chain(p))
        .filter(|c| c.table == TABLE)
        .collect();
    for want in ruleset::chains() {
        let got = chains
            .iter()
            .find(|c| c.name == want.name)
            .ok_or_else(|| CaptureError::Mismatch(format!("chain {} is missing", want.name)))?;
        if got.kind.as_deref() != Some(want.kind)
            || got.hook != Some(NF_INET_LOCAL_OUT)
            || got.priority != Some(want.priority)
        {
            return Err(CaptureError::Mismatch(format!(
                "chain {} is {got:?}",
                want.name
            )));
        }
    }
    if chains.len() != 2 {
        return Err(CaptureError::Mismatch(format!(
            "{} chains in table {TABLE}, want 2",
            chains.len()
        )));
    }
    let seq = sock.next_seq();
    let rules: Vec<_> = sock
        .dump(&nft::dump_request(Dump::Rules, TABLE, seq))?
        .iter()
        .filter_map(|(_, p)| nft::parse_rule(p))
        .filter(|r| r.table == TABLE)
        .collect();
    let want = ruleset::entries(spec);
    for chain in ruleset::chains() {
        let got: Vec<_> = rules.iter().filter(|r| r.chain == chain.name).collect();
        let expected: Vec<_> = want.iter().filter(|e| e.rule.chain == chain.name).collect();
        if got.len() != expected.len() {
            return Err(CaptureError::Mismatch(format!(
                "chain {} has {} rules, want {}",
                chain.name,
                got.len(),
                expected.len()
            )));
        }
        for (g, e) in got.iter().zip(&expected) {
            let names: Vec<&str> = e.rule.exprs.iter().map(|x| x.name()).collect();
            if g.comment.as_deref() != Some(e.rule.comment.as_str()) || g.exprs != names {
                return Err(CaptureError::Mismatch(format!(
                    "rule {:?} in {} is {:?} {:?}",
                    e.text, chain.name, g.comment, g.exprs
                )));
            }
        }
    }
    Ok(())
}

/// Packets dropped so far, by class, from the drop rules' counters.
pub fn drop_counters() -> Result<Vec<(DropClass, u64)>, CaptureError> {
    drop_counters_with(&mut open()?)
}

/// [`drop_counters`] over an already open netfilter socket.
pub fn drop_counters_with(sock: &mut Socket) -> Result<Vec<(DropClass, u64)>, CaptureError> {
    let seq = sock.next_seq();
    let rules = sock.dump(&nft::dump_request(Dump::Rules, TABLE, seq))?;
    let mut out: Vec<(DropClass, u64)> = [DropClass::Udp, DropClass::Icmp, DropClass::Other]
        .iter()
        .map(|c| (*c, 0))
        .collect();
    for rule in rules
        .iter()
        .filter_map(|(_, p)| nft::parse_rule(p))
        .filter(|r| r.table == TABLE)
    {
        for (class, total) in &mut out {
            if rule.comment.as_deref() == Some(class.comment().as_str()) {
                *total += rule.packets.unwrap_or(0);
            }
        }
    }
    Ok(out)
}
