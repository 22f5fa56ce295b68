//! A UDP responder and client for the test image (busybox has neither):
//! `udp-who PORT` answers every datagram on `0.0.0.0:PORT` with
//! `<hostname> <sender address>\n`; `udp-who IP:PORT` sends one datagram
//! there and prints the answer (exit 1 after 2 s without one). Built
//! statically by `swarm_tests::image` with plain rustc.

use std::{net::UdpSocket, time::Duration};

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "5000".to_owned());
    if arg.contains(':') {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        sock.send_to(b"who\n", &arg).expect("send");
        let mut buf = [0u8; 2048];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => print!("{}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => {
                eprintln!("no answer from {arg}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    let sock = UdpSocket::bind(format!("0.0.0.0:{arg}")).expect("bind");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(format!("{hostname} {}\n", from.ip()).as_bytes(), from);
        }
    }
}
