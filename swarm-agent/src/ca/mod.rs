//! The swarm's own certificate authority, following swarmkit (ca/certificates.go):
//! a self-signed ECDSA P-256 root `CN=swarm-ca` valid 20 years, and node
//! certificates `CN=<node id>, OU=swarm-manager|swarm-worker, O=<cluster id>`
//! signed from a CSR whose only trusted part is the public key.

pub mod tls;
pub mod token;

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use time::OffsetDateTime;

/// Common name of the root certificate.
pub const ROOT_CN: &str = "swarm-ca";
/// Root validity: 630720000 s (20 years).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(630_720_000);
/// Default node certificate validity (`--cert-expiry`): 2160 h (90 days).
pub const DEFAULT_NODE_CERT_EXPIRY: Duration = Duration::from_secs(2160 * 3600);
/// Smallest node certificate validity the API accepts.
pub const MIN_NODE_CERT_EXPIRY: Duration = Duration::from_secs(3600);
/// NotBefore is backdated by this much to tolerate clock skew.
pub const CERT_BACKDATE: Duration = Duration::from_secs(3600);
/// TLS server name every manager certificate carries.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";

/// A node's role, as carried in its certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    /// The certificate OU for this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Worker => "swarm-worker",
            Role::Manager => "swarm-manager",
        }
    }

    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "swarm-worker" => Some(Role::Worker),
            "swarm-manager" => Some(Role::Manager),
            _ => None,
        }
    }

    /// `worker` / `manager`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("generating or signing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate or CSR that is not what it claims to be.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// This node has the CA certificate but not its key (workers).
    #[error("this node cannot sign certificates (no CA key)")]
    NoKey,
}

/// The root CA: its certificate, and on managers its key.
#[derive(Clone)]
pub struct RootCa {
    cert_pem: String,
    key_pem: Option<String>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa").field("has_key", &self.key_pem.is_some()).finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed root.
    pub fn generate() -> Result<RootCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, ROOT_CN);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CERT_BACKDATE;
        params.not_after = now + ROOT_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(RootCa { cert_pem: cert.pem(), key_pem: Some(key.serialize_pem()) })
    }

    /// A root from stored PEMs; `key_pem` is `None` on workers.
    pub fn from_pem(cert_pem: &str, key_pem: Option<&str>) -> Result<RootCa, CaError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Invalid(format!("root CA certificate: {e}")))?;
        let info = CertInfo::from_der(&der)?;
        if info.common_name != ROOT_CN {
            return Err(CaError::Invalid(format!(
                "root CA has CN {:?}, expected {ROOT_CN:?}",
                info.common_name
            )));
        }
        if let Some(k) = key_pem {
            KeyPair::from_pem(k)?;
        }
        Ok(RootCa { cert_pem: cert_pem.to_owned(), key_pem: key_pem.map(str::to_owned) })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> Option<&str> {
        self.key_pem.as_deref()
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CaError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| CaError::Invalid(e.to_string()))
    }

    /// SHA-256 of the PEM bytes: what join tokens carry.
    pub fn digest(&self) -> [u8; 32] {
        crate::ca::token::ca_digest(self.cert_pem.as_bytes())
    }

    /// Signs a node certificate for `csr_pem`. Only the CSR's public key is
    /// used; subject, SANs, usages and validity come from the CA.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        expiry: Duration,
    ) -> Result<String, CaError> {
        let key_pem = self.key_pem.as_deref().ok_or(CaError::NoKey)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(key_pem)?)?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Invalid(format!("certificate signing request: {e}")))?;
        csr.params = node_params(node_id, role, cluster_id, expiry)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

