//! The host routes themselves, over rtnetlink: one `blackhole <vip>/32` per announced IPv4
//! address and one `blackhole <vip>/128` per IPv6 one, in the table and with the route protocol
//! of the `announce` section (a table holds routes of both families side by side).
//!
//! Why a blackhole: it has no device and no gateway, so BIRD's `learn` takes it without knowing
//! any interface and FRR imports it as is, and the routing daemon announces it with its own
//! address as the next hop. No rule selects the table, so the route never forwards anything on
//! this host (and if one ever did, a blackhole fails safe: no loop). The datapath sees VIP
//! traffic before the FIB anyway.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
    },
};

use crate::config::Announce;

/// A route operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("adding the route for {vip} to table {table}")]
    Add {
        vip: IpAddr,
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing the route for {vip} from table {table}")]
    Remove {
        vip: IpAddr,
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing the routes of table {table}")]
    List {
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
}

/// A netlink connection for route changes (its I/O task runs on the current tokio runtime).
#[derive(Clone)]
pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Opens the connection; needs a tokio runtime.
    pub fn connect() -> Result<Routes, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Routes { handle })
    }

    /// The addresses (of both families) `announce`'s table holds host routes for, with its
    /// protocol.
    pub async fn list(&self, announce: Announce) -> Result<BTreeSet<IpAddr>, Error> {
        let Announce { table, protocol } = announce;
        let list = |source| Error::List { table, source };
        // Kind `Unspec` and scope `Universe`: what a kernel filtering the dump accepts. Without
        // strict checking (this socket) it dumps every table: filtered here. One dump per
        // family.
        let filters = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .protocol(RouteProtocol::from(protocol))
                .kind(RouteType::Unspec)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(table)
                .protocol(RouteProtocol::from(protocol))
                .kind(RouteType::Unspec)
                .build(),
        ];
        let mut out = BTreeSet::new();
        for filter in filters {
            let mut routes = self.handle.route().get(filter).execute();
            loop {
                let m = match routes.try_next().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // A table that was never created; a host without IPv6.
                    Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EAFNOSUPPORT)) => {
                        break;
                    }
                    Err(e) => return Err(list(e)),
                };
                if let Some(vip) = ours(&m, announce) {
                    out.insert(vip);
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the host route for `vip`.
    pub async fn add(&self, announce: Announce, vip: IpAddr) -> Result<(), Error> {
        self.handle
            .route()
            .add(message(announce, vip))
            .replace()
            .execute()
            .await
            .map_err(|source| Error::Add {
                vip,
                table: announce.table,
                source,
            })
    }

    /// Removes the host route for `vip`; one already gone is not an error.
    pub async fn remove(&self, announce: Announce, vip: IpAddr) -> Result<(), Error> {
        match self
            .handle
            .route()
            .del(message(announce, vip))
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|source| Error::Remove {
                vip,
                table: announce.table,
                source,
            }),
        }
    }

    /// Removes every host route `announce`'s table holds with its protocol; returns them.
    pub async fn remove_all(&self, announce: Announce) -> Result<BTreeSet<IpAddr>, Error> {
        let found = self.list(announce).await?;
        for vip in &found {
            self.remove(announce, *vip).await?;
        }
        Ok(found)
    }
}

/// The one message for adding and for removing (a removal must name the type and protocol the
/// route has, or the kernel finds none): a host route, `/32` or `/128`.
fn message(announce: Announce, vip: IpAddr) -> RouteMessage {
    match vip {
        IpAddr::V4(vip) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(vip, 32)
            .table_id(announce.table)
            .protocol(RouteProtocol::from(announce.protocol))
            .scope(RouteScope::Universe)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(vip) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(vip, 128)
            .table_id(announce.table)
            .protocol(RouteProtocol::from(announce.protocol))
            .scope(RouteScope::Universe)
            .kind(RouteType::BlackHole)
            .build(),
    }
}

/// The VIP of `m` when it is one of ours: a host route (`/32`, `/128`) in the table with the
/// protocol.
fn ours(m: &RouteMessage, announce: Announce) -> Option<IpAddr> {
    // Tables above 255 appear as 252 (RT_TABLE_COMPAT) in the header and whole in RTA_TABLE.
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    // `RouteProtocol` names some numbers (12 is `Bird`): compare the numbers.
    if table != announce.table || u8::from(m.header.protocol) != announce.protocol {
        return None;
    }
    let host = m.header.destination_prefix_length;
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) if host == 32 => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) if host == 128 => {
            Some(IpAddr::V6(*ip))
        }
        _ => None,
    })
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANNOUNCE: Announce = Announce {
        table: 1000,
        protocol: 250,
    };

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));

    #[test]
    fn the_message_is_a_blackhole_host_route_in_the_table() {
        let m = message(ANNOUNCE, VIP);
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(m.header.destination_prefix_length, 32);
        assert_eq!(u8::from(m.header.protocol), 250);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_)))
        );
        assert_eq!(ours(&m, ANNOUNCE), Some(VIP));
    }

    #[test]
    fn an_ipv6_vip_gets_a_blackhole_slash_128_in_the_same_table() {
        let vip: IpAddr = "2001:db8::10".parse().expect("an address");
        let m = message(ANNOUNCE, vip);
        assert_eq!(
            m.header.address_family,
            rtnetlink::packet_route::AddressFamily::Inet6
        );
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(m.header.destination_prefix_length, 128);
        assert_eq!(u8::from(m.header.protocol), 250);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(ours(&m, ANNOUNCE), Some(vip));
        // Not a host route: not ours.
        let mut wide = m.clone();
        wide.header.destination_prefix_length = 64;
        assert_eq!(ours(&wide, ANNOUNCE), None);
        // An IPv6 destination is never taken for a /32 (or an IPv4 one for a /128).
        let mut short = m;
        short.header.destination_prefix_length = 32;
        assert_eq!(ours(&short, ANNOUNCE), None);
        let mut long = message(ANNOUNCE, VIP);
        long.header.destination_prefix_length = 128;
        assert_eq!(ours(&long, ANNOUNCE), None);
    }

    #[test]
    fn routes_of_another_table_protocol_or_length_are_not_ours() {
        let vip = VIP;
        for other in [
            Announce {
                table: 1001,
                ..ANNOUNCE
            },
            Announce {
                protocol: 12,
                ..ANNOUNCE
            },
        ] {
            assert_eq!(ours(&message(other, vip), ANNOUNCE), None);
        }
        let mut m = message(ANNOUNCE, vip);
        m.header.destination_prefix_length = 24;
        assert_eq!(ours(&m, ANNOUNCE), None);
        // A small table number sits in the header alone.
        let small = Announce {
            table: 200,
            ..ANNOUNCE
        };
        let mut m = message(small, vip);
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        m.header.table = 200;
        assert_eq!(ours(&m, small), Some(vip));
    }
}
