//! nf_tables over netlink: the expressions the capture ruleset uses, the messages that create
//! and delete a table, its chains and rules in one atomic batch, and parsing of rule dumps for
//! verification. Numbers are from `linux/netfilter/nf_tables.h`; the encoding matches what
//! `nft` itself sends for the same rules (checked by a test against `nft --debug=netlink`).

use super::netlink::{self, Msg, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
pub const NFPROTO_INET: u8 = 1;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// The `NFTNL_UDATA_RULE_COMMENT` TLV type in rule userdata, as `nft` writes comments.
const UDATA_COMMENT: u8 = 0;

pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
/// The hook every capture chain attaches to: locally generated packets.
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;

/// Keys of the `meta` expression.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    Oif = 5,
    NfProto = 15,
    L4Proto = 16,
}

/// Keys of the `ct` expression.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Status = 2,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Gte = 5,
    Lte = 3,
}

/// One nf_tables expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey),
    Ct(CtKey),
    /// Loads `len` bytes at `offset` of the transport header.
    TransportPayload {
        offset: u32,
        len: u32,
    },
    Cmp {
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `reg1 = (reg1 & mask) ^ 0`.
    Mask(Vec<u8>),
    /// Loads a value into register 1 (a redirect port).
    Value(Vec<u8>),
    /// Redirects to the port in register 1.
    Redirect,
    Counter,
    Verdict(u32),
}

impl Expr {
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Meta(_) => "meta",
            Expr::Ct(_) => "ct",
            Expr::TransportPayload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Mask(_) => "bitwise",
            Expr::Value(_) | Expr::Verdict(_) => "immediate",
            Expr::Redirect => "redir",
            Expr::Counter => "counter",
        }
    }

    fn encode(&self, m: &mut Msg) {
        match self {
            Expr::Meta(key) => {
                m.attr_be32(1, REG_1); // NFTA_META_DREG
                m.attr_be32(2, *key as u32); // NFTA_META_KEY
            }
            Expr::Ct(key) => {
                m.attr_be32(1, REG_1); // NFTA_CT_DREG
                m.attr_be32(2, *key as u32); // NFTA_CT_KEY
            }
            Expr::TransportPayload { offset, len } => {
                m.attr_be32(1, REG_1); // NFTA_PAYLOAD_DREG
                m.attr_be32(2, 2); // NFTA_PAYLOAD_BASE: transport header
                m.attr_be32(3, *offset);
                m.attr_be32(4, *len);
            }
            Expr::Cmp { op, data } => {
                m.attr_be32(1, REG_1); // NFTA_CMP_SREG
                m.attr_be32(2, *op as u32); // NFTA_CMP_OP
                m.nest(3, |m| {
                    m.attr(NFTA_DATA_VALUE, data);
                });
            }
            Expr::Mask(mask) => {
                m.attr_be32(1, REG_1); // NFTA_BITWISE_SREG
                m.attr_be32(2, REG_1); // NFTA_BITWISE_DREG
                m.attr_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                m.nest(4, |m| {
                    m.attr(NFTA_DATA_VALUE, mask);
                });
                let zero = vec![0u8; mask.len()];
                m.nest(5, |m| {
                    m.attr(NFTA_DATA_VALUE, &zero);
                });
            }
            Expr::Value(data) => {
                m.attr_be32(1, REG_1); // NFTA_IMMEDIATE_DREG
                m.nest(2, |m| {
                    m.attr(NFTA_DATA_VALUE, data);
                });
            }
            Expr::Verdict(code) => {
                m.attr_be32(1, REG_VERDICT);
                m.nest(2, |m| {
                    m.nest(NFTA_DATA_VERDICT, |m| {
                        m.attr_be32(NFTA_VERDICT_CODE, *code);
                    });
                });
            }
            Expr::Redirect => {
                m.attr_be32(1, REG_1); // NFTA_REDIR_REG_PROTO_MIN
                m.attr_be32(3, 2); // NFTA_REDIR_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
            }
            Expr::Counter => {
                m.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                m.attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
            }
        }
    }
}

/// A base chain hooked on local output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub priority: i32,
}

/// One rule: expressions plus a comment (stored as rule userdata, shown by `nft list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub exprs: Vec<Expr>,
    pub comment: String,
}

fn nfgen(m: &mut Msg, family: u8, res_id: u16) {
    m.bytes(&[family, 0, (res_id >> 8) as u8, res_id as u8]);
}

