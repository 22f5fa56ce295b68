//! Lookups the state machine's checks need, kept in step with the objects so
//! that checking and applying a command costs O(log n) in the size of the
//! state instead of a scan: network names, subnets (as address intervals),
//! VNIs, and endpoint addresses per network. Never serialized: rebuilt
//! whenever a state is decoded (`ClusterState`'s `serde(from)`).

use std::collections::{BTreeMap, BTreeSet};

use crate::manager::store::{
    ipam::Cidr,
    model::{Endpoint, Network},
    task::Service,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// Network name -> ID.
    names: BTreeMap<String, String>,
    /// First address of each network's subnet -> (last address, network ID).
    /// Networks never overlap, so the intervals are disjoint.
    subnets: BTreeMap<u32, (u32, String)>,
    /// VNI -> network ID.
    vnis: BTreeMap<u32, String>,
    /// (network ID, address) of every endpoint.
    addrs: BTreeSet<(String, String)>,
    /// Endpoints per network ID.
    endpoints: BTreeMap<String, usize>,
    /// Service name -> ID.
    services: BTreeMap<String, String>,
}

fn range(subnet: &str) -> Option<(u32, u32)> {
    let c = Cidr::parse(subnet).ok()?;
    Some((u32::from(c.network()), u32::from(c.broadcast())))
}

impl Index {
    pub fn build<'a>(
        networks: impl Iterator<Item = &'a Network>,
        endpoints: impl Iterator<Item = &'a Endpoint>,
    ) -> Index {
        let mut i = Index::default();
        for n in networks {
            i.add_network(n);
        }
        for e in endpoints {
            i.add_endpoint(e);
        }
        i
    }

    pub fn add_services<'a>(&mut self, services: impl Iterator<Item = &'a Service>) {
        for s in services {
            self.add_service(s);
        }
    }

    pub fn add_service(&mut self, s: &Service) {
        self.services.insert(s.name().to_owned(), s.id.clone());
    }

    pub fn remove_service(&mut self, s: &Service) {
        self.services.remove(s.name());
    }

    pub fn service_named(&self, name: &str) -> Option<&str> {
        self.services.get(name).map(String::as_str)
    }

    pub fn add_network(&mut self, n: &Network) {
        self.names.insert(n.name.clone(), n.id.clone());
        if let Some((first, last)) = range(&n.subnet) {
            self.subnets.insert(first, (last, n.id.clone()));
        }
        self.vnis.insert(n.vni, n.id.clone());
    }

    pub fn remove_network(&mut self, n: &Network) {
        self.names.remove(&n.name);
        if let Some((first, _)) = range(&n.subnet) {
            self.subnets.remove(&first);
        }
        self.vnis.remove(&n.vni);
    }

    pub fn add_endpoint(&mut self, e: &Endpoint) {
        self.addrs.insert((e.network_id.clone(), e.ip.clone()));
        *self.endpoints.entry(e.network_id.clone()).or_default() += 1;
    }

    pub fn remove_endpoint(&mut self, e: &Endpoint) {
        self.addrs.remove(&(e.network_id.clone(), e.ip.clone()));
        if let Some(n) = self.endpoints.get_mut(&e.network_id) {
            *n -= 1;
            if *n == 0 {
                self.endpoints.remove(&e.network_id);
            }
        }
    }

    /// The ID of the network called `name`.
    pub fn network_named(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    /// A network whose subnet overlaps `c`: the last one starting at or
    /// before `c`'s first address (if it reaches into `c`), or the first one
    /// starting inside `c`.
    pub fn overlapping(&self, c: Cidr) -> Option<&str> {
        let (first, last) = (u32::from(c.network()), u32::from(c.broadcast()));
        if let Some((_, (end, id))) = self.subnets.range(..=first).next_back()
            && *end >= first
        {
            return Some(id);
        }
        self.subnets.range(first..=last).next().map(|(_, (_, id))| id.as_str())
    }

    /// VNIs in use, ascending.
    pub fn vnis(&self) -> impl Iterator<Item = u32> + '_ {
        self.vnis.keys().copied()
    }

    pub fn vni_owner(&self, vni: u32) -> Option<&str> {
        self.vnis.get(&vni).map(String::as_str)
    }

    pub fn address_used(&self, network_id: &str, ip: &str) -> bool {
        self.addrs.contains(&(network_id.to_owned(), ip.to_owned()))
    }

    pub fn has_endpoints(&self, network_id: &str) -> bool {
        self.endpoints.contains_key(network_id)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::manager::store::model::Meta;

    fn net(id: usize, c: Cidr) -> Network {
        Network {
            id: format!("n{id}"),
            meta: Meta::default(),
            name: format!("net{id}"),
            driver: "overlay".into(),
            ingress: false,
            attachable: false,
            subnet: c.to_string(),
            gateway: c.first_host().to_string(),
            vni: 4096 + id as u32,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            pending_delete: false,
        }
    }

    fn cidr(addr: u32, prefix: u8) -> Cidr {
        let c = Cidr { addr: addr.into(), prefix };
        Cidr { addr: c.network(), prefix }
    }

    proptest! {
        /// The interval lookup finds an overlap exactly when a scan does.
        #[test]
        fn overlap_lookup_matches_a_scan(
            subnets in proptest::collection::vec((any::<u32>(), 8u8..=30), 0..40),
            query in (any::<u32>(), 0u8..=32),
        ) {
            let mut idx = Index::default();
            let mut kept: Vec<Cidr> = Vec::new();
            for (i, (a, p)) in subnets.into_iter().enumerate() {
                let c = cidr(a, p);
                // The store only ever holds disjoint subnets.
                if kept.iter().all(|k| !k.overlaps(c)) {
                    idx.add_network(&net(i, c));
                    kept.push(c);
                }
            }
            let q = cidr(query.0, query.1);
            let scan = kept.iter().any(|k| k.overlaps(q));
            prop_assert_eq!(idx.overlapping(q).is_some(), scan);
        }
    }

    #[test]
    fn removing_undoes_adding() {
        let n = net(1, cidr(0x0a00_0100, 24));
        let mut idx = Index::default();
        idx.add_network(&n);
        assert_eq!(idx.network_named("net1"), Some("n1"));
        assert_eq!(idx.vni_owner(4097), Some("n1"));
        idx.remove_network(&n);
        assert_eq!(idx, Index::default());
    }
}
