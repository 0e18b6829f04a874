//! `lb guest check`'s judging: from the [`Facts`] gathered inside the VM to findings, one per
//! check and address, each problem with the commands that fix it. Pure: the facts in, the
//! findings out.
//!
//! For each path address: (a) one interface holds it; (b) a rule `from ADDR` (the exact
//! address) selects a table of its own, before the `main` table's rule; (c) that table has a
//! default route leaving by the address's interface; (d) `ip route get PROBE from ADDR`, the
//! route a reply from the address takes, leaves by that interface; (e) IPv4: reverse-path
//! filtering on that interface, max(all, interface), is not strict.

use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    facts::{Facts, Route, full_len, probe},
    plan::{DEFAULT_PRIORITY_BASE, DEFAULT_TABLE_BASE, MAIN_RULE_PRIORITY, RESERVED_TABLES},
    rp_filter_key,
};
use crate::config::Family;

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// (a) which interface holds the address.
    Interface,
    /// (b) the rule `from ADDR`.
    Rule,
    /// (c) its table's default route.
    Table,
    /// (d) `ip route get PROBE from ADDR`.
    RouteGet,
    /// (e) reverse-path filtering (IPv4).
    RpFilter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub address: IpAddr,
    pub check: Check,
    pub ok: bool,
    pub message: String,
    /// Commands that fix the problem, in order (none when ok, or when the fixes of the
    /// address's earlier findings are the fix). A word in capitals (`GATEWAY`) is what the
    /// facts did not tell: the message says what to put there.
    pub fix: Vec<String>,
}

/// What `lb guest check --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The addresses checked.
    pub addresses: Vec<IpAddr>,
    /// They are every global address of the host (no `--addresses` was given).
    pub every_global_address: bool,
    pub findings: Vec<Finding>,
    /// How many findings are problems.
    pub problems: usize,
}

impl Report {
    pub fn new(facts: &Facts, addresses: Vec<IpAddr>, every_global_address: bool) -> Report {
        let findings = judge(facts, &addresses);
        let problems = findings.iter().filter(|f| !f.ok).count();
        Report {
            addresses,
            every_global_address,
            findings,
            problems,
        }
    }

    /// Every problem's fixes, in order, each once.
    pub fn fixes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in self.findings.iter().flat_map(|f| &f.fix) {
            if !out.contains(&c.as_str()) {
                out.push(c);
            }
        }
        out
    }
}

/// The findings about `addresses`, in their order, checks (a) to (e) for each.
pub fn judge(facts: &Facts, addresses: &[IpAddr]) -> Vec<Finding> {
    let mut free = Free::new(facts);
    let mut out = Vec::new();
    for &address in addresses {
        let mut j = Judged {
            address,
            out: &mut out,
            problems: 0,
        };
        judge_address(facts, &mut j, &mut free);
    }
    out
}

/// The findings of one address.
struct Judged<'a> {
    address: IpAddr,
    out: &'a mut Vec<Finding>,
    problems: usize,
}

impl Judged<'_> {
    fn ok(&mut self, check: Check, message: String) {
        self.out.push(Finding {
            address: self.address,
            check,
            ok: true,
            message,
            fix: Vec::new(),
        });
    }

    fn problem(&mut self, check: Check, message: String, fix: Vec<String>) {
        self.problems += 1;
        self.out.push(Finding {
            address: self.address,
            check,
            ok: false,
            message,
            fix,
        });
    }
}

/// Table numbers and rule priorities no rule or route uses yet, for the fixes to propose
/// (from the same bases as `lb guest plan`).
struct Free {
    tables: BTreeSet<String>,
    priorities: BTreeSet<u32>,
}

impl Free {
    fn new(facts: &Facts) -> Free {
        Free {
            tables: facts
                .rules
                .iter()
                .filter_map(|r| r.table.clone())
                .chain(facts.routes.iter().map(|r| r.table.clone()))
                .collect(),
            priorities: facts.rules.iter().map(|r| r.priority).collect(),
        }
    }

