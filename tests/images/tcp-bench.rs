//! A TCP benchmark server and client for the test image and the mesh
//! benchmark (static, so it runs in busybox tasks and on testbed hosts).
//!
//! - `tcp-bench serve PORT`: per connection, answers each line with `ok\n`;
//!   a connection whose first byte is `S` is a sink (read until EOF).
//! - `tcp-bench connect ADDR SECS`: new connections, one request each, for
//!   SECS seconds; prints `conns_per_sec=N`.
//! - `tcp-bench rr ADDR SECS`: requests on one kept-alive connection;
//!   prints `reqs_per_sec=N p50_us=N p99_us=N`.
//! - `tcp-bench stream ADDR SECS`: bulk data into a sink; prints `bits_per_sec=N`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn serve(port: &str) {
    let l = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut w = s;
            let mut first = [0u8; 1];
            if r.read_exact(&mut first).is_err() {
                return;
            }
            if first[0] == b'S' {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                return;
            }
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).is_err() || w.write_all(b"ok\n").is_err() {
                return;
            }
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(n) if n > 0 => {
                        if w.write_all(b"ok\n").is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
}

fn request(r: &mut BufReader<TcpStream>, w: &mut TcpStream, line: &mut String) -> std::io::Result<()> {
    w.write_all(b"r\n")?;
    line.clear();
    r.read_line(line)?;
    if line == "ok\n" { Ok(()) } else { Err(std::io::Error::other(format!("answer {line:?}"))) }
}

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

/// Closes with a reset instead of keeping TIME_WAIT: a client opening
/// thousands of connections a second would otherwise run out of ports
/// and measure the kernel's search for a free one.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct Linger {
        on: i32,
        secs: i32,
    }
    let l = Linger { on: 1, secs: 0 };
    // SAFETY: SOL_SOCKET (1) / SO_LINGER (13) with a `struct linger`.
    unsafe { setsockopt(s.as_raw_fd(), 1, 13, std::ptr::from_ref(&l).cast(), 8) };
}

fn open(addr: &str) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    let secs = Duration::from_secs_f64(arg(3).parse().unwrap_or(3.0));
    match arg(1).as_str() {
        "serve" => serve(&arg(2)),
        "connect" => {
            let (t, mut n, mut line) = (Instant::now(), 0u64, String::new());
            while t.elapsed() < secs {
                let (mut r, mut w) = open(&arg(2)).expect("connect");
                request(&mut r, &mut w, &mut line).expect("request");
                reset_on_close(&w);
                n += 1;
            }
            println!("conns_per_sec={:.0}", n as f64 / t.elapsed().as_secs_f64());
        }
        "rr" => {
            let (mut r, mut w) = open(&arg(2)).expect("connect");
            let (t, mut line, mut lat) = (Instant::now(), String::new(), Vec::new());
            while t.elapsed() < secs {
                let s = Instant::now();
                request(&mut r, &mut w, &mut line).expect("request");
                lat.push(s.elapsed().as_micros() as u64);
            }
            lat.sort_unstable();
            let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
            println!(
                "reqs_per_sec={:.0} p50_us={} p99_us={}",
                lat.len() as f64 / t.elapsed().as_secs_f64(),
                p(0.5),
                p(0.99)
            );
        }
        "stream" => {
            let mut s = TcpStream::connect(arg(2)).expect("connect");
            s.write_all(b"S").expect("write");
            let buf = vec![0x5au8; 1 << 17];
            let (t, mut bytes) = (Instant::now(), 0u64);
            while t.elapsed() < secs {
                s.write_all(&buf).expect("write");
                bytes += buf.len() as u64;
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            println!("bits_per_sec={:.0}", bytes as f64 * 8.0 / t.elapsed().as_secs_f64());
        }
        _ => {
            eprintln!("usage: tcp-bench serve PORT | connect|rr|stream ADDR SECS");
            std::process::exit(2);
        }
    }
}