fn nft_msg(kind: u16, flags: u16) -> Msg {
    Msg::new((NFNL_SUBSYS_NFTABLES << 8) | kind, flags)
}

/// The rule comment as `nft` stores it in userdata.
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut v = vec![UDATA_COMMENT, (comment.len() + 1) as u8];
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// A batch of nf_tables messages, applied atomically by the kernel.
pub struct Batch {
    bytes: Vec<u8>,
    acks: Vec<u32>,
    seq: u32,
}

impl Batch {
    pub fn new(first_seq: u32) -> Self {
        let mut m = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST);
        nfgen(&mut m, 0, NFNL_SUBSYS_NFTABLES);
        Self {
            bytes: m.finish(first_seq),
            acks: Vec::new(),
            seq: first_seq,
        }
    }

    fn push(&mut self, m: Msg) {
        self.seq += 1;
        self.acks.push(self.seq);
        self.bytes.extend_from_slice(&m.finish(self.seq));
    }

    /// Creates the table if it does not exist (no error if it does).
    pub fn add_table(&mut self, table: &str) {
        let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        nfgen(&mut m, NFPROTO_INET, 0);
        m.attr_str(NFTA_TABLE_NAME, table);
        self.push(m);
    }

    /// Deletes the table with everything in it.
    pub fn delete_table(&mut self, table: &str) {
        let mut m = nft_msg(NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK);
        nfgen(&mut m, NFPROTO_INET, 0);
        m.attr_str(NFTA_TABLE_NAME, table);
        self.push(m);
    }

    pub fn add_chain(&mut self, table: &str, chain: &BaseChain) {
        let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        nfgen(&mut m, NFPROTO_INET, 0);
        m.attr_str(NFTA_CHAIN_TABLE, table);
        m.attr_str(NFTA_CHAIN_NAME, chain.name);
        m.nest(NFTA_CHAIN_HOOK, |m| {
            m.attr_be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
            m.attr_be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
        });
        m.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        m.attr_str(NFTA_CHAIN_TYPE, chain.kind);
        self.push(m);
    }

    pub fn add_rule(&mut self, table: &str, rule: &Rule) {
        let mut m = nft_msg(
            NFT_MSG_NEWRULE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK | NLM_F_APPEND,
        );
        nfgen(&mut m, NFPROTO_INET, 0);
        m.attr_str(NFTA_RULE_TABLE, table);
        m.attr_str(NFTA_RULE_CHAIN, rule.chain);
        m.nest(NFTA_RULE_EXPRESSIONS, |m| {
            for e in &rule.exprs {
                m.nest(NFTA_LIST_ELEM, |m| {
                    m.attr_str(NFTA_EXPR_NAME, e.name());
                    m.nest(NFTA_EXPR_DATA, |m| e.encode(m));
                });
            }
        });
        m.attr(NFTA_RULE_USERDATA, &comment_userdata(&rule.comment));
        self.push(m);
    }

    /// The wire bytes and the sequence numbers whose acks to wait for.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        let mut m = Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST);
        nfgen(&mut m, 0, NFNL_SUBSYS_NFTABLES);
        self.bytes.extend_from_slice(&m.finish(self.seq + 1));
        (self.bytes, self.acks)
    }

    pub fn last_seq(&self) -> u32 {
        self.seq + 1
    }
}

/// A dump request for the rules (or chains, or tables) of `table`.
pub fn dump_request(what: Dump, table: &str, seq: u32) -> Vec<u8> {
    let kind = match what {
        Dump::Rules => NFT_MSG_GETRULE,
        Dump::Chains => NFT_MSG_GETCHAIN,
        Dump::Tables => NFT_MSG_GETTABLE,
    };
    let mut m = nft_msg(kind, NLM_F_REQUEST | NLM_F_DUMP);
    nfgen(&mut m, NFPROTO_INET, 0);
    if what == Dump::Rules {
        m.attr_str(NFTA_RULE_TABLE, table);
    }
    m.finish(seq)
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dump {
    Rules,
    Chains,
    Tables,
}

/// A rule as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedRule {
    pub table: String,
    pub chain: String,
    pub comment: Option<String>,
    /// Expression names in order.
    pub exprs: Vec<String>,
    /// Packets counted by the rule's `counter`, if it has one.
    pub packets: Option<u64>,
}

/// A chain as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedChain {
    pub table: String,
    pub name: String,
    pub kind: Option<String>,
    pub hook: Option<u32>,
    pub priority: Option<i32>,
}