fn node_params(
    node_id: &str,
    role: Role,
    cluster_id: &str,
    expiry: Duration,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, cluster_id);
    p.distinguished_name.push(DnType::OrganizationalUnitName, role.ou());
    p.distinguished_name.push(DnType::CommonName, node_id);
    let mut sans = vec![role.ou().to_owned(), node_id.to_owned()];
    if role == Role::Manager {
        sans.push(ROOT_CN.to_owned());
    }
    p.subject_alt_names =
        sans.into_iter().map(|s| s.try_into().map(SanType::DnsName)).collect::<Result<_, _>>().map_err(
            |e: rcgen::Error| CaError::Invalid(format!("node id {node_id:?} is not a DNS name: {e}")),
        )?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - CERT_BACKDATE;
    p.not_after = now + expiry;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn random_serial() -> SerialNumber {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// A new node key pair (ECDSA P-256) and a CSR for it. The key never leaves the node.
pub fn new_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub organizational_unit: String,
    pub organization: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Common name of the issuer.
    pub issuer_cn: String,
}

impl CertInfo {
    pub fn from_pem(pem: &str) -> Result<CertInfo, CaError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CaError::Invalid(e.to_string()))?;
        CertInfo::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CaError::Invalid(format!("parsing: {e}")))?;
        let attr = |name: &x509_parser::x509::X509Name<'_>, oid: &x509_parser::der_parser::oid::Oid<'_>| {
            name.iter_by_oid(oid).next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_owned()
        };
        use x509_parser::oid_registry::{
            OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT,
        };
        Ok(CertInfo {
            common_name: attr(cert.subject(), &OID_X509_COMMON_NAME),
            organizational_unit: attr(cert.subject(), &OID_X509_ORGANIZATIONAL_UNIT),
            organization: attr(cert.subject(), &OID_X509_ORGANIZATION_NAME),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            issuer_cn: attr(cert.issuer(), &OID_X509_COMMON_NAME),
        })
    }

    /// The role the OU grants, if it is one of ours.
    pub fn role(&self) -> Option<Role> {
        Role::from_ou(&self.organizational_unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ca_matches_swarmkit() {
        let ca = RootCa::generate().unwrap();
        let info = CertInfo::from_pem(ca.cert_pem()).unwrap();
        assert_eq!(info.common_name, "swarm-ca");
        assert_eq!(info.issuer_cn, "swarm-ca", "self-signed");
        let years = (info.not_after - info.not_before) as f64 / (365.25 * 86400.0);
        assert!((19.9..20.1).contains(&years), "{years}");
        let again = RootCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
    }

    #[test]
    fn node_certificates_carry_id_role_and_cluster_and_ignore_the_csr_subject() {
        let ca = RootCa::generate().unwrap();
        // A CSR asking for a different identity; the CA must not honour it.
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "evil");
        p.distinguished_name.push(DnType::OrganizationalUnitName, "swarm-manager");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca
            .sign_node_csr(
                &csr,
                "nodeid0000000000000000001",
                Role::Worker,
                "clusterid",
                DEFAULT_NODE_CERT_EXPIRY,
            )
            .unwrap();
        let info = CertInfo::from_pem(&pem).unwrap();
        assert_eq!(info.common_name, "nodeid0000000000000000001");
        assert_eq!(info.organizational_unit, "swarm-worker");
        assert_eq!(info.organization, "clusterid");
        assert_eq!(info.issuer_cn, "swarm-ca");
        assert_eq!(info.role(), Some(Role::Worker));
        let days = (info.not_after - info.not_before) as f64 / 86400.0;
        assert!((90.0..90.1).contains(&days), "{days} (90 d + 1 h backdate)");
    }

    #[test]
    fn workers_cannot_sign_and_garbage_is_refused() {
        let ca = RootCa::generate().unwrap();
        let worker_view = RootCa::from_pem(ca.cert_pem(), None).unwrap();
        let (_, csr) = new_key_and_csr().unwrap();
        assert!(matches!(
            worker_view.sign_node_csr(&csr, "n", Role::Worker, "c", MIN_NODE_CERT_EXPIRY),
            Err(CaError::NoKey)
        ));
        assert!(matches!(
            ca.sign_node_csr("not a csr", "n", Role::Worker, "c", MIN_NODE_CERT_EXPIRY),
            Err(CaError::Invalid(_))
        ));
        assert!(RootCa::from_pem("nope", None).is_err());
    }
}
