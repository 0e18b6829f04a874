//! ICMP echo probes: one raw socket and one receive task for the whole prober, and one more per
//! family: ICMP echo to IPv4 paths, ICMPv6 echo (RFC 4443 §4) to IPv6 ones.
//!
//! The families differ in what a raw socket hands over. An IPv4 raw socket delivers the whole
//! datagram, IP header included, and the echo's checksum is ours to write and to check. An
//! ICMPv6 raw socket (`IPPROTO_ICMPV6`) delivers the ICMPv6 message alone, the sender in the
//! address `recvmsg` fills; the kernel computes the checksum of what it sends (it covers a
//! pseudo-header of both addresses, RFC 4443 §2.3, and the source is the kernel's choice) and
//! drops what arrives with a bad one before the socket sees it (RFC 3542 §3.1).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::csum;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::oneshot,
    task::AbortHandle,
};

use crate::{
    probe::lock,
    probe::{setsockopt, setsockopt_u32},
};

pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;
pub(crate) const ICMP6_ECHO_REQUEST: u8 = 128;
pub(crate) const ICMP6_ECHO_REPLY: u8 = 129;
/// linux/icmp.h: a `u32` at level `SOL_RAW` with a bit set for every ICMP type to drop.
const ICMP_FILTER: libc::c_int = 1;
/// linux/icmpv6.h `ICMPV6_FILTER`: a `struct icmp6_filter` (eight `u32`) at level
/// `IPPROTO_ICMPV6` with a bit set for every ICMPv6 type to drop.
const ICMP6_FILTER: libc::c_int = 1;
/// The echo header (8) and payload: the token (8) and a send timestamp (8, ns since the epoch,
/// for whoever reads a capture; the RTT is measured with the monotonic clock).
pub(crate) const ECHO_LEN: usize = 24;
/// Receive buffer: the largest IPv4 header (60) and our echo reply fit many times over; longer
/// packets are truncated, and so cannot pass the checksum, and are not ours anyway.
const RECV_BUF: usize = 512;
/// How many probe numbers [`Waiters::register`] tries when sequence numbers are taken.
const REGISTER_TRIES: usize = 16;

/// The family of an echo probe: ICMP over IPv4, or ICMPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// The family that probes `address`.
    pub(crate) fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The echo reply in `packet`, as this family's raw socket delivers it (`from`: the sender
    /// `recvmsg` named).
    pub(crate) fn parse(self, packet: &[u8], from: Option<IpAddr>) -> Option<EchoReply> {
        match (self, from) {
            (Family::V4, _) => EchoReply::parse(packet),
            (Family::V6, Some(IpAddr::V6(from))) => EchoReply::parse6(packet, from),
            (Family::V6, _) => None,
        }
    }

    /// An echo request of this family.
    pub(crate) fn request(self, ident: u16, seq: u16, token: u64, stamp: u64) -> [u8; ECHO_LEN] {
        match self {
            Family::V4 => echo_request(ident, seq, token, stamp),
            Family::V6 => echo_request6(ident, seq, token, stamp),
        }
    }
}

/// A raw ICMP socket, the probes waiting for replies on it, and the task receiving them.
pub(crate) struct IcmpChannel {
    pub(super) family: Family,
    pub(super) socket: Arc<AsyncFd<Socket>>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) receiver: AbortHandle,
}

impl Drop for IcmpChannel {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// A socket other than the prober's shared IPv4 one: of another family, bound to a source
/// address or an interface.
pub(crate) struct BoundChannel {
    pub(super) family: Family,
    pub(super) source: Option<IpAddr>,
    pub(super) interface: Option<String>,
    pub(super) channel: Arc<IcmpChannel>,
}

/// The `struct icmp6_filter` that lets only ICMPv6 type `pass` through (a set bit blocks its
/// type: linux/icmpv6.h `ICMPV6_FILTER_WILLBLOCK`).
pub(crate) fn icmp6_filter(pass: u8) -> [u32; 8] {
    let mut filter = [u32::MAX; 8];
    if let Some(word) = filter.get_mut(usize::from(pass >> 5)) {
        *word &= !(1 << (pass & 31));
    }
    filter
}

impl IcmpChannel {
    pub(super) fn open(
        ident: u16,
        family: Family,
        source: Option<IpAddr>,
        interface: Option<&str>,
    ) -> io::Result<Self> {
        let socket = match family {
            Family::V4 => {
                let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
                // Every ICMP packet reaching the host is copied to every raw ICMP socket: keep
                // only echo replies, in the kernel (the parser checks the type again).
                setsockopt_u32(&socket, libc::SOL_RAW, ICMP_FILTER, !(1 << ICMP_ECHO_REPLY))
                    .map_err(|e| io::Error::new(e.kind(), format!("set ICMP_FILTER: {e}")))?;
                socket
            }
            Family::V6 => {
                let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
                // The same for ICMPv6, which also carries neighbour discovery: echo replies
                // only.
                setsockopt(
                    &socket,
                    libc::IPPROTO_ICMPV6,
                    ICMP6_FILTER,
                    &icmp6_filter(ICMP6_ECHO_REPLY),
                )
                .map_err(|e| io::Error::new(e.kind(), format!("set ICMP6_FILTER: {e}")))?;
                socket
            }
        };
        socket.set_nonblocking(true)?;
        // Each reply with the time the kernel received it.
        setsockopt_u32(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .map_err(|e| io::Error::new(e.kind(), format!("set SO_TIMESTAMPNS: {e}")))?;
        if let Some(interface) = interface {
            socket
                .bind_device(Some(interface.as_bytes()))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("bind to interface {interface}: {e}"))
                })?;
        }
        if let Some(source) = source {
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind to source {source}: {e}")))?;
        }
        // SAFETY: `Socket` owns its descriptor (an `OwnedFd`), which stays open, and is the one
        // `as_raw_fd` returns, until the `AsyncFd` that now owns the `Socket` is dropped.
        let socket = Arc::new(unsafe { AsyncFd::register(socket) }?);
        let waiters = Arc::new(Waiters::default());
        let receiver = tokio::spawn(receive(
            Arc::clone(&socket),
            Arc::clone(&waiters),
            ident,
            family,
        ))
        .abort_handle();
        Ok(Self {
            family,
            socket,
            waiters,
            receiver,
        })
    }
}

