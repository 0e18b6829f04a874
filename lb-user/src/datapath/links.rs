//! Interfaces coming and going, as rtnetlink announces them (`RTNLGRP_LINK`).
//!
//! An attachment lives and dies with its interface: when a configured interface is deleted
//! (a veth recreated, a VF reset, a bond rebuilt), its programs go with it, and the interface
//! that comes back under the same name is a new device with a new index. The daemon follows
//! these events to attach again ([`watch`] feeds its loop), so a link that returns is served
//! without a restart, and the log says when one is gone.

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};
use tokio::sync::mpsc;

/// An interface appeared (or changed) or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: a new interface, or a change of one (flags, name, ...).
    New { name: String, ifindex: u32 },
    /// `RTM_DELLINK`: the interface is gone.
    Gone { name: String, ifindex: u32 },
}

/// Subscribes to link events in this network namespace; the events arrive on the returned
/// channel for as long as the runtime runs (the connection is spawned on it). Needs a tokio
/// runtime.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    named(&link).map(|(name, ifindex)| LinkEvent::New { name, ifindex })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    named(&link).map(|(name, ifindex)| LinkEvent::Gone { name, ifindex })
                }
                _ => None,
            };
            if let Some(event) = event
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

fn named(link: &LinkMessage) -> Option<(String, u32)> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some((name.clone(), link.header.index)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A new network namespace of the test's own (the test process stays where it was).
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            // SAFETY: unshare affects this thread only (CLONE_NEWNET on a thread of its own).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            Some(f())
        })
        .join()
        .expect("the thread ran")
    }

    /// Guards the watcher: a veth added then deleted shows up as `New`, then
    /// `Gone`, with its name and index. Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (it makes a
    /// network namespace): without them, it says so and passes, unless `CI=true`.
    #[test]
    fn an_interface_added_then_deleted_is_seen_both_ways() {
        let seen = in_new_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut events = watch().expect("subscribed");
                let run = |args: &[&str]| {
                    let out = std::process::Command::new("ip").args(args).output();
                    match out {
                        Ok(o) if o.status.success() => true,
                        other => {
                            eprintln!("ip {args:?}: {other:?}");
                            false
                        }
                    }
                };
                assert!(
                    run(&[
                        "link", "add", "lbtest0", "type", "veth", "peer", "name", "lbtest1"
                    ]),
                    "ip link add"
                );
                let ifindex = crate::ifindex("lbtest0").expect("created");
                assert!(run(&["link", "del", "lbtest0"]), "ip link del");
                let mut got = Vec::new();
                while !got.contains(&LinkEvent::Gone {
                    name: "lbtest0".into(),
                    ifindex,
                }) {
                    let next = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
                    got.push(
                        next.expect("an event within 5 s")
                            .expect("the watcher runs"),
                    );
                }
                (ifindex, got)
            })
        });
        let Some((ifindex, got)) = seen else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no network namespace (root needed)"
            );
            eprintln!("skipped: cannot make a network namespace (run as root)");
            return;
        };
        let new = LinkEvent::New {
            name: "lbtest0".into(),
            ifindex,
        };
        let at = got.iter().position(|e| *e == new);
        assert!(
            at.is_some_and(|at| at + 1 < got.len()),
            "new, then gone: {got:?}"
        );
    }
}
