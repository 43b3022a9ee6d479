//! An in-test DNS server on loopback (UDP and TCP on one port): answers A/AAAA from a table
//! the test controls and records every question, so tests can assert what was looked up. A
//! name can be an alias (CNAME): its answer holds the CNAME record and, like a recursive
//! resolver's, the target's records of the asked type when the table has any.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

type Table = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;
type Aliases = Arc<Mutex<HashMap<String, String>>>;
type Failing = Arc<Mutex<HashMap<String, u8>>>;

pub struct FakeDns {
    pub addr: SocketAddr,
    table: Table,
    aliases: Aliases,
    failing: Failing,
    questions: Arc<Mutex<Vec<String>>>,
}

impl FakeDns {
    /// Serves `records` (name → addresses); other names get NXDOMAIN.
    pub async fn start(records: &[(&str, &[&str])]) -> Self {
        // UDP and TCP on the same port: retry until both binds succeed.
        let (udp, tcp) = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) {
                break (udp, tcp);
            }
        };
        Self::start_std(records, udp, tcp)
    }

    /// Serves on sockets bound elsewhere (e.g. on port 53 inside a test network namespace).
    pub fn start_std(
        records: &[(&str, &[&str])],
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Self {
        let table: Table = Arc::new(Mutex::new(HashMap::new()));
        for (name, addrs) in records {
            table.lock().unwrap().insert(
                name.to_string(),
                addrs.iter().map(|a| a.parse().unwrap()).collect(),
            );
        }
        let questions = Arc::new(Mutex::new(Vec::new()));
        let aliases: Aliases = Arc::default();
        let failing: Failing = Arc::default();
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (udp, tcp) = (
            UdpSocket::from_std(udp).unwrap(),
            TcpListener::from_std(tcp).unwrap(),
        );
        let addr = udp.local_addr().unwrap();
        let (t, q) = (
            (table.clone(), aliases.clone(), failing.clone()),
            questions.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(rsp) = answer(&buf[..n], &t, &q) {
                    let _ = udp.send_to(&rsp, peer).await;
                }
            }
        });
        let (t, q) = (
            (table.clone(), aliases.clone(), failing.clone()),
            questions.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let (t, q) = (t.clone(), q.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = s.read_u16().await else { return };
                        let mut msg = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        let Some(rsp) = answer(&msg, &t, &q) else {
                            return;
                        };
                        let _ = s.write_u16(rsp.len() as u16).await;
                        let _ = s.write_all(&rsp).await;
                    }
                });
            }
        });
        Self {
            addr,
            table,
            aliases,
            failing,
            questions,
        }
    }

    /// Replaces the addresses of `name`.
    pub fn set(&self, name: &str, addrs: &[&str]) {
        self.table.lock().unwrap().insert(
            name.into(),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        );
    }

    /// Makes `name` an alias of `target`.
    pub fn cname(&self, name: &str, target: &str) {
        self.aliases
            .lock()
            .unwrap()
            .insert(name.into(), target.into());
    }

    /// Answers every question for `name` with `rcode` (2 SERVFAIL, 5 REFUSED) and nothing else.
    pub fn fail(&self, name: &str, rcode: u8) {
        self.failing.lock().unwrap().insert(name.into(), rcode);
    }

    /// Every name asked for so far (lower case, no trailing dot).
    pub fn questions(&self) -> Vec<String> {
        self.questions.lock().unwrap().clone()
    }
}

fn answer(
    query: &[u8],
    (table, aliases, failing): &(Table, Aliases, Failing),
    questions: &Arc<Mutex<Vec<String>>>,
) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut rsp = Message::response(msg.metadata.id, OpCode::Query);
    rsp.metadata.message_type = MessageType::Response;
    rsp.metadata.recursion_desired = msg.metadata.recursion_desired;
    rsp.metadata.recursion_available = true;
    let mut known = false;
    for q in &msg.queries {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        questions.lock().unwrap().push(name.clone());
        rsp.add_query(q.clone());
        if let Some(rcode) = failing.lock().unwrap().get(&name).copied() {
            rsp.metadata.response_code = ResponseCode::from(0, rcode);
            return rsp.to_vec().ok();
        }
        let mut owner = q.name().clone();
        let mut lookup = name;
        if let Some(target) = aliases.lock().unwrap().get(&lookup).cloned() {
            known = true;
            let target_name = Name::from_ascii(format!("{target}.")).unwrap();
            let link = RData::CNAME(CNAME(target_name.clone()));
            rsp.add_answer(Record::from_rdata(owner, 1, link));
            owner = target_name;
            lookup = target;
        }
        let Some(addrs) = table.lock().unwrap().get(&lookup).cloned() else {
            continue;
        };
        known = true;
        for ip in addrs {
            let rdata = match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                _ => continue,
            };
            rsp.add_answer(Record::from_rdata(owner.clone(), 1, rdata));
        }
    }
    if !known {
        rsp.metadata.response_code = ResponseCode::NXDomain;
    }
    rsp.to_vec().ok()
}