impl IcmpChannel {
    /// Hands every reply waiting in the socket to its probe, now, without waiting for more.
    pub(super) fn drain(&self, ident: u16) {
        let mut buf = [0u8; RECV_BUF];
        while let Ok((n, at, from)) = recv_stamped(self.socket.get_ref(), &mut buf) {
            let reply = self.family.parse(buf.get(..n).unwrap_or_default(), from);
            self.waiters.deliver(ident, reply.as_ref(), at);
        }
    }
}

/// Receives one datagram without waiting: its length, when the kernel received it (from
/// `SO_TIMESTAMPNS`, as an [`Instant`]; now, when the kernel gave no time), and its sender.
fn recv_stamped(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, Instant, Option<IpAddr>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one `SCM_TIMESTAMPNS` (a timespec) and its header, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: `sockaddr_storage` is plain old data; all zeros is a valid (empty) value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `msghdr` is plain old data; all zeros is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points to a live iovec over `buf`, to `control` and to `name`, with their
    // sizes; the kernel writes within them.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = sender(&name, msg.msg_namelen);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut at = now;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; a timestamp's data is a `timespec`, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let kernel = UNIX_EPOCH
                    + Duration::new(
                        ts.tv_sec.max(0) as u64,
                        ts.tv_nsec.clamp(0, 999_999_999) as u32,
                    );
                // Its age on the wall clock, taken off the monotonic one.
                let age = wall.duration_since(kernel).unwrap_or_default();
                at = now.checked_sub(age).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, at, from))
}

