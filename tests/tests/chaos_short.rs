//! The fault suite's short form (the long one is `cargo xtask chaos`): a few
//! leader kills and partitions of the leader and of a follower under a
//! writer; no acknowledged write may be missing from any manager's copy.
//! Needs root.

use swarm_tests::chaos::{self, Faults};

#[test]
fn acknowledged_writes_survive_leader_kills_and_partitions() {
    let faults = Faults { kills: 3, leader_partitions: 1, follower_partitions: 1 };
    let report = chaos::run(faults, &|s| eprintln!("{s}")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert_eq!(report.cycles, 5);
    assert!(report.acknowledged > 20, "{report}");
    assert!(report.lost.is_empty(), "acknowledged writes lost: {:?}\n{report}", report.lost);
}
