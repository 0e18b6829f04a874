//! The VM's servers for the lab and the end-to-end tests: an HTTP server that answers with the
//! address it was reached at (so a client sees which path carried a request), a TCP echo
//! server, both on IPv4 and IPv6, and a UDP echo server on each VM address (replies leave from
//! the address the request came to, and end with it: 4 more bytes, 16 for IPv6). They stop when their guard drops; every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// A running server; stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Status the HTTP server answers `/health` with (tests flip it to fail an http probe).
    pub health_status: Arc<AtomicU16>,
    /// Datagrams the UDP echo server received, per address index.
    pub udp_received: Arc<[AtomicU64; 2]>,
}

/// Ports the servers listen on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub echo: u16,
    pub udp: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// HTTP on `[::]:http`, TCP echo on `[::]:echo` (both families) and UDP echo on each of
/// `addrs` port `udp`, in `ns`.
pub fn start(ns: &Netns, ports: Ports, addrs: [Ipv4Addr; 2]) -> anyhow::Result<Server> {
    start_on(ns, ports, addrs.map(IpAddr::V4).to_vec())
}

/// [`start`] with UDP echo on the VM's IPv6 addresses `addrs6` too (counted with the IPv4
/// address of the same index, its path).
pub fn start_dual(
    ns: &Netns,
    ports: Ports,
    addrs: [Ipv4Addr; 2],
    addrs6: [Ipv6Addr; 2],
) -> anyhow::Result<Server> {
    let mut all = addrs.map(IpAddr::V4).to_vec();
    all.extend(addrs6.map(IpAddr::V6));
    start_on(ns, ports, all)
}

fn start_on(ns: &Netns, ports: Ports, udp_addrs: Vec<IpAddr>) -> anyhow::Result<Server> {
    let Ports {
        http: http_port,
        echo: echo_port,
        udp: udp_port,
    } = ports;
    let sockets = udp_addrs.len();
    let stop = Arc::new(AtomicBool::new(false));
    let health_status = Arc::new(AtomicU16::new(200));
    let udp_received: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let (stop, status, ready) = (stop.clone(), health_status.clone(), ready_tx.clone());
        threads.push(ns.spawn(move || {
            // Both families (IPv4 arrives mapped): `net.ipv6.bindv6only` is 0 in a new
            // namespace.
            let l = TcpListener::bind(("::", http_port))?;
            l.set_nonblocking(true)?;
            let _ = ready.send(());
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    // One thread per connection, as a real server serves them: a client that
                    // went silent (its reset lost on a lossy path) must not stall everyone
                    // else's handshakes behind a full accept queue.
                    Ok((s, _)) => {
                        let status = status.clone();
                        conns.retain(|c: &JoinHandle<()>| !c.is_finished());
                        conns.push(std::thread::spawn(move || http(s, &status)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        }));
    }
    {
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        threads.push(ns.spawn(move || {
            let l = TcpListener::bind(("::", echo_port))?;
            l.set_nonblocking(true)?;
            let _ = ready.send(());
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let stop = stop.clone();
                        conns.push(std::thread::spawn(move || echo(s, &stop)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        }));
    }
    for (i, addr) in udp_addrs.into_iter().enumerate() {
        let (stop, received, ready) = (stop.clone(), udp_received.clone(), ready_tx.clone());
        threads.push(ns.spawn(move || {
            let s = UdpSocket::bind(SocketAddr::from((addr, udp_port)))?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = ready.send(());
            // Room for a fragmented datagram (the fragment tests send 4000 bytes).
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    received[i % 2].fetch_add(1, Ordering::Relaxed);
                    // The echo, then the address it was received on: a client sees its path.
                    let mut reply = buf[..n].to_vec();
                    match addr {
                        IpAddr::V4(a) => reply.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => reply.extend_from_slice(&a.octets()),
                    }
                    let _ = s.send_to(&reply, from);
                }
            }
            Ok(())
        }));
    }
    for _ in 0..2 + sockets {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("a test server did not start"))?;
    }
    Ok(Server {
        stop,
        threads,
        health_status,
        udp_received,
    })
}

/// Answers one HTTP request with the address it was reached at (`/health` with `status`), then
/// closes: every read is bounded.
fn http(mut s: std::net::TcpStream, status: &AtomicU16) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // The whole request head, or nothing (a probe that connected and left).
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    if n == 0 {
        return;
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    // An IPv4 client's address is the IPv4 one, not its mapped form.
    let local = s
        .local_addr()
        .map(|a| a.ip().to_canonical().to_string())
        .unwrap_or_default();
    let code = if req.starts_with("GET /health") {
        status.load(Ordering::Relaxed)
    } else {
        200
    };
    let body = format!("{local}\n");
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Close gracefully: FIN first, then wait (bounded) for the client's, so nothing unread
    // turns the close into a reset.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
}

/// Echoes one TCP connection until EOF, an error, 5 s of silence, or the stop flag.
fn echo(mut s: std::net::TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    // A peer that stops reading (or a path that swallows the echo) must not hold the thread,
    // and with it the guard's drop, forever.
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; 65536];
    let mut idle = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) && idle < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                idle = Duration::ZERO;
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                idle += Duration::from_millis(100);
            }
            Err(_) => break,
        }
    }
}
