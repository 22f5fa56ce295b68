//! Tables as the docker CLI prints them: Go's text/tabwriter with minwidth 10,
//! tabwidth 1, padding 3, padded with spaces.

use std::io::Write as _;

use tabwriter::TabWriter;

/// Renders a header and rows. Every cell but the last of a line is padded to
/// its column's width plus 3 (at least 10 in all), like docker's tables.
pub fn render<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    // tabwriter's minwidth excludes the padding; Go's includes it: 7 + 3 = 10.
    let mut tw = TabWriter::new(Vec::new()).minwidth(7).padding(3);
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let joined: Vec<&str> = cells.collect();
        // Writing into a Vec cannot fail.
        let _ = writeln!(tw, "{}", joined.join("\t"));
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(AsRef::as_ref));
    }
    let bytes = tw.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn matches_docker_service_ls_header() {
        // `docker service ls` on an empty swarm, byte for byte.
        let out = render::<&str>(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &[]);
        assert_eq!(out, "ID        NAME      MODE      REPLICAS   IMAGE     PORTS\n");
    }

    #[test]
    fn columns_widen_to_the_longest_cell_plus_three() {
        let out = render(&["A", "B"], &[vec!["a-very-long-cell", "x"]]);
        assert_eq!(out, "A                  B\na-very-long-cell   x\n");
    }
}
