//! What a network device says it can do with XDP: its `xdp-features`, from the kernel's `netdev`
//! generic netlink family (Linux 6.3 and later). lb asks one question of them: may frames be
//! `XDP_REDIRECT`ed into this device? A driver without `ndo_xdp_xmit` (bond, VLAN, bridge)
//! drops every redirected frame after the program has returned, and so does a veth whose peer
//! runs no XDP program and has GRO off; since Linux 6.4 a veth reports `NETDEV_XDP_ACT_NDO_XMIT`
//! exactly when its peer can take them. Nothing in an XDP program can see those drops, so the
//! control plane keeps such devices out of the redirect map (see `dataplane`).
//!
//! A small hand-written request: two messages (resolve the family, get the device), each a
//! netlink header, a generic netlink header and one attribute.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `enum netdev_xdp_act` (uapi/linux/netdev.h).
pub mod act {
    pub const BASIC: u64 = 1 << 0;
    pub const REDIRECT: u64 = 1 << 1;
    pub const NDO_XMIT: u64 = 1 << 2;
}

/// A device's XDP feature bits (`act::*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpFeatures(pub u64);

impl XdpFeatures {
    /// Frames may be redirected into the device (`NDO_XMIT`).
    pub fn receives_redirects(self) -> bool {
        self.0 & act::NDO_XMIT != 0
    }
}

const NLMSG_HDR_LEN: usize = 16;
const GENL_HDR_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `struct rtmsg` (uapi/linux/rtnetlink.h).
const RTMSG_LEN: usize = 12;

