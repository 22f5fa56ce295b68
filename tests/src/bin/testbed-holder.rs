//! Test helper: creates a process-owned testbed called `argv[1]` with two
//! hosts, starts a long-running process inside node1, prints `ready`, and
//! waits to be killed. The testbed tests kill it in various ways and check
//! what is left behind.

use std::io::Write as _;

use swarm_tests::testbed::{Lifetime, Testbed};

#[expect(clippy::zombie_processes, reason = "the tests kill this process; the testbed kills the child")]
fn main() {
    let name = std::env::args().nth(1).expect("usage: testbed-holder NAME");
    let tb = Testbed::create(&name, 2, Lifetime::Process).expect("create testbed");
    let _sleeper =
        tb.host(0).command("sleep").expect("host command").arg("1000").spawn().expect("spawn sleep");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    loop {
        std::thread::park();
    }
}
