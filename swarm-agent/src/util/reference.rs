//! Docker image references (`distribution/reference`): `[domain/]path[:tag][@digest]`,
//! normalized as Docker does (`busybox` is `docker.io/library/busybox:latest`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, …
    pub domain: String,
    /// `library/busybox`
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`
    pub digest: Option<String>,
}

/// Docker's error text for a reference that does not parse.
pub const INVALID: &str = "invalid reference format";

fn component_ok(c: &str) -> bool {
    // [a-z0-9]+ separated by `.`, `_`, `__` or `-`+.
    if c.is_empty() || !c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return false;
    }
    let b = c.as_bytes();
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    !c.contains("..")
        && !c.contains("___")
        && !c.contains("._")
        && !c.contains("_.")
        && !c.contains("-.")
        && !c.contains(".-")
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn digest_ok(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

pub fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() || s.len() > 255 + 128 + 72 {
        return Err(INVALID.into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !digest_ok(d) {
                return Err(INVALID.into());
            }
            (r, Some(d.to_owned()))
        }
        None => (s, None),
    };
    // A tag follows the last `:` after the last `/`.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
        None => (rest, None),
    };
    if let Some(t) = &tag
        && !tag_ok(t)
    {
        return Err(INVALID.into());
    }
    let (domain, path) = match name.split_once('/') {
        Some((d, p))
            if d.contains('.')
                || d.contains(':')
                || d == "localhost"
                || d.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (d.to_owned(), p.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if !domain.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)) || domain.is_empty() {
        return Err(INVALID.into());
    }
    if !path.split('/').all(component_ok) {
        return Err(INVALID.into());
    }
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
    Ok(Reference { domain, path, tag, digest })
}

impl Reference {
    /// The short, familiar form with a tag: `busybox:latest`,
    /// `localhost:5000/app:1`.
    pub fn familiar(&self) -> String {
        let name = self.familiar_name();
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{name}:{t}"),
            (None, Some(d)) => format!("{name}@{d}"),
            (None, None) => format!("{name}:latest"),
        }
    }

    /// `busybox`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == "docker.io" {
            self.path.strip_prefix("library/").unwrap_or(&self.path).to_owned()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let r = parse("busybox").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", None)
        );
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(parse("docker.io/library/busybox:1.36").unwrap().familiar(), "busybox:1.36");
        let r = parse("localhost:5000/team/app:v1").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str()), ("localhost:5000", "team/app"));
        assert_eq!(r.familiar(), "localhost:5000/team/app:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse(&format!("nginx:alpine@{d}")).unwrap().digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn refuses_bad_references() {
        for bad in ["", "Bad", "a b", "busybox:", "busybox:-x", "x@sha256:12", "a//b", "-a", "a..b"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