    fn table(&mut self) -> u32 {
        let mut t = DEFAULT_TABLE_BASE;
        while RESERVED_TABLES.contains(&t) || self.tables.contains(&t.to_string()) {
            t = t.saturating_add(1);
        }
        self.tables.insert(t.to_string());
        t
    }

    fn priority(&mut self) -> u32 {
        let mut p = DEFAULT_PRIORITY_BASE;
        while self.priorities.contains(&p) {
            p = p.saturating_add(1);
        }
        self.priorities.insert(p);
        p
    }
}

fn ip(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip -6",
    }
}

/// Tables that are not a path's own: the kernel's.
fn shared_table(table: &str) -> bool {
    matches!(
        table,
        "main" | "local" | "default" | "0" | "253" | "254" | "255"
    )
}

/// The next hop of a default route leaving by `interface` in any table (usually `main`'s),
/// for a fix to use.
fn gateway_of(facts: &Facts, family: Family, interface: &str) -> Option<String> {
    facts
        .routes
        .iter()
        .filter(|r| r.family == family && r.default && r.kind == "unicast")
        .filter(|r| r.devs.iter().all(|d| d == interface) && !r.devs.is_empty())
        .find_map(|r| r.gateway.clone())
}

/// The route a fix adds, and what the message must say when the next hop is not known.
fn route_fix(
    facts: &Facts,
    family: Family,
    interface: &str,
    table: &str,
) -> (String, &'static str) {
    let (gateway, note) = match gateway_of(facts, family, interface) {
        Some(g) => (g, ""),
        None => (
            "GATEWAY".to_owned(),
            " (GATEWAY: the path's next hop on that interface, as given to `lb guest plan`)",
        ),
    };
    (
        format!(
            "{} route replace default via {gateway} dev {interface} onlink table {table}",
            ip(family)
        ),
        note,
    )
}

/// A default route that does not send a reply out of `iface`.
fn wrong(r: &Route, iface: &str) -> bool {
    r.kind != "unicast" || r.devs.is_empty() || r.devs.iter().any(|d| d != iface)
}

/// The command that removes `r`, a default route of `table`.
fn del_command(family: Family, table: &str, r: &Route) -> String {
    let kind = match r.kind.as_str() {
        "unicast" => String::new(),
        k => format!("{k} "),
    };
    let metric = r.metric.map_or(String::new(), |m| format!(" metric {m}"));
    format!(
        "{} route del {kind}default table {table}{metric}",
        ip(family)
    )
}

