//! The fault suite's short form (the long one is `cargo xtask chaos`): a few
//! leader kills (with a worker's agent), partitions of the leader and of a
//! follower, a follower 5 MiB behind and a worker promoted, under a writer,
//! a service writer (create, scale, remove), a worker-to-worker ping and
//! hostile bytes; no acknowledged write or service change may be missing
//! from any manager's copy, and no ping may be lost.
//! Needs root.

use swarm_tests::chaos::{self, Faults};

#[test]
fn acknowledged_writes_survive_leader_kills_and_partitions() {
    let faults = Faults { kills: 3, leader_partitions: 1, follower_partitions: 1, behind_mib: 5 };
    let report = chaos::run(faults, &|s| eprintln!("{s}")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert_eq!(report.cycles, 6);
    assert!(report.acknowledged > 20, "{report}");
    assert!(report.lost.is_empty(), "acknowledged writes lost: {:?}\n{report}", report.lost);
    assert_eq!(report.misreported, 0, "writes said to be refused were applied\n{report}");
    assert!(report.service_changes > 10, "{report}");
    assert!(
        report.services_lost.is_empty(),
        "acknowledged service changes lost: {:?}\n{report}",
        report.services_lost
    );
    assert!(report.pings.0 > 100, "{report}");
    assert_eq!(report.pings.0, report.pings.1, "pings lost between the workers\n{report}");
    assert!(report.hostile > 0 && report.catch_up.is_some() && report.promotion.is_some(), "{report}");
}
