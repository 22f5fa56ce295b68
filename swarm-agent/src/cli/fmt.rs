//! Small formatting helpers that reproduce docker CLI output.

use std::cmp::Ordering;

/// docker's `command.PrettyPrint` for strings: first letter upper case, the
/// rest lower case.
pub fn pretty(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        None => String::new(),
        Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
    }
}

/// Natural order (`sortorder.NaturalLess`): digit runs compare as numbers.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da]).unwrap_or("0").trim_start_matches('0');
                let nb = std::str::from_utf8(&b[..db]).unwrap_or("0").trim_start_matches('0');
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// go-units `BytesSize`: binary units with up to 4 significant digits ("23.43GiB").
pub fn bytes_size(n: f64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{}{}", format_g4(v), UNITS[i])
}

/// Go's `%.4g`.
fn format_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (v.abs().log10().floor() as i32) + 1;
    let decimals = (4 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

/// go-units `HumanDuration` ("3 months", "5 seconds", "About a minute").
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    let s = secs as u64;
    if secs < 1.0 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let mins = (secs / 60.0).round() as u64;
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (secs / 3600.0).round() as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

/// Go's `json.Indent(dst, src, "", "    ")`, as docker's `inspect` prints the
/// daemon's JSON: keeps the key order of `raw`, one value per line, empty
/// objects and arrays as `{}` and `[]`. `raw` must be valid JSON.
pub fn indent_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // An opening bracket whose newline is held back until we see whether
    // the container is empty.
    let mut pending_open = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("    ");
        }
    };
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            continue;
        }
        if pending_open {
            pending_open = false;
            if c != '}' && c != ']' {
                depth += 1;
                newline(&mut out, depth);
            } else {
                out.push(c);
                continue;
            }
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                pending_open = true;
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

/// An RFC 3339 time (as the API gives them) in Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_print_like_docker() {
        assert_eq!(pretty("ready"), "Ready");
        assert_eq!(pretty("REACHABLE"), "Reachable");
        assert_eq!(pretty(""), "");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["node10", "node2", "node1", "alpha"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["alpha", "node1", "node2", "node10"]);
    }

    #[test]
    fn units_like_go_units() {
        assert_eq!(bytes_size(25_155_067_904.0), "23.43GiB");
        assert_eq!(bytes_size(1024.0), "1KiB");
        assert_eq!(bytes_size(512.0), "512B");
        assert_eq!(human_duration(std::time::Duration::from_secs(2160 * 3600)), "3 months");
        assert_eq!(human_duration(std::time::Duration::from_secs(5)), "5 seconds");
    }

    #[test]
    fn indent_json_matches_go_json_indent() {
        let raw = r#"{"Name":"n","Empty":{},"List":[],"IPAM":{"Config":[{"Subnet":"10.0.1.0/24"}]},"S":"a,b:{\"c\"} d","N":null}"#;
        let want = r#"{
    "Name": "n",
    "Empty": {},
    "List": [],
    "IPAM": {
        "Config": [
            {
                "Subnet": "10.0.1.0/24"
            }
        ]
    },
    "S": "a,b:{\"c\"} d",
    "N": null
}"#;
        assert_eq!(super::indent_json(raw), want);
    }
}
