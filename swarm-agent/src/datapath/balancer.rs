//! Programming the service maps: what each frontend (a VIP, a published
//! port) should balance over, applied as the smallest set of map changes.
//! Slots are written before a frontend's count grows and removed after it
//! shrinks, so the programs never read a missing slot below the count.

use std::{collections::BTreeMap, net::Ipv4Addr};

use swarm_common::lb::{Backend, BackendKey, Frontend, FrontendKey, MAX_BACKENDS_PER_FRONTEND};

use super::{DatapathError, overlay::LbMaps};

/// What a frontend should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The network the backends' addresses are on.
    pub backend_vni: u32,
    /// Published ports: the port the tasks listen on; 0 keeps the port.
    pub target_port: u16,
    pub backends: Vec<Ipv4Addr>,
}

/// The frontends as programmed: key → (value, backends by slot).
pub type Applied = BTreeMap<FrontendKey, (Frontend, Vec<[u8; 4]>)>;

/// Reads what the maps hold (after an agent restart).
pub fn read(maps: &mut LbMaps<'_>) -> Result<Applied, DatapathError> {
    let mut out = Applied::new();
    for (k, fe) in maps.frontends()? {
        let mut backends = Vec::new();
        for slot in 0..fe.count {
            if let Some(b) = maps.backend(BackendKey { id: fe.id, slot })? {
                backends.push(b.ip);
            }
        }
        out.insert(k, (fe, backends));
    }
    Ok(out)
}

/// Makes the maps hold exactly `want`.
pub fn sync(
    maps: &mut LbMaps<'_>,
    applied: &mut Applied,
    want: &BTreeMap<FrontendKey, Want>,
) -> Result<(), DatapathError> {
    let gone: Vec<FrontendKey> = applied.keys().filter(|k| !want.contains_key(k)).copied().collect();
    for k in gone {
        if let Some((fe, backends)) = applied.remove(&k) {
            maps.remove_frontend(k)?;
            for slot in 0..backends.len() as u32 {
                maps.remove_backend(BackendKey { id: fe.id, slot })?;
            }
        }
    }
    for (k, w) in want {
        let mut backends: Vec<[u8; 4]> = w.backends.iter().map(Ipv4Addr::octets).collect();
        backends.sort_unstable();
        backends.dedup();
        backends.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
        let (id, old) = match applied.get(k) {
            Some((fe, old)) => (fe.id, old.clone()),
            None => (free_id(applied), Vec::new()),
        };
        let fe = Frontend {
            id,
            count: backends.len() as u32,
            backend_vni: w.backend_vni,
            target_port: w.target_port.to_be_bytes(),
            pad: [0; 2],
        };
        if applied.get(k).is_some_and(|(f, b)| *f == fe && *b == backends) {
            continue;
        }
        for (slot, ip) in backends.iter().enumerate() {
            if old.get(slot) != Some(ip) {
                maps.set_backend(BackendKey { id, slot: slot as u32 }, Backend { ip: *ip })?;
            }
        }
        maps.set_frontend(*k, fe)?;
        for slot in backends.len()..old.len() {
            maps.remove_backend(BackendKey { id, slot: slot as u32 })?;
        }
        applied.insert(*k, (fe, backends));
    }
    Ok(())
}

/// The smallest frontend ID not in use.
fn free_id(applied: &Applied) -> u32 {
    let used: std::collections::BTreeSet<u32> = applied.values().map(|(f, _)| f.id).collect();
    (0..=u32::MAX).find(|i| !used.contains(i)).unwrap_or(0)
}
