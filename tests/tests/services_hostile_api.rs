//! Malformed service specs sent straight to the Engine API: wrong types,
//! missing fields, huge replica counts, an empty image, junk bodies. Each
//! gets a clear 4xx error and changes nothing; the daemon keeps serving.
//! Needs root.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
};

use swarm_tests::swarm::cluster;

fn post(sock: &std::path::Path, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn malformed_service_specs_are_refused_and_change_nothing() {
    let tb = cluster(1, 1, &[], &[]);
    let sock = tb.host(0).state_dir().join("docker.sock");
    let image = r#""TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}"#;
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "invalid JSON"),
        ("[1,2]".into(), "invalid JSON"),
        (r#"{"Name":7}"#.into(), "invalid JSON"),
        (format!(r#"{{"Name":"a","Mode":{{"Replicated":{{"Replicas":"two"}}}},{image}}}"#), "invalid JSON"),
        (r#"{"Name":"a"}"#.into(), "TaskSpec"),
        (r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":""}}}"#.into(), "image reference must be provided"),
        (r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"Bad Ref"}}}"#.into(), "is not a valid repository/tag"),
        (format!(r#"{{"Name":"a","Mode":{{"Replicated":{{"Replicas":1000000000}}}},{image}}}"#), "at most 10000"),
        (format!(r#"{{"Name":"a","Mode":{{"Replicated":{{"Replicas":-3}}}},{image}}}"#), "must not be negative"),
        (format!(r#"{{"Name":"bad name!",{image}}}"#), "name must be valid as a DNS name component"),
        (format!(r#"{{"Name":"a","Mode":{{"Global":{{}},"Replicated":{{"Replicas":1}}}},{image}}}"#), "only one mode"),
        (
            r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"busybox"},"Placement":{"Constraints":["nope"]}}}"#.into(),
            "constraint expected one operator from ==, !=",
        ),
        (
            r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"busybox"},"Resources":{"Limits":{"MemoryBytes":10}}}}"#.into(),
            "Must be at least 4MiB",
        ),
        (
            r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"busybox"},"Networks":[{"Target":"nosuch"}]}}"#.into(),
            "network nosuch not found",
        ),
        (format!(r#"{{"Name":"a",{image},"EndpointSpec":{{"Mode":"weird"}}}}"#), "invalid JSON"),
        (format!(r#"{{"Name":"a",{image},"EndpointSpec":{{"Ports":[{{"TargetPort":0}}]}}}}"#), "invalid target port 0"),
        (
            format!(r#"{{"Name":"a",{image},"EndpointSpec":{{"Ports":[{{"TargetPort":80,"PublishedPort":70000}}]}}}}"#),
            "invalid published port 70000",
        ),
        (
            format!(r#"{{"Name":"a",{image},"EndpointSpec":{{"Ports":[{{"TargetPort":80,"Protocol":"icmp"}}]}}}}"#),
            "invalid JSON",
        ),
        (
            format!(r#"{{"Name":"a",{image},"UpdateConfig":{{"FailureAction":"explode"}}}}"#),
            "unrecognized update failure action explode",
        ),
        (format!(r#"{{"Name":"a",{image},"RollbackConfig":{{"Order":"sideways"}}}}"#), "unrecognized rollback order sideways"),
        (
            format!(r#"{{"Name":"a",{image},"UpdateConfig":{{"MaxFailureRatio":2}}}}"#),
            "update-maxfailureratio cannot be less than 0 or bigger than 1",
        ),
        (format!(r#"{{"Name":"a",{image},"UpdateConfig":{{"Parallelism":-1}}}}"#), "update-parallelism cannot be negative"),
    ];
    for (body, want) in &cases {
        let (status, out) = post(&sock, "/v1.41/services/create", body.as_bytes());
        assert!((400..500).contains(&status), "{body}: {status} {out}");
        assert!(out.contains(want), "{body}: wanted {want:?}, got {out}");
    }
    // Secrets and configs, and services referring to them.
    let blob_cases: &[(&str, &str, &str)] = &[
        ("/v1.41/secrets/create", "{", "invalid JSON"),
        ("/v1.41/secrets/create", r#"{"Name":5}"#, "Name must be a string"),
        ("/v1.41/secrets/create", r#"{"Name":"a","Labels":{"x":1}}"#, "Labels must map strings to strings"),
        ("/v1.41/secrets/create", r#"{"Name":"a","Data":"!!not base64"}"#, "not valid base64"),
        ("/v1.41/secrets/create", r#"{"Name":"a"}"#, "secret data must be larger than 0"),
        ("/v1.41/secrets/create", r#"{"Name":"a b","Data":"eA=="}"#, "invalid name"),
        ("/v1.41/configs/create", r#"{"Name":"","Data":"eA=="}"#, "name must be provided"),
        ("/v1.41/secrets/nosuch/update?version=1", r#"{"Name":"nosuch"}"#, "secret nosuch not found"),
        ("/v1.41/secrets/nosuch/update?version=x", r#"{"Name":"nosuch"}"#, "invalid secret version"),
    ];
    for (path, body, want) in blob_cases {
        let (status, out) = post(&sock, path, body.as_bytes());
        assert!((400..500).contains(&status), "{path} {body}: {status} {out}");
        assert!(out.contains(want), "{path} {body}: wanted {want:?}, got {out}");
    }
    for (refs, want) in [
        (r#""Secrets":[{"SecretID":"x","SecretName":"pw","File":{"Name":"pw"}}]"#, "secret not found: pw"),
        (r#""Secrets":[{"SecretName":"pw","File":{"Name":"pw"}}]"#, "malformed secret reference"),
        (
            r#""Configs":[{"ConfigID":"x","ConfigName":"c"}]"#,
            "malformed config reference, no target provided",
        ),
    ] {
        let body =
            format!(r#"{{"Name":"a","TaskTemplate":{{"ContainerSpec":{{"Image":"busybox",{refs}}}}}}}"#);
        let (status, out) = post(&sock, "/v1.41/services/create", body.as_bytes());
        assert!((400..500).contains(&status), "{body}: {status} {out}");
        assert!(out.contains(want), "{body}: wanted {want:?}, got {out}");
    }
    let (status, out) = post(&sock, "/v1.41/services/nosuch/update?version=1", br#"{"Name":"nosuch"}"#);
    assert_eq!(status, 404, "{out}");
    // Nothing was created, and the daemon still serves.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /v1.41/services HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("[]"), "{out}");
}