fn body(payload: &[u8]) -> &[u8] {
    payload.get(4..).unwrap_or_default()
}

/// Parses one `NFT_MSG_NEWRULE` dump message.
pub fn parse_rule(payload: &[u8]) -> Option<DumpedRule> {
    let b = body(payload);
    let mut rule = DumpedRule {
        table: netlink::attr_string(b, NFTA_RULE_TABLE)?,
        chain: netlink::attr_string(b, NFTA_RULE_CHAIN)?,
        comment: None,
        exprs: Vec::new(),
        packets: None,
    };
    if let Some(ud) = netlink::attr(b, NFTA_RULE_USERDATA) {
        let mut ud = ud;
        while ud.len() >= 2 {
            let (t, len) = (ud[0], usize::from(ud[1]));
            let value = ud.get(2..2 + len)?;
            if t == UDATA_COMMENT {
                let v = value.strip_suffix(&[0]).unwrap_or(value);
                rule.comment = Some(String::from_utf8_lossy(v).into_owned());
            }
            ud = &ud[2 + len..];
        }
    }
    for (_, elem) in netlink::attrs(netlink::attr(b, NFTA_RULE_EXPRESSIONS)?) {
        let name = netlink::attr_string(elem, NFTA_EXPR_NAME)?;
        if name == "counter"
            && let Some(data) = netlink::attr(elem, NFTA_EXPR_DATA)
            && let Some(p) = netlink::attr(data, NFTA_COUNTER_PACKETS)
        {
            rule.packets = Some(u64::from_be_bytes(p.try_into().ok()?));
        }
        rule.exprs.push(name);
    }
    Some(rule)
}

/// Parses one `NFT_MSG_NEWCHAIN` dump message.
pub fn parse_chain(payload: &[u8]) -> Option<DumpedChain> {
    let b = body(payload);
    let hook = netlink::attr(b, NFTA_CHAIN_HOOK);
    let be32 = |v: &[u8]| v.try_into().ok().map(u32::from_be_bytes);
    Some(DumpedChain {
        table: netlink::attr_string(b, NFTA_CHAIN_TABLE)?,
        name: netlink::attr_string(b, NFTA_CHAIN_NAME)?,
        kind: netlink::attr_string(b, NFTA_CHAIN_TYPE),
        hook: hook
            .and_then(|h| netlink::attr(h, NFTA_HOOK_HOOKNUM))
            .and_then(be32),
        priority: hook
            .and_then(|h| netlink::attr(h, NFTA_HOOK_PRIORITY))
            .and_then(be32)
            .map(|p| p as i32),
    })
}

/// Parses one `NFT_MSG_NEWTABLE` dump message: the table name.
pub fn parse_table(payload: &[u8]) -> Option<String> {
    netlink::attr_string(body(payload), NFTA_TABLE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_stored_as_nft_does() {
        // `nft --debug=netlink` shows: userdata = { \x00\x10egress-warden 1\x00 }
        assert_eq!(
            comment_userdata("egress-warden 1"),
            b"\x00\x10egress-warden 1\x00"
        );
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_and_acks_every_message() {
        let mut b = Batch::new(100);
        b.add_table("t");
        b.delete_table("t");
        let (bytes, acks) = b.finish();
        let msgs = netlink::messages(&bytes).unwrap();
        let kinds: Vec<u16> = msgs.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [16, 0x0a00, 0x0a02, 17]);
        assert_eq!(acks, [101, 102]);
        assert_eq!(msgs[0].payload, [0, 0, 0, 10]);
    }

    #[test]
    fn a_rule_round_trips_through_the_dump_parser() {
        let rule = Rule {
            chain: "c",
            exprs: vec![
                Expr::Meta(MetaKey::L4Proto),
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: vec![17],
                },
                Expr::Counter,
                Expr::Verdict(NF_DROP),
            ],
            comment: "drop udp".into(),
        };
        let mut b = Batch::new(1);
        b.add_rule("t", &rule);
        let (bytes, _) = b.finish();
        let msgs = netlink::messages(&bytes).unwrap();
        let dumped = parse_rule(msgs[1].payload).unwrap();
        assert_eq!(dumped.chain, "c");
        assert_eq!(dumped.comment.as_deref(), Some("drop udp"));
        assert_eq!(dumped.exprs, ["meta", "cmp", "counter", "immediate"]);
        assert_eq!(dumped.packets, Some(0));
    }
}
