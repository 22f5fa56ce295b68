//! The per-network endpoint tables (Docker's NetworkDB), without I/O.
//!
//! Each node owns the entries for its own endpoints. A node keeps the table
//! of a network only while it has endpoints there; it tells every live node
//! which networks it is in, and sends each change of its entries to the
//! nodes in that network. Entries carry their owner's version (its
//! incarnation, then a counter), so a newer write always wins, also after
//! the owner restarts. Deletions stay as tombstones for a while, so a late
//! copy of an old entry cannot bring it back. When a node dies, its entries
//! go with it.
//!
//! Inputs are method calls; outputs are [`Out`] values: messages to send and
//! changes for the datapath.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What a network's table says about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub vni: u32,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    /// Underlay address of the host the endpoint lives on.
    pub host_ip: [u8; 4],
}

/// An entry's version: owner incarnation, then owner counter.
pub type Version = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub owner: String,
    pub version: Version,
    /// `None`: deleted (a tombstone).
    pub value: Option<EndpointRecord>,
}

/// Messages between nodes about tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableMsg {
    /// The networks `node` has endpoints in, as of `version`. `hello` when
    /// `node` just saw the receiver come up: the receiver answers with its
    /// own entries of the networks they share, whatever it believed before.
    Networks { node: String, version: Version, networks: BTreeSet<String>, hello: bool },
    /// Changed entries of one network.
    Entries { network: String, entries: Vec<Entry> },
}

/// What the table wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Send {
        to: String,
        msg: TableMsg,
    },
    /// An endpoint of another node appeared or changed.
    Upsert {
        network: String,
        key: String,
        record: EndpointRecord,
    },
    /// An endpoint of another node went away.
    Remove {
        network: String,
        key: String,
        record: EndpointRecord,
    },
}

#[derive(Debug)]
pub struct NetworkDb {
    me: String,
    incarnation: u64,
    counter: u64,
    my_networks: BTreeSet<String>,
    /// Networks this node stays in without endpoints of its own (ingress:
    /// every node forwards to its tasks).
    joined: BTreeSet<String>,
    /// Other nodes' networks, with the version of their last announcement.
    node_networks: BTreeMap<String, (Version, BTreeSet<String>)>,
    /// Tables of the networks this node is in.
    tables: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Live nodes other than this one.
    alive: BTreeSet<String>,
}

impl NetworkDb {
    /// `incarnation` must grow across restarts of this node (e.g. start time).
    pub fn new(me: &str, incarnation: u64) -> NetworkDb {
        NetworkDb {
            me: me.to_owned(),
            incarnation,
            counter: 0,
            my_networks: BTreeSet::new(),
            joined: BTreeSet::new(),
            node_networks: BTreeMap::new(),
            tables: BTreeMap::new(),
            alive: BTreeSet::new(),
        }
    }

    fn next_version(&mut self) -> Version {
        self.counter += 1;
        (self.incarnation, self.counter)
    }