/// The address in `name` (`len` bytes of it filled by the kernel), if it is an IPv4 or IPv6
/// one.
fn sender(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a `sockaddr_in` (its family says so, its length is
            // enough); `sockaddr_storage` is large and aligned enough for any address.
            let sin = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(
                sin.sin_addr.s_addr.to_ne_bytes(),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a `sockaddr_in6`.
            let sin6 = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The receive task of one ICMP socket: hands each matching echo reply to its probe.
async fn receive(socket: Arc<AsyncFd<Socket>>, waiters: Arc<Waiters>, ident: u16, family: Family) {
    let mut buf = [0u8; RECV_BUF];
    loop {
        let received = socket
            .async_io(Interest::READABLE, |s: &Socket| recv_stamped(s, &mut buf))
            .await;
        match received {
            Ok((n, at, from)) => {
                let reply = family.parse(buf.get(..n).unwrap_or_default(), from);
                waiters.deliver(ident, reply.as_ref(), at);
            }
            Err(e) => {
                // Nothing expected here (raw sockets report no ICMP errors unless asked); pause
                // so a persistent error cannot spin, and keep serving.
                log::warn!("icmp probe socket: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A probe waiting for its echo reply, keyed by sequence number.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) address: IpAddr,
    pub(super) token: u64,
    pub(super) reply: oneshot::Sender<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    pub(super) map: Mutex<HashMap<u16, Waiter>>,
}

/// A waiter's place in [`Waiters`]; dropping it (the probe is done or timed out) removes the
/// waiter if it is still there, so a late reply finds nothing and nothing leaks.
#[derive(Debug)]
pub(crate) struct Registration<'w> {
    pub(super) waiters: &'w Waiters,
    pub(super) seq: u16,
    pub(super) token: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.waiters.map);
        if map.get(&self.seq).is_some_and(|w| w.token == self.token) {
            map.remove(&self.seq);
        }
    }
}

impl Waiters {
    /// Takes the next free probe number from `counter`; `None` when all the sequence numbers
    /// tried are in use (thousands of probes in flight on one socket).
    pub(super) fn register(
        &self,
        counter: &AtomicU64,
        nonce: u64,
        address: IpAddr,
    ) -> Option<(Registration<'_>, oneshot::Receiver<Instant>)> {
        let mut map = lock(&self.map);
        for _ in 0..REGISTER_TRIES {
            let number = counter.fetch_add(1, Ordering::Relaxed);
            let seq = number as u16;
            if map.contains_key(&seq) {
                continue;
            }
            let token = nonce.wrapping_add(number);
            let (reply, received) = oneshot::channel();
            map.insert(
                seq,
                Waiter {
                    address,
                    token,
                    reply,
                },
            );
            let registration = Registration {
                waiters: self,
                seq,
                token,
            };
            return Some((registration, received));
        }
        None
    }

    /// Hands `reply` (what [`Family::parse`] made of a packet from the raw socket) to the
    /// probe waiting for it; returns whether one was. Anything else is ignored.
    pub(super) fn deliver(&self, ident: u16, reply: Option<&EchoReply>, at: Instant) -> bool {
        let Some(reply) = reply else {
            return false;
        };
        if reply.ident != ident {
            return false;
        }
        let mut map = lock(&self.map);
        let ours = map
            .get(&reply.seq)
            .is_some_and(|w| w.address == reply.source && Some(w.token) == reply.token);
        if !ours {
            return false;
        }
        match map.remove(&reply.seq) {
            // A failed send means the probe timed out just now: nothing left to do.
            Some(waiter) => waiter.reply.send(at).is_ok(),
            None => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// An echo request with its checksum.
pub(crate) fn echo_request(ident: u16, seq: u16, token: u64, stamp: u64) -> [u8; ECHO_LEN] {
    let mut message = echo(ICMP_ECHO_REQUEST, ident, seq, token, stamp);
    let [c0, c1] = csum::checksum(0, &message);
    let [_, _, check0, check1, ..] = &mut message;
    *check0 = c0;
    *check1 = c1;
    message
}

/// An ICMPv6 echo request; its checksum is left 0, for the kernel fills it in on a raw
/// ICMPv6 socket (it covers the source address the kernel picks).
pub(crate) fn echo_request6(ident: u16, seq: u16, token: u64, stamp: u64) -> [u8; ECHO_LEN] {
    echo(ICMP6_ECHO_REQUEST, ident, seq, token, stamp)
}

/// An echo message of type `kind` (the layout is the same in ICMP and ICMPv6), checksum 0.
fn echo(kind: u8, ident: u16, seq: u16, token: u64, stamp: u64) -> [u8; ECHO_LEN] {
    let mut message = [0u8; ECHO_LEN];
    let (header, payload) = message.split_at_mut(8);
    let [i0, i1] = ident.to_be_bytes();
    let [s0, s1] = seq.to_be_bytes();
    header.copy_from_slice(&[kind, 0, 0, 0, i0, i1, s0, s1]);
    let (token_bytes, stamp_bytes) = payload.split_at_mut(8);
    token_bytes.copy_from_slice(&token.to_be_bytes());
    stamp_bytes.copy_from_slice(&stamp.to_be_bytes());
    message
}

/// The fields of an echo reply that matter for matching it to a probe (public for the fuzz
/// targets).
#[derive(Debug, PartialEq, Eq)]
pub struct EchoReply {
    pub source: IpAddr,
    pub ident: u16,
    pub seq: u16,
    /// The first 8 payload bytes, if there are as many.
    pub token: Option<u64>,
}

impl EchoReply {
    /// Parses an IPv4 datagram as received on a raw socket: `None` unless it is an echo reply
    /// with a valid checksum.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let [version_ihl, ..] = packet else {
            return None;
        };
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < 20 {
            return None;
        }
        let header = packet.get(..header_len)?;
        let [.., protocol, _, _, a, b, c, d] = header.get(..16)? else {
            return None;
        };
        if *protocol != 1 {
            return None;
        }
        let icmp = packet.get(header_len..)?;
        let [kind, code, _, _, i0, i1, s0, s1, payload @ ..] = icmp else {
            return None;
        };
        if *kind != ICMP_ECHO_REPLY || *code != 0 || csum::checksum(0, icmp) != [0, 0] {
            return None;
        }
        let token = payload
            .get(..8)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        Some(Self {
            source: IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)),
            ident: u16::from_be_bytes([*i0, *i1]),
            seq: u16::from_be_bytes([*s0, *s1]),
            token,
        })
    }

    /// Parses an ICMPv6 message from `source` as received on a raw ICMPv6 socket (no IP
    /// header): `None` unless it is an echo reply. Its checksum is not checked here: it covers
    /// a pseudo-header with our own address, and the kernel has checked it already.
    pub fn parse6(message: &[u8], source: Ipv6Addr) -> Option<Self> {
        let [kind, code, _, _, i0, i1, s0, s1, payload @ ..] = message else {
            return None;
        };
        if *kind != ICMP6_ECHO_REPLY || *code != 0 {
            return None;
        }
        let token = payload
            .get(..8)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        Some(Self {
            source: IpAddr::V6(source),
            ident: u16::from_be_bytes([*i0, *i1]),
            seq: u16::from_be_bytes([*s0, *s1]),
            token,
        })
    }
}