/// The XDP features of device `ifindex` (in this thread's network namespace); `Ok(None)` on a
/// kernel without the `netdev` family (before 6.3), where nothing can be said.
pub fn xdp_features(ifindex: u32) -> io::Result<Option<XdpFeatures>> {
    let sock = Socket::open()?;
    let Some(family) = sock.family_id("netdev")? else {
        return Ok(None);
    };
    let reply = sock.request(
        family,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    let features = attr(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| v.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or_else(|| io::Error::other("netdev dev-get: no xdp-features in the answer"))?;
    Ok(Some(XdpFeatures(features)))
}

/// Whether IPv4 forwarding is on for `iface` (`net.ipv4.conf.<iface>.forwarding`, in this
/// process's network namespace); `None` when it cannot be read.
pub fn ipv4_forwarding(iface: &str) -> Option<bool> {
    forwarding(&format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

/// Whether IPv6 forwarding is on for `iface` (`net.ipv6.conf.<iface>.forwarding`, what the
/// datapath's `bpf_fib_lookup` checks for the interface a packet came in on; setting
/// `net.ipv6.conf.all.forwarding` sets it on every interface); `None` when it cannot be read
/// (IPv6 disabled on the host or the interface).
pub fn ipv6_forwarding(iface: &str) -> Option<bool> {
    forwarding(&format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
}

fn forwarding(path: &str) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
}

/// The name of the driver behind `iface` (`veth`, `virtio_net`, ...), from `ETHTOOL_GDRVINFO`
/// in this thread's network namespace (sysfs may show another namespace's devices).
pub fn driver(iface: &str) -> io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo` (uapi/linux/ethtool.h): 196 bytes.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the request and writes `info`, both valid and ours for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        Socket::open_protocol(libc::NETLINK_GENERIC)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The id of generic netlink family `name`; `None` when the kernel has no such family.
    fn family_id(&self, name: &str) -> io::Result<Option<u16>> {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        match self.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            &value,
        ) {
            Ok(reply) => attr(&reply, CTRL_ATTR_FAMILY_ID)
                .and_then(|v| v.try_into().ok())
                .map(|v| Some(u16::from_ne_bytes(v)))
                .ok_or_else(|| io::Error::other("genl getfamily: no family id in the answer")),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request with one attribute; returns the attributes of the answer.
    fn request(&self, family: u16, cmd: u8, attr_type: u16, value: &[u8]) -> io::Result<Vec<u8>> {
        let attr_len = 4 + value.len();
        let len = NLMSG_HDR_LEN + GENL_HDR_LEN + align4(attr_len);
        let mut msg = Vec::with_capacity(len);
        request_header(&mut msg, len, family);
        msg.extend([cmd, 1, 0, 0]); // genlmsghdr: cmd, version, reserved
        msg.extend((attr_len as u16).to_ne_bytes());
        msg.extend(attr_type.to_ne_bytes());
        msg.extend(value);
        msg.resize(len, 0);
        let reply = self.exchange(&msg)?;
        reply
            .get(NLMSG_HDR_LEN + GENL_HDR_LEN..)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::other("netlink: short answer"))
    }

    /// Sends one message, returns the first message of the answer (its netlink header
    /// included); an error answer is the error.
    fn exchange(&self, msg: &[u8]) -> io::Result<Vec<u8>> {
        // SAFETY: `msg` is valid for `msg.len()` bytes for the call.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(got as usize);
        let short = || io::Error::other("netlink: short answer");
        let header = buf.get(..NLMSG_HDR_LEN).ok_or_else(short)?;
        let msg_type = u16::from_ne_bytes([header[4], header[5]]);
        if msg_type == NLMSG_ERROR {
            let code = buf
                .get(NLMSG_HDR_LEN..NLMSG_HDR_LEN + 4)
                .ok_or_else(short)?;
            let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
            return Err(io::Error::from_raw_os_error(errno));
        }
        let msg_len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        buf.truncate(msg_len.min(buf.len()));
        Ok(buf)
    }
}

/// The interface the kernel routes `addr` through (`ip route get`, `ip -6 route get`:
/// RTM_GETROUTE, its `RTA_OIF`), in this thread's network namespace; `Ok(None)` when there is
/// no route.
pub fn route_oif(addr: std::net::IpAddr) -> io::Result<Option<u32>> {
    const RTA_OIF: u16 = 4;
    let msg = route_get(addr);
    let sock = Socket::open_protocol(libc::NETLINK_ROUTE)?;
    let reply = match sock.exchange(&msg) {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let attrs = reply
        .get(NLMSG_HDR_LEN + RTMSG_LEN..)
        .ok_or_else(|| io::Error::other("rtnetlink: short answer"))?;
    Ok(attr(attrs, RTA_OIF)
        .and_then(|v| v.try_into().ok())
        .map(u32::from_ne_bytes))
}

/// The RTM_GETROUTE request for `addr`: an `rtmsg` of its family with a host prefix, and one
/// `RTA_DST` attribute holding the address.
fn route_get(addr: std::net::IpAddr) -> Vec<u8> {
    const RTM_GETROUTE: u16 = 26;
    const RTA_DST: u16 = 1;
    let (family, prefix, octets) = match addr {
        std::net::IpAddr::V4(a) => (libc::AF_INET, 32, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (libc::AF_INET6, 128, a.octets().to_vec()),
    };
    let attr_len = 4 + octets.len();
    let len = NLMSG_HDR_LEN + RTMSG_LEN + align4(attr_len);
    let mut msg = Vec::with_capacity(len);
    request_header(&mut msg, len, RTM_GETROUTE);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags.
    msg.extend([family as u8, prefix, 0, 0, 0, 0, 0, 0]);
    msg.extend(0u32.to_ne_bytes());
    msg.extend((attr_len as u16).to_ne_bytes());
    msg.extend(RTA_DST.to_ne_bytes());
    msg.extend(octets);
    msg.resize(len, 0);
    msg
}

/// A request's netlink header: total length `len`, message type `ty`.
fn request_header(msg: &mut Vec<u8>, len: usize, ty: u16) {
    msg.extend((len as u32).to_ne_bytes());
    msg.extend(ty.to_ne_bytes());
    msg.extend(NLM_F_REQUEST.to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // sequence number
    msg.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// The value of the first attribute of type `wanted` in a run of netlink attributes.
fn attr(mut attrs: &[u8], wanted: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        // The top bits of the type are flags (nested, byte order).
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == wanted {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(align4(len)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_address_is_routed_through_lo() {
        let lo = crate::ifindex("lo").expect("every namespace has lo");
        assert_eq!(
            route_oif(std::net::Ipv4Addr::LOCALHOST.into()).expect("rtnetlink answers"),
            Some(lo)
        );
    }

    #[test]
    fn the_ipv6_loopback_address_is_routed_through_lo() {
        // A host (or namespace) without IPv6 on lo has no IPv6 route to ask about.
        let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6");
        if disabled.as_deref().map(str::trim).ok() != Some("0") {
            lb_testkit::ci::skip(
                lb_testkit::ci::Skip::Test {
                    name: "netdev::tests::the_ipv6_loopback_address_is_routed_through_lo".into(),
                },
                "IPv6 is disabled on lo",
            );
            return;
        }
        let lo = crate::ifindex("lo").expect("every namespace has lo");
        assert_eq!(
            route_oif(std::net::Ipv6Addr::LOCALHOST.into()).expect("rtnetlink answers"),
            Some(lo)
        );
    }

    #[test]
    fn route_requests_carry_the_address_of_its_family() {
        let v4 = route_get("192.0.2.70".parse().expect("an address"));
        assert_eq!(v4.len(), NLMSG_HDR_LEN + RTMSG_LEN + 8);
        assert_eq!(
            v4[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 2],
            [libc::AF_INET as u8, 32]
        );
        assert_eq!(
            attr(&v4[NLMSG_HDR_LEN + RTMSG_LEN..], 1),
            Some(&[192, 0, 2, 70][..])
        );
        let v6 = route_get("2001:db8::70".parse().expect("an address"));
        assert_eq!(v6.len(), NLMSG_HDR_LEN + RTMSG_LEN + 20);
        assert_eq!(
            u32::from_ne_bytes(v6[..4].try_into().expect("4 bytes")) as usize,
            v6.len()
        );
        assert_eq!(
            v6[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 2],
            [libc::AF_INET6 as u8, 128]
        );
        let dst: std::net::Ipv6Addr = "2001:db8::70".parse().expect("an address");
        assert_eq!(
            attr(&v6[NLMSG_HDR_LEN + RTMSG_LEN..], 1),
            Some(&dst.octets()[..])
        );
    }

    #[test]
    fn attributes_are_found_past_padding_and_flags() {
        let mut attrs = Vec::new();
        // A 5-byte value (padded to 8), then a u64 with the nested flag set.
        attrs.extend(9u16.to_ne_bytes());
        attrs.extend(2u16.to_ne_bytes());
        attrs.extend(b"lo\0\0\0\0\0\0");
        attrs.extend(12u16.to_ne_bytes());
        attrs.extend((3u16 | 0x8000).to_ne_bytes());
        attrs.extend(7u64.to_ne_bytes());
        assert_eq!(attr(&attrs, 2), Some(&b"lo\0\0\0"[..]));
        assert_eq!(attr(&attrs, 3), Some(&7u64.to_ne_bytes()[..]));
        assert_eq!(attr(&attrs, 4), None);
        // A length past the end is not believed.
        assert_eq!(attr(&[200, 0, 3, 0, 1, 2], 3), None);
    }

    #[test]
    fn drivers_are_named() {
        // A name that is no interface is ENODEV, not some other failure or a made-up driver.
        let missing = driver("lb-no-such-if").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENODEV), "{missing}");
    }

    #[test]
    fn loopback_takes_no_redirects() {
        let lo = crate::ifindex("lo").expect("every network namespace has lo");
        match xdp_features(lo) {
            Ok(Some(f)) => assert!(!f.receives_redirects(), "{f:?}"),
            Ok(None) => lb_testkit::ci::skip(
                lb_testkit::ci::Skip::Test {
                    name: "netdev::tests::loopback_takes_no_redirects".into(),
                },
                "this kernel has no netdev generic netlink family (Linux 6.3+)",
            ),
            Err(e) => panic!("netdev dev-get for lo: {e}"),
        }
    }
}
