//! Placement constraints (swarmkit `manager/constraint`): `key==value` or
//! `key!=value` over `node.id`, `node.hostname`, `node.ip` (an address or a
//! CIDR), `node.role`, `node.platform.os`, `node.platform.arch`,
//! `node.labels.<k>` and `engine.labels.<k>`. Keys are case-insensitive;
//! values compare case-insensitively.

use std::net::Ipv4Addr;

use crate::manager::store::{ipam::Cidr, model::Node, task::Service};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

/// Docker's error for a constraint without an operator.
pub const NO_OPERATOR: &str = "constraint expected one operator from ==, !=";

fn key_ok(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && k.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":-_.*()?+[]\\^$|/".contains(c))
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(NO_OPERATOR.into());
        };
        let (key, value) = (key.trim(), value.trim());
        if !key_ok(key) {
            return Err(format!("key '{key}' is invalid"));
        }
        if !value_ok(value) {
            return Err(format!("value '{value}' is invalid"));
        }
        let lower = key.to_ascii_lowercase();
        let known =
            ["node.id", "node.hostname", "node.ip", "node.role", "node.platform.os", "node.platform.arch"];
        let label = |p: &str| lower.strip_prefix(p).is_some_and(|rest| !rest.is_empty());
        if !known.contains(&lower.as_str()) && !label("node.labels.") && !label("engine.labels.") {
            return Err(format!("unsupported constraint key: {key}"));
        }
        if lower == "node.ip" && parse_ip_or_cidr(value).is_none() {
            return Err(format!("constraint value {value} is not a valid IP address or CIDR"));
        }
        // Label keys keep their case; the well-known keys do not care.
        let key = if label("node.labels.") || label("engine.labels.") {
            let at = key.find("labels.").map_or(0, |i| i + "labels.".len());
            format!("{}{}", &lower[..at], &key[at..])
        } else {
            lower
        };
        Ok(Constraint { key, equal, value: value.to_owned() })
    }

    pub fn parse_all(list: &[String]) -> Result<Vec<Constraint>, String> {
        list.iter().map(|c| Constraint::parse(c)).collect()
    }

    pub fn matches(&self, node: &Node) -> bool {
        let value = match self.key.as_str() {
            "node.id" => Some(node.id.clone()),
            "node.hostname" => Some(node.description.hostname.clone()),
            "node.role" => Some(node.role.as_str().to_owned()),
            "node.platform.os" => Some(node.description.os.clone()),
            "node.platform.arch" => Some(node.description.arch.clone()),
            "node.ip" => {
                let Some((net, ())) = parse_ip_or_cidr(&self.value) else { return !self.equal };
                let ip: Option<Ipv4Addr> = node.status.addr.split(':').next().and_then(|a| a.parse().ok());
                let inside = ip.is_some_and(|ip| net.contains(ip));
                return inside == self.equal;
            }
            k => match k.strip_prefix("node.labels.") {
                Some(l) => node.spec.labels.get(l).cloned(),
                None => k
                    .strip_prefix("engine.labels.")
                    .and_then(|l| node.description.engine_labels.get(l).cloned()),
            },
        };
        match value {
            Some(v) => v.eq_ignore_ascii_case(&self.value) == self.equal,
            None => !self.equal,
        }
    }
}

fn parse_ip_or_cidr(v: &str) -> Option<(Cidr, ())> {
    if let Ok(ip) = v.parse::<Ipv4Addr>() {
        return Some((Cidr { addr: ip, prefix: 32 }, ()));
    }
    let (a, p) = v.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some((Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix }, ()))
}

/// A service's constraints; invalid ones (refused at create) match nothing.
pub fn of_service(svc: &Service) -> Vec<Constraint> {
    let list = svc
        .spec
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.clone())
        .unwrap_or_default();
    list.iter()
        .map(|c| {
            Constraint::parse(c).unwrap_or(Constraint {
                key: "node.id".into(),
                equal: true,
                value: String::new(),
            })
        })
        .collect()
}

pub fn matches_all(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::orchestrator::testutil::{add_node, cluster};

    fn node() -> Node {
        let mut s = cluster();
        add_node(&mut s, "abc");
        let mut n = s.nodes.remove("abc").unwrap();
        n.spec.labels.insert("Zone".into(), "east".into());
        n.description.engine_labels.insert("storage".into(), "ssd".into());
        n
    }

    #[test]
    fn parse_errors_are_dockers() {
        assert_eq!(Constraint::parse("node.role=manager").unwrap_err(), NO_OPERATOR);
        assert!(Constraint::parse("bogus.key==1").unwrap_err().contains("unsupported constraint key"));
        assert!(Constraint::parse("node.ip==nope").is_err());
        assert!(Constraint::parse("node.role==").is_err());
    }

    #[test]
    fn matching() {
        let n = node();
        let m = |c: &str| Constraint::parse(c).unwrap().matches(&n);
        assert!(m("node.id==abc"));
        assert!(m("NODE.ID==ABC"));
        assert!(!m("node.id!=abc"));
        assert!(m("node.hostname==host-abc"));
        assert!(m("node.role==worker"));
        assert!(!m("node.role==manager"));
        assert!(m("node.platform.os==linux"));
        assert!(m("node.labels.Zone==east"));
        assert!(!m("node.labels.zone==east"), "label keys are case-sensitive");
        assert!(m("node.labels.rack!=r1"), "a missing label is not equal");
        assert!(!m("node.labels.rack==r1"));
        assert!(m("node.ip==198.18.0.1"));
        assert!(m("node.ip==198.18.0.0/15"));
        assert!(!m("node.ip==10.0.0.0/8"));
        assert!(m("engine.labels.x!=y"));
        assert!(m("engine.labels.storage==ssd"));
        assert!(!m("engine.labels.storage!=ssd"));
        assert!(!m("node.labels.storage==ssd"), "engine and node labels are apart");
    }
}