    /// Live nodes (other than this one) in `network`.
    pub fn members_of(&self, network: &str) -> Vec<String> {
        self.node_networks
            .iter()
            .filter(|(n, (_, nets))| self.alive.contains(*n) && nets.contains(network))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn networks(&self) -> &BTreeSet<String> {
        &self.my_networks
    }

    fn announce(&mut self) -> Vec<Out> {
        let version = self.next_version();
        let msg = TableMsg::Networks {
            node: self.me.clone(),
            version,
            networks: self.my_networks.clone(),
            hello: false,
        };
        self.alive.iter().map(|n| Out::Send { to: n.clone(), msg: msg.clone() }).collect()
    }

    /// Re-announces this node's networks to every live node (periodic repair).
    pub fn reannounce(&mut self) -> Vec<Out> {
        self.announce()
    }

    /// This node's own entries of `network`.
    fn own_entries(&self, network: &str) -> Vec<Entry> {
        self.tables
            .get(network)
            .map(|t| t.values().filter(|e| e.owner == self.me).cloned().collect())
            .unwrap_or_default()
    }

    /// Every entry of `network` (for a bulk sync).
    pub fn entries(&self, network: &str) -> Vec<Entry> {
        self.tables.get(network).map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    /// Keeps this node in `network`'s table whether or not it has endpoints
    /// there: it learns the others' endpoints.
    pub fn join(&mut self, network: &str) -> Vec<Out> {
        if !self.joined.insert(network.to_owned()) {
            return Vec::new();
        }
        self.tables.entry(network.to_owned()).or_default();
        if self.my_networks.insert(network.to_owned()) { self.announce() } else { Vec::new() }
    }

    /// Adds or changes one of this node's endpoints; joins the network's
    /// table if this is the first.
    pub fn set_local(&mut self, network: &str, key: &str, record: EndpointRecord) -> Vec<Out> {
        let mut out = Vec::new();
        if self.my_networks.insert(network.to_owned()) {
            self.tables.entry(network.to_owned()).or_default();
            out.extend(self.announce());
        }
        let entry = Entry {
            key: key.to_owned(),
            owner: self.me.clone(),
            version: self.next_version(),
            value: Some(record),
        };
        self.tables.entry(network.to_owned()).or_default().insert(key.to_owned(), entry.clone());
        out.extend(self.send_to_members(network, vec![entry]));
        out
    }

    /// Deletes one of this node's endpoints; leaves the network's table when
    /// it was the last.
    pub fn remove_local(&mut self, network: &str, key: &str) -> Vec<Out> {
        let mut out = Vec::new();
        let tomb =
            Entry { key: key.to_owned(), owner: self.me.clone(), version: self.next_version(), value: None };
        if let Some(t) = self.tables.get_mut(network) {
            t.insert(key.to_owned(), tomb.clone());
        }
        out.extend(self.send_to_members(network, vec![tomb]));
        let still_mine = self
            .tables
            .get(network)
            .is_some_and(|t| t.values().any(|e| e.owner == self.me && e.value.is_some()));
        if !still_mine && !self.joined.contains(network) && self.my_networks.remove(network) {
            // Forget the table: everyone else's endpoints there go away here.
            if let Some(t) = self.tables.remove(network) {
                for e in t.into_values() {
                    if let (Some(record), false) = (e.value, e.owner == self.me) {
                        out.push(Out::Remove { network: network.to_owned(), key: e.key, record });
                    }
                }
            }
            out.extend(self.announce());
        }
        out
    }

    fn send_to_members(&self, network: &str, entries: Vec<Entry>) -> Vec<Out> {
        self.members_of(network)
            .into_iter()
            .map(|to| Out::Send {
                to,
                msg: TableMsg::Entries { network: network.to_owned(), entries: entries.clone() },
            })
            .collect()
    }

    /// A node is alive (membership); it hears our networks.
    pub fn node_up(&mut self, node: &str) -> Vec<Out> {
        if node == self.me || !self.alive.insert(node.to_owned()) {
            return Vec::new();
        }
        let version = (self.incarnation, self.counter);
        vec![Out::Send {
            to: node.to_owned(),
            msg: TableMsg::Networks {
                node: self.me.clone(),
                version,
                networks: self.my_networks.clone(),
                hello: true,
            },
        }]
    }

    /// A node died (membership): its entries are withdrawn everywhere here.
    pub fn node_down(&mut self, node: &str) -> Vec<Out> {
        self.alive.remove(node);
        self.node_networks.remove(node);
        let mut out = Vec::new();
        for (network, table) in &mut self.tables {
            let gone: Vec<String> =
                table.values().filter(|e| e.owner == node).map(|e| e.key.clone()).collect();
            for key in gone {
                if let Some(Entry { value: Some(record), .. }) = table.remove(&key) {
                    out.push(Out::Remove { network: network.clone(), key, record });
                }
            }
        }
        out
    }

    /// Handles a message from another node.
    pub fn receive(&mut self, msg: TableMsg) -> Vec<Out> {
        match msg {
            TableMsg::Networks { node, version, networks, hello } => {
                self.on_networks(node, version, networks, hello)
            }
            TableMsg::Entries { network, entries } => self.merge(&network, entries),
        }
    }

    fn on_networks(
        &mut self,
        node: String,
        version: Version,
        networks: BTreeSet<String>,
        hello: bool,
    ) -> Vec<Out> {
        if node == self.me {
            return Vec::new();
        }
        if let Some((v, _)) = self.node_networks.get(&node)
            && *v > version
        {
            return Vec::new();
        }
        let before = self.node_networks.get(&node).map(|(_, n)| n.clone()).unwrap_or_default();
        self.node_networks.insert(node.clone(), (version, networks.clone()));
        let mut out = Vec::new();
        // It joined networks we are in: it gets our entries there.
        for net in networks.intersection(&self.my_networks) {
            if hello || !before.contains(net) || !self.alive.contains(&node) {
                let entries = self.own_entries(net);
                if !entries.is_empty() {
                    out.push(Out::Send {
                        to: node.clone(),
                        msg: TableMsg::Entries { network: net.clone(), entries },
                    });
                }
            }
        }
        // It left networks: its entries there go.
        for net in before.difference(&networks) {
            if let Some(table) = self.tables.get_mut(net) {
                let gone: Vec<String> =
                    table.values().filter(|e| e.owner == node).map(|e| e.key.clone()).collect();
                for key in gone {
                    if let Some(Entry { value: Some(record), .. }) = table.remove(&key) {
                        out.push(Out::Remove { network: net.clone(), key, record });
                    }
                }
            }
        }
        out
    }

    /// Merges entries of a network this node is in; newer versions win.
    /// Entries of nodes that are not alive here are ignored: a third node's
    /// copy must not bring back what a death withdrew (the owner re-sends
    /// its entries when it comes back).
    pub fn merge(&mut self, network: &str, entries: Vec<Entry>) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(table) = self.tables.get_mut(network) else { return out };
        for e in entries {
            if e.owner == self.me || !self.alive.contains(&e.owner) {
                continue;
            }
            let newer = table.get(&e.key).is_none_or(|old| old.owner != e.owner || e.version > old.version);
            if !newer {
                continue;
            }
            let old = table.insert(e.key.clone(), e.clone());
            match (e.value, old.and_then(|o| o.value)) {
                (Some(record), previous) if previous.as_ref() != Some(&record) => {
                    out.push(Out::Upsert { network: network.to_owned(), key: e.key, record });
                }
                (None, Some(record)) => {
                    out.push(Out::Remove { network: network.to_owned(), key: e.key, record });
                }
                _ => {}
            }
        }
        out
    }

    /// Drops tombstones (call now and then; they only guard against stale copies).
    pub fn reap_tombstones(&mut self) {
        for t in self.tables.values_mut() {
            t.retain(|_, e| e.value.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(last: u8, host: u8) -> EndpointRecord {
        EndpointRecord {
            vni: 4097,
            ip: [10, 0, 1, last],
            mac: [2, 0x42, 10, 0, 1, last],
            host_ip: [198, 18, 0, host],
        }
    }

    /// Delivers every Send between the dbs until quiet; returns datapath changes per node.
    fn run(
        dbs: &mut BTreeMap<String, NetworkDb>,
        mut pending: Vec<(String, Out)>,
    ) -> BTreeMap<String, Vec<Out>> {
        let mut changes: BTreeMap<String, Vec<Out>> = BTreeMap::new();
        while let Some((from, o)) = pending.pop() {
            match o {
                Out::Send { to, msg } => {
                    let db = dbs.get_mut(&to).unwrap();
                    pending.extend(db.receive(msg).into_iter().map(|x| (to.clone(), x)));
                }
                other => changes.entry(from).or_default().push(other),
            }
        }
        changes
    }

    fn cluster(names: &[&str]) -> BTreeMap<String, NetworkDb> {
        let mut dbs: BTreeMap<String, NetworkDb> =
            names.iter().map(|n| (n.to_string(), NetworkDb::new(n, 1))).collect();
        let mut pending = Vec::new();
        for a in names {
            for b in names {
                if a != b {
                    pending
                        .extend(dbs.get_mut(*a).unwrap().node_up(b).into_iter().map(|o| (a.to_string(), o)));
                }
            }
        }
        run(&mut dbs, pending);
        dbs
    }

    #[test]
    fn endpoints_reach_exactly_the_nodes_in_their_network() {
        let mut dbs = cluster(&["a", "b", "c"]);
        let out = dbs.get_mut("a").unwrap().set_local("net1", "ea", rec(2, 1));
        let ch = run(&mut dbs, out.into_iter().map(|o| ("a".into(), o)).collect());
        assert!(ch.is_empty(), "nobody else is in net1 yet: {ch:?}");
        // b joins net1: it learns a's endpoint, and a learns b's.
        let out = dbs.get_mut("b").unwrap().set_local("net1", "eb", rec(3, 2));
        let ch = run(&mut dbs, out.into_iter().map(|o| ("b".into(), o)).collect());
        assert_eq!(
            ch["a"],
            vec![Out::Upsert { network: "net1".into(), key: "eb".into(), record: rec(3, 2) }]
        );
        assert_eq!(
            ch["b"],
            vec![Out::Upsert { network: "net1".into(), key: "ea".into(), record: rec(2, 1) }]
        );
        assert!(!ch.contains_key("c"), "c has no endpoint in net1");
        assert!(dbs["c"].entries("net1").is_empty());
    }

    #[test]
    fn a_joined_node_learns_endpoints_without_having_any() {
        let mut dbs = cluster(&["a", "b", "c"]);
        let out = dbs.get_mut("a").unwrap().set_local("ingress", "ea", rec(2, 1));
        run(&mut dbs, out.into_iter().map(|o| ("a".into(), o)).collect());
        let out = dbs.get_mut("c").unwrap().join("ingress");
        let ch = run(&mut dbs, out.into_iter().map(|o| ("c".into(), o)).collect());
        assert_eq!(
            ch["c"],
            vec![Out::Upsert { network: "ingress".into(), key: "ea".into(), record: rec(2, 1) }]
        );
        // Later endpoints reach it too, and it stays after one of its own leaves.
        let out = dbs.get_mut("c").unwrap().set_local("ingress", "ec", rec(5, 3));
        run(&mut dbs, out.into_iter().map(|o| ("c".into(), o)).collect());
        let out = dbs.get_mut("c").unwrap().remove_local("ingress", "ec");
        run(&mut dbs, out.into_iter().map(|o| ("c".into(), o)).collect());
        let out = dbs.get_mut("b").unwrap().set_local("ingress", "eb", rec(3, 2));
        let ch = run(&mut dbs, out.into_iter().map(|o| ("b".into(), o)).collect());
        assert_eq!(
            ch["c"],
            vec![Out::Upsert { network: "ingress".into(), key: "eb".into(), record: rec(3, 2) }]
        );
        assert!(dbs.get_mut("c").unwrap().join("ingress").is_empty(), "joining twice is a no-op");
    }

    #[test]
    fn removals_and_dead_nodes_withdraw_endpoints() {
        let mut dbs = cluster(&["a", "b"]);
        for (n, k, r) in [("a", "ea", rec(2, 1)), ("a", "ea2", rec(4, 1)), ("b", "eb", rec(3, 2))] {
            let out = dbs.get_mut(n).unwrap().set_local("net1", k, r);
            run(&mut dbs, out.into_iter().map(|o| (n.to_owned(), o)).collect());
        }
        let out = dbs.get_mut("a").unwrap().remove_local("net1", "ea2");
        let ch = run(&mut dbs, out.into_iter().map(|o| ("a".into(), o)).collect());
        assert_eq!(
            ch["b"],
            vec![Out::Remove { network: "net1".into(), key: "ea2".into(), record: rec(4, 1) }]
        );
        let ch = dbs.get_mut("b").unwrap().node_down("a");
        assert_eq!(ch, vec![Out::Remove { network: "net1".into(), key: "ea".into(), record: rec(2, 1) }]);
        assert!(dbs["b"].members_of("net1").is_empty());
        // A stale copy of the dead node's entries (a third node's bulk sync)
        // does not bring them back.
        let stale = dbs["a"].entries("net1");
        assert!(stale.iter().any(|e| e.owner == "a" && e.value.is_some()));
        assert!(dbs.get_mut("b").unwrap().merge("net1", stale).is_empty());
        // When it is back (b may not have looked down to it), the hello
        // exchange restores them.
        let out = dbs.get_mut("b").unwrap().node_up("a");
        let mut pending: Vec<(String, Out)> = out.into_iter().map(|o| ("b".into(), o)).collect();
        pending.extend(dbs.get_mut("a").unwrap().node_up("b").into_iter().map(|o| ("a".into(), o)));
        let ch = run(&mut dbs, pending);
        assert_eq!(
            ch["b"],
            vec![Out::Upsert { network: "net1".into(), key: "ea".into(), record: rec(2, 1) }]
        );
    }

    #[test]
    fn leaving_a_network_forgets_its_table_everywhere() {
        let mut dbs = cluster(&["a", "b"]);
        for (n, k, r) in [("a", "ea", rec(2, 1)), ("b", "eb", rec(3, 2))] {
            let out = dbs.get_mut(n).unwrap().set_local("net1", k, r);
            run(&mut dbs, out.into_iter().map(|o| (n.to_owned(), o)).collect());
        }
        let out = dbs.get_mut("b").unwrap().remove_local("net1", "eb");
        let ch = run(&mut dbs, out.into_iter().map(|o| ("b".into(), o)).collect());
        assert_eq!(
            ch["a"],
            vec![Out::Remove { network: "net1".into(), key: "eb".into(), record: rec(3, 2) }]
        );
        assert_eq!(
            ch["b"],
            vec![Out::Remove { network: "net1".into(), key: "ea".into(), record: rec(2, 1) }]
        );
        assert!(!dbs["b"].networks().contains("net1"));
        assert!(dbs["a"].members_of("net1").is_empty());
    }

    #[test]
    fn old_copies_never_win_and_a_restarted_owner_does() {
        let mut a = NetworkDb::new("a", 1);
        a.node_up("b");
        a.set_local("n", "k", rec(2, 1));
        let newer = Entry { key: "x".into(), owner: "b".into(), version: (5, 2), value: Some(rec(9, 2)) };
        let older = Entry { key: "x".into(), owner: "b".into(), version: (5, 1), value: Some(rec(8, 2)) };
        assert_eq!(a.merge("n", vec![newer.clone()]).len(), 1);
        assert!(a.merge("n", vec![older]).is_empty(), "an older version is ignored");
        let tomb = Entry { key: "x".into(), owner: "b".into(), version: (5, 3), value: None };
        assert_eq!(a.merge("n", vec![tomb]).len(), 1);
        assert!(a.merge("n", vec![newer]).is_empty(), "the tombstone keeps the old entry out");
        // b restarted (higher incarnation): its counter starts again, and wins.
        let reborn = Entry { key: "x".into(), owner: "b".into(), version: (6, 1), value: Some(rec(9, 2)) };
        assert_eq!(a.merge("n", vec![reborn]).len(), 1);
        // Tables of networks we are not in are not kept.
        assert!(
            a.merge(
                "other",
                vec![Entry { key: "y".into(), owner: "b".into(), version: (1, 1), value: Some(rec(1, 1)) }]
            )
            .is_empty()
        );
    }
}