fn judge_address(facts: &Facts, j: &mut Judged<'_>, free: &mut Free) {
    let a = j.address;
    let family = Family::of(a);
    let ip = ip(family);

    // (a) The interface.
    let holders = facts.holders(a);
    let (interface, host) = match holders.as_slice() {
        [] => {
            j.problem(
                Check::Interface,
                format!(
                    "{a} is on no interface of this host: the edge would send the path's \
                     traffic to an address nobody here answers (the other checks are skipped); \
                     configure it on the path's interface, in the VM's network configuration \
                     to last (PREFIX, IFACE: the path's)"
                ),
                vec![format!("ip addr add {a}/PREFIX dev IFACE")],
            );
            return;
        }
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|(i, _)| i.name.as_str()).collect();
            j.problem(
                Check::Interface,
                format!(
                    "{a} is on several interfaces ({}): a path address belongs on its path's \
                     interface alone (the other checks are skipped); remove it from the others \
                     (the fix lists every one: leave out the path's own)",
                    names.join(", ")
                ),
                many.iter()
                    .map(|(i, h)| format!("ip addr del {a}/{} dev {}", h.prefix_len, i.name))
                    .collect(),
            );
            return;
        }
    };
    let iface = interface.name.as_str();
    if host.dad_failed {
        let cidr = format!("{a}/{}", host.prefix_len);
        j.problem(
            Check::Interface,
            format!(
                "{a} is on {iface}, but its duplicate address detection failed: another host \
                 on that link holds it, and the kernel will not use it; once that is resolved, \
                 add it again"
            ),
            vec![
                format!("ip addr del {cidr} dev {iface}"),
                format!("ip addr add {cidr} dev {iface}"),
            ],
        );
    } else {
        j.ok(Check::Interface, format!("on {iface}"));
    }

    // (b) The rule.
    let mut rules: Vec<_> = facts.rules.iter().filter(|r| r.family == family).collect();
    rules.sort_by_key(|r| r.priority);
    let exact: Vec<_> = rules
        .iter()
        .filter(|r| r.from == Some(a) && r.from_len == full_len(a))
        .collect();
    let plain = exact
        .iter()
        .find(|r| r.other.is_empty() && r.table.is_some());
    let main_rule = rules
        .iter()
        .find(|r| r.from.is_none() && r.other.is_empty() && r.table.as_deref() == Some("main"))
        .map_or(MAIN_RULE_PRIORITY, |r| r.priority);
    let main_default = facts
        .routes
        .iter()
        .any(|r| r.family == family && r.table == "main" && r.default);
    let new_rule = |free: &mut Free| {
        let (t, p) = (free.table(), free.priority());
        let (route, note) = route_fix(facts, family, iface, &t.to_string());
        (
            vec![
                route,
                format!("{ip} rule add from {a} lookup {t} priority {p}"),
            ],
            note,
        )
    };
    let table = match plain {
        None => {
            let what = match exact.as_slice() {
                [] => format!(
                    "no rule `from {a}` selects a routing table: replies from it follow the \
                     main table, whichever path their request came by"
                ),
                some => {
                    let keys: BTreeSet<&str> = some
                        .iter()
                        .flat_map(|r| r.other.iter().map(String::as_str))
                        .collect();
                    format!(
                        "the rules `from {a}` (priority {}) carry other conditions or actions \
                         ({}): none sends every packet from it to a table",
                        some.iter()
                            .map(|r| r.priority.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        keys.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
            };
            let (fix, note) = new_rule(free);
            j.problem(
                Check::Rule,
                format!("{what}; give it a table of its own{note}"),
                fix,
            );
            None
        }
        Some(r) => {
            let t = r.table.as_deref().unwrap_or_default();
            let p = r.priority;
            if shared_table(t) {
                let (mut fix, note) = new_rule(free);
                fix.insert(0, format!("{ip} rule del from {a} lookup {t} priority {p}"));
                j.problem(
                    Check::Rule,
                    format!(
                        "rule {p} sends packets from {a} to table {t}, which is not a path's \
                         own; give it a table of its own{note}"
                    ),
                    fix,
                );
                None
            } else if p > main_rule && main_default {
                let new = free.priority();
                j.problem(
                    Check::Rule,
                    format!(
                        "rule {p} `from {a} lookup {t}` comes after the main table's rule \
                         (priority {main_rule}), whose default route answers first: move it \
                         before"
                    ),
                    vec![
                        format!("{ip} rule del from {a} lookup {t} priority {p}"),
                        format!("{ip} rule add from {a} lookup {t} priority {new}"),
                    ],
                );
                Some(t)
            } else {
                j.ok(Check::Rule, format!("rule {p}: from {a} lookup {t}"));
                Some(t)
            }
        }
    };

    // (c) The table's default route (when there is a table to look at).
    if let Some(t) = table {
        let defaults: Vec<&Route> = facts
            .routes
            .iter()
            .filter(|r| r.family == family && r.table == t && r.default)
            .collect();
        let (fix, note) = route_fix(facts, family, iface, t);
        if defaults.is_empty() {
            j.problem(
                Check::Table,
                format!(
                    "table {t} has no default route: replies from {a} find none there and go \
                     on to the next rules (the main table){note}"
                ),
                vec![fix],
            );
        } else if let Some(r) = defaults.iter().find(|r| wrong(r, iface)) {
            // Removed first: `replace` only replaces a route of the same metric (IPv6), and
            // one of another type or interface at another metric would stay in front.
            let mut fixes: Vec<String> = defaults
                .iter()
                .filter(|r| wrong(r, iface))
                .map(|r| del_command(family, t, r))
                .collect();
            fixes.push(fix);
            let what = match (r.kind.as_str(), r.devs.is_empty()) {
                ("unicast", true) => "leaves by no interface".to_owned(),
                ("unicast", false) => format!("leaves by {}, not {iface}", r.devs.join(", ")),
                (kind, _) => format!("is of type {kind}"),
            };
            j.problem(
                Check::Table,
                format!(
                    "table {t}'s default route {what}: replies from {a} do not leave by \
                     {iface}{note}"
                ),
                fixes,
            );
        } else {
            let via = defaults
                .iter()
                .find_map(|r| r.gateway.as_deref())
                .map_or(String::new(), |g| format!(" via {g}"));
            j.ok(Check::Table, format!("table {t}: default{via} dev {iface}"));
        }
    }

    // (d) Where a reply from the address goes.
    let get = format!("{ip} route get {} from {a}", probe(family));
    let (see, see_fix) = match j.problems {
        0 => (
            "these show the rules and routes in the way",
            vec![
                format!("{ip} rule show"),
                format!("{ip} route show table all"),
            ],
        ),
        _ => ("the fixes above are the fix", Vec::new()),
    };
    match facts.lookups.get(&a) {
        None => {}
        Some(Err(said)) => j.problem(
            Check::RouteGet,
            format!("`{get}` finds no route ({said}): replies from {a} cannot leave; {see}"),
            see_fix,
        ),
        Some(Ok(hop)) => {
            let via = hop
                .gateway
                .as_deref()
                .map_or(String::new(), |g| format!(", via {g}"));
            match hop.dev.as_deref() {
                Some(d) if d == iface => j.ok(
                    Check::RouteGet,
                    format!("`{get}` leaves by {iface} (table {}{via})", hop.table),
                ),
                dev => j.problem(
                    Check::RouteGet,
                    format!(
                        "`{get}` leaves by {} (table {}{via}), not {iface}: replies from {a} \
                         take another path; {see}",
                        dev.unwrap_or("no interface"),
                        hop.table
                    ),
                    see_fix,
                ),
            }
        }
    }

    // (e) Reverse-path filtering (IPv4 has it; IPv6 has no such sysctl).
    if family == Family::V4 {
        let all = facts.rp_filter.get("all").copied();
        let own = facts.rp_filter.get(iface).copied();
        match (all, own) {
            (Some(all), Some(own)) => {
                let effective = all.max(own);
                let said = format!(
                    "reverse-path filtering on {iface}: max(all {all}, {iface} {own}) = \
                     {effective}"
                );
                if effective == 1 {
                    let mut fix = Vec::new();
                    if all == 1 {
                        fix.push(format!("sysctl -w {}=2", rp_filter_key("all")));
                    }
                    if own == 1 {
                        fix.push(format!("sysctl -w {}=2", rp_filter_key(iface)));
                    }
                    j.problem(
                        Check::RpFilter,
                        format!(
                            "{said}, strict: a request to {a} on {iface} is dropped unless the \
                             route back to its source leaves by {iface}; a rule `from {a}` to a \
                             table of {iface}'s makes it so, but a request arriving while that \
                             rule is missing or late is lost without a trace; make it loose (2)"
                        ),
                        fix,
                    );
                } else {
                    let how = match effective {
                        0 => "off",
                        2 => "loose",
                        _ => "not strict",
                    };
                    j.ok(Check::RpFilter, format!("{said} ({how})"));
                }
            }
            _ => j.problem(
                Check::RpFilter,
                format!(
                    "reverse-path filtering on {iface} is unknown: no \
                     /proc/sys/net/ipv4/conf/{iface}/rp_filter (did the interface go away?); \
                     check again"
                ),
                Vec::new(),
            ),
        }
    }
}
