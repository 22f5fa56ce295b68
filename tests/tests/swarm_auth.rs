//! Authorization on port 2377 by certificate: every RPC accepts only the
//! roles it declares; removed nodes' and expired certificates are refused.
//! The test speaks the node-to-node RPC itself, with certificates taken from
//! real nodes' state directories. Needs root.

use std::time::Duration;

use swarm_agent::{
    ca::{
        Role, RootCa,
        tls::{self, CertResolver},
    },
    error::ErrorKind,
    manager::store::model::NodeDescription,
    rpc::{
        RpcClient, RpcError,
        messages::{
            ControlRequest, ControlResponse, HeartbeatRequest, HeartbeatResponse, RootCaResponse, path,
        },
    },
};
use swarm_tests::{
    swarm::{agent, cluster, node_ls, row, wait_nodes},
    testbed::Host,
};

const MANAGER: &str = "198.18.0.1:2377";

fn read(h: &Host, name: &str) -> String {
    std::fs::read_to_string(h.state_dir().join("swarm/certificates").join(name)).unwrap()
}

/// An RPC client holding `h`'s certificate.
fn client_of(h: &Host) -> RpcClient {
    client_with(h, &read(h, "swarm-node.crt"), &read(h, "swarm-node.key"))
}

fn client_with(h: &Host, cert: &str, key: &str) -> RpcClient {
    let ca = RootCa::from_pem(&read(h, "swarm-root-ca.crt"), None).unwrap();
    RpcClient::new(tls::client_config(&ca, CertResolver::new(cert, key).unwrap()).unwrap())
}

/// Runs async RPC code from inside a testbed host's network namespace.
fn in_host<R: Send>(h: &Host, f: impl std::future::Future<Output = R> + Send) -> R {
    h.in_netns(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f))
        .unwrap()
}

async fn control(c: &RpcClient) -> Result<ControlResponse, RpcError> {
    c.call(MANAGER, path::CONTROL, &ControlRequest::ListNodes, Duration::from_secs(5), None).await
}

async fn heartbeat(c: &RpcClient) -> Result<HeartbeatResponse, RpcError> {
    let description = NodeDescription { hostname: "node2".into(), ..NodeDescription::default() };
    let req = HeartbeatRequest { description, addr: "198.18.0.2".into() };
    c.call(MANAGER, path::HEARTBEAT, &req, Duration::from_secs(5), None).await
}

fn denied(r: Result<impl std::fmt::Debug, RpcError>) -> String {
    match r {
        Err(RpcError::Api(e)) if e.kind == ErrorKind::PermissionDenied => e.message,
        other => panic!("expected permission denied, got {other:?}"),
    }
}

#[test]
fn every_rpc_checks_the_callers_certificate() {
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "300ms"]);
    let (m, w, spare) = (tb.host(0), tb.host(1), tb.host(2));
    wait_nodes(m, "all ready", Duration::from_secs(20), |r| {
        r.len() == 3 && r.iter().all(|n| n.status == "Ready")
    });
    let worker = client_of(w);
    let manager = client_of(m);
    let id2 = row(&node_ls(m).unwrap(), "node2").id.clone();

    in_host(w, async {
        // A worker may heartbeat but not read or change cluster state, nor speak Raft.
        heartbeat(&worker).await.expect("workers heartbeat");
        let msg = denied(control(&worker).await);
        assert_eq!(
            msg,
            "permission denied: unauthorized peer role: swarm-worker (this request needs swarm-manager)"
        );
        let vote: Result<serde_json::Value, _> =
            worker.call(MANAGER, path::RAFT_VOTE, &serde_json::json!({}), Duration::from_secs(5), None).await;
        assert!(matches!(vote, Err(RpcError::Api(_))), "{vote:?}");
        let join: Result<ControlResponse, _> = worker
            .call(
                MANAGER,
                path::RAFT_JOIN,
                &serde_json::json!({"raft_id": 7, "addr": "198.18.0.2:2377"}),
                Duration::from_secs(5),
                None,
            )
            .await;
        denied(join);
        // Only managers may forward on behalf of others.
        let forged = Some(swarm_agent::rpc::Identity {
            node_id: "x".into(),
            role: Role::Manager,
            cluster_id: "y".into(),
        });
        let r: Result<ControlResponse, _> = worker
            .call(MANAGER, path::CONTROL, &ControlRequest::ListNodes, Duration::from_secs(5), Some(&forged))
            .await;
        assert_eq!(denied(r), "permission denied: only managers may forward requests");
        // The manager's certificate may.
        assert!(matches!(control(&manager).await, Ok(ControlResponse::Nodes(n)) if n.len() == 3));
    });

    // Without any certificate: the root CA is public, nothing else is.
    in_host(spare, async {
        let anon = RpcClient::new(tls::bootstrap_client_config().unwrap());
        let ca: RootCaResponse =
            anon.call(MANAGER, path::ROOT_CA, &(), Duration::from_secs(5), None).await.unwrap();
        assert_eq!(ca.ca_pem, read(m, "swarm-root-ca.crt"));
        assert_eq!(denied(control(&anon).await), "permission denied: this request needs a node certificate");
        denied(heartbeat(&anon).await);
    });

    // A certificate the swarm's CA did not sign does not even get a connection.
    in_host(w, async {
        let other_ca = RootCa::generate().unwrap();
        let (key, csr) = swarm_agent::ca::new_key_and_csr().unwrap();
        let cert = other_ca.sign_node_csr(&csr, &id2, Role::Manager, "c", Duration::from_secs(7200)).unwrap();
        let forged = client_with(w, &cert, &key);
        let r = control(&forged).await;
        // TLS 1.3: the refusal shows on the first request (an alert, or a
        // broken pipe while sending), on a connection that never answered.
        assert!(matches!(r, Err(RpcError::Transport(_) | RpcError::NotAnswered(_))), "{r:?}");
    });

    // An expired certificate, even from the right CA, is refused at the handshake.
    let ca_key = read(m, "swarm-root-ca.key");
    let ca_pem = read(m, "swarm-root-ca.crt");
    let expired = {
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&ca_key).unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, id2.clone());
        p.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(3);
        p.not_after = now - time::Duration::days(1);
        (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    in_host(w, async {
        let c = client_with(w, &expired.0, &expired.1);
        assert!(
            matches!(control(&c).await, Err(RpcError::Transport(_) | RpcError::NotAnswered(_))),
            "expired certificates fail the handshake"
        );
    });

    // A removed node's certificate is refused, although it is still valid.
    agent(m, &["node", "rm", "--force", &id2]).unwrap();
    in_host(w, async {
        let fresh = client_of(w);
        let msg = denied(heartbeat(&fresh).await);
        assert!(
            msg.starts_with("permission denied: node ") && msg.ends_with(" was removed from the swarm"),
            "{msg}"
        );
    });
}
