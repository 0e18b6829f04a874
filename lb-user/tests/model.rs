//! The control plane's model and its map writer, host-only (no privileges, no I/O beyond the
//! in-memory `MemStore`): what `apply` writes and in which order, ids kept across reloads and
//! restarts, decisions and reverse-NAT entries as the maps see them, and the model the CLI
//! rebuilds from the maps when no daemon runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, UNIX_EPOCH},
};

use lb_common::{
    maps::{
        EndpointKey, EndpointKey6, HEALTH_UNKNOWN, NO_ID, PATH_DISABLED, PATH_DOWN, PATH_UP,
        PathValue, RING_SIZE, RevValue, TARGET_MODE_NONE, TARGET_MODE_RING, TargetValue,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use lb_user::{
    config::Config,
    control::health::Health,
    control::model::{Ids, Model, PathState},
    control::policy::Decision,
    datapath::maps::Admin,
    datapath::tables::{MemStore, Tables, apply},
};

/// Disabled when `disabled`, else enabled: an operator's word as `LB_ADMIN` holds it.
fn admin(disabled: bool) -> Admin {
    if disabled {
        Admin::Disabled
    } else {
        Admin::Enabled
    }
}
use serde_json::{Value, json};

// ---- Configurations: the JSON an operator writes, built up a piece at a time. ----

/// A configuration under construction.
#[derive(Clone)]
struct Cfg(Value);

/// Target options: failover with the defaults (preempt, all_down drop).
fn failover() -> Value {
    json!({})
}

/// Target options: active/active, all_down drop.
fn active_active() -> Value {
    json!({ "mode": "active-active" })
}

impl Cfg {
    fn new() -> Cfg {
        Cfg(json!({
            "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
            "targets": [],
            "vips": [],
        }))
    }

    fn list(&mut self, key: &str) -> &mut Vec<Value> {
        self.0[key].as_array_mut().expect("a list")
    }

    /// Adds target `name` with `options` (mode, preempt, all_down) and paths given as
    /// (name, address, priority).
    fn target(mut self, name: &str, options: Value, paths: &[(&str, &str, u32)]) -> Cfg {
        let paths: Vec<Value> = paths
            .iter()
            .map(|(n, a, p)| json!({ "name": n, "address": a, "priority": p }))
            .collect();
        let mut t = json!({ "name": name, "paths": paths });
        for (k, v) in options.as_object().expect("options are an object") {
            t[k.as_str()] = v.clone();
        }
        self.list("targets").push(t);
        self
    }

    /// Adds a whole-address VIP.
    fn vip(mut self, address: &str, target: &str) -> Cfg {
        self.list("vips")
            .push(json!({ "address": address, "target": target }));
        self
    }

    /// Adds a service VIP.
    fn service(
        mut self,
        address: &str,
        protocol: &str,
        port: u16,
        target_port: Option<u16>,
        target: &str,
    ) -> Cfg {
        let mut v =
            json!({ "address": address, "protocol": protocol, "port": port, "target": target });
        if let Some(tp) = target_port {
            v["target_port"] = json!(tp);
        }
        self.list("vips").push(v);
        self
    }

    /// Without the VIPs on `address`.
    fn without_vip(mut self, address: &str) -> Cfg {
        self.list("vips").retain(|v| v["address"] != address);
        self
    }

    fn without_target(mut self, name: &str) -> Cfg {
        self.list("targets").retain(|t| t["name"] != name);
        self
    }

    fn target_mut(&mut self, target: &str) -> &mut Value {
        self.list("targets")
            .iter_mut()
            .find(|t| t["name"] == target)
            .expect("the target exists")
    }

    fn paths_mut(&mut self, target: &str) -> &mut Vec<Value> {
        self.target_mut(target)["paths"]
            .as_array_mut()
            .expect("paths")
    }

    /// Adds a path (name, address, priority) to target `target`.
    fn add_path(mut self, target: &str, (name, address, priority): (&str, &str, u32)) -> Cfg {
        self.paths_mut(target)
            .push(json!({ "name": name, "address": address, "priority": priority }));
        self
    }

    /// Edits path `path` of target `target`.
    fn edit_path(mut self, target: &str, path: &str, edit: impl FnOnce(&mut Value)) -> Cfg {
        let p = self
            .paths_mut(target)
            .iter_mut()
            .find(|p| p["name"] == path)
            .expect("the path exists");
        edit(p);
        self
    }

    fn without_path(mut self, target: &str, path: &str) -> Cfg {
        self.paths_mut(target).retain(|p| p["name"] != path);
        self
    }

    #[track_caller]
    fn config(&self) -> Config {
        Config::from_json(&self.0.to_string()).expect("a valid configuration")
    }
}

/// Configuration A: two targets, three VIPs (whole address, translated service, plain
/// service). Ids in a fresh model: targets web 0, api 1; paths nn1 0, nn2 1, a1 2, a2 3, a3 4;
/// VIPs in the listed order 0, 1, 2.
fn config_a() -> Cfg {
    Cfg::new()
        .target(
            "web",
            failover(),
            &[("nn1", "192.0.2.1", 10), ("nn2", "192.0.2.2", 20)],
        )
        .target(
            "api",
            active_active(),
            &[
                ("a1", "192.0.2.11", 0),
                ("a2", "192.0.2.12", 1),
                ("a3", "192.0.2.13", 2),
            ],
        )
        .vip("203.0.113.10", "web")
        .service("203.0.113.11", "tcp", 443, Some(8443), "web")
        .service("203.0.113.20", "udp", 53, None, "api")
}

/// Configuration B: A without the VIP 203.0.113.11 (id 1) and the path api/a2 (id 3), with a
/// new target `db` and a VIP on it.
fn config_b() -> Cfg {
    config_a()
        .without_vip("203.0.113.11")
        .without_path("api", "a2")
        .target(
            "db",
            active_active(),
            &[("d1", "192.0.2.21", 0), ("d2", "192.0.2.22", 1)],
        )
        .service("203.0.113.30", "tcp", 5432, None, "db")
}

// ---- Models. ----

#[track_caller]
fn fresh(cfg: &Cfg) -> Model {
    Model::new(cfg.config(), &Model::empty()).expect("fits the maps")
}

#[track_caller]
fn target_id(m: &Model, target: &str) -> u32 {
    m.ids.targets[target]
}

#[track_caller]
fn path_id(m: &Model, target: &str, path: &str) -> u32 {
    m.ids.paths[&(target.to_string(), path.to_string())]
}

/// A VIP's (protocol, port); `None`: the whole address.
type Service = Option<(u8, u16)>;

fn key(address: &str, service: Service) -> EndpointKey6 {
    EndpointKey6::of(address.parse().expect("an address"), service)
}

#[track_caller]
fn vip_id(m: &Model, address: &str, service: Service) -> u32 {
    m.ids.vips[&key(address, service)]
}

#[track_caller]
fn address(m: &Model, target: &str, path: &str) -> IpAddr {
    let t = m.config.target(target).expect("the target exists");
    t.paths
        .iter()
        .find(|p| p.name == path)
        .expect("the path exists")
        .address
}

#[track_caller]
fn state<'m>(m: &'m mut Model, target: &str, path: &str) -> &'m mut PathState {
    let id = path_id(m, target, path);
    m.paths.get_mut(&id).expect("a configured path has a state")
}

/// Sets the health of `paths` (target, path), then lets the model decide again.
fn set_health(m: &mut Model, health: Option<Health>, paths: &[(&str, &str)]) {
    for (t, p) in paths {
        state(m, t, p).health = health;
    }
    m.decide_all();
}

/// A with web on nn1 (nn2 down) and api ringed over a1 and a3 (a2 unknown).
fn model_a() -> Model {
    let mut m = fresh(&config_a());
    set_health(
        &mut m,
        Some(Health::Up),
        &[("web", "nn1"), ("api", "a1"), ("api", "a3")],
    );
    set_health(&mut m, Some(Health::Down), &[("web", "nn2")]);
    m
}

// ---- The store and its log. ----

/// A store holding what applying `t` to empty maps leaves; its log cleared.
fn store_holding(t: &Tables) -> MemStore {
    let mut store = MemStore::default();
    apply(&mut store, &Tables::default(), t).expect("the fake store does not fail");
    store.log.clear();
    store
}

fn positions(log: &[String], entry: &str) -> Vec<usize> {
    (0..log.len()).filter(|&i| log[i] == entry).collect()
}

/// `first` and `then` were both written, and every write of `first` came before every write of
/// `then`.
#[track_caller]
fn assert_before(log: &[String], first: &str, then: &str) {
    let (a, b) = (positions(log, first), positions(log, then));
    assert!(!a.is_empty(), "{first:?} was not written: {log:?}");
    assert!(!b.is_empty(), "{then:?} was not written: {log:?}");
    assert!(
        a.iter().max() < b.iter().min(),
        "{first:?} must be written before {then:?}: {log:?}"
    );
}

/// The log entries of everything VIP `vip` of `t` leads to: its target's decision, meta and
/// ring, the target's paths and their meta, and the VIP's reverse-NAT entries.
fn leads_to(t: &Tables, vip: u32) -> Vec<String> {
    let target = t.vips[&vip].target;
    let mut out = vec![format!("target {target}"), format!("target-meta {target}")];
    for (id, half) in t.rings.keys() {
        if *id == target {
            out.push(format!("ring {target}/{half}"));
        }
    }
    for (id, p) in &t.paths {
        if p.target == target {
            out.push(format!("path {id}"));
            out.push(format!("path-meta {id}"));
        }
    }
    for (k, rev) in &t.rev_nat {
        if rev.vip_id == vip {
            out.push(format!("rev {}", k.ip()));
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---- 1. Applying tables. ----

/// Guards `apply` against forgetting a kind of entry, and `MemStore::read` (the model of
/// `Maps::read_tables`) against disagreeing with it: from empty maps everything is written
/// once and reads back exactly; the same tables again write nothing, whether compared with
/// what was wanted (a reload) or with what is read back (a restart adopting the maps).
#[test]
fn apply_from_empty_writes_everything_once_then_nothing() {
    let desired = model_a().tables();
    // Every kind of entry is there.
    assert_eq!(desired.vips.len(), 3);
    assert_eq!(desired.rev_nat.len(), 2 * 2 + 3);
    assert_eq!(desired.rings.len(), 1);
    assert_eq!((desired.targets.len(), desired.target_meta.len()), (2, 2));
    assert_eq!((desired.paths.len(), desired.path_meta.len()), (5, 5));

    let mut store = MemStore::default();
    let n = apply(&mut store, &Tables::default(), &desired).expect("writes");
    let entries = desired.vips.len()
        + desired.rev_nat.len()
        + desired.targets.len()
        + desired.rings.len()
        + desired.paths.len()
        + desired.target_meta.len()
        + desired.path_meta.len()
        + desired.addrs.len()
        // The settings.
        + 1;
    assert_eq!(n, entries);
    assert_eq!(store.log.iter().filter(|e| *e != "filter").count(), entries);
    assert_eq!(store.read(), desired);
    let keys: BTreeSet<EndpointKey6> = desired.vips.values().map(|v| v.key).collect();
    assert_eq!(store.vip_keys, keys);

    let written = store.log.len();
    assert_eq!(apply(&mut store, &desired, &desired).expect("writes"), 0);
    let read = store.read();
    assert_eq!(apply(&mut store, &read, &desired).expect("writes"), 0);
    assert_eq!(store.log.len(), written, "not even a filter refresh");
}

// ---- 2. Write order. ----

/// Guards the order that keeps the datapath from following a VIP to something not there yet:
/// each new VIP is written after its target (decision, meta, ring), the target's paths and the
/// VIP's reverse-NAT entries, and the address pre-filter is refreshed after the VIPs. Checked
/// from empty maps, and for a reload adding a target and a VIP (which writes nothing else).
#[test]
fn a_new_vip_is_written_after_everything_it_leads_to() {
    let a = model_a();
    let current = a.tables();
    let mut store = MemStore::default();
    apply(&mut store, &Tables::default(), &current).expect("writes");
    for vip in current.vips.keys() {
        let entry = format!("vip {vip}");
        for first in leads_to(&current, *vip) {
            assert_before(&store.log, &first, &entry);
        }
        assert_before(&store.log, &entry, "filter");
    }

    let added = config_a()
        .target(
            "db",
            active_active(),
            &[("d1", "192.0.2.21", 0), ("d2", "192.0.2.22", 1)],
        )
        .service("203.0.113.30", "tcp", 5432, None, "db");
    let mut next = Model::new(added.config(), &a).expect("fits");
    set_health(&mut next, Some(Health::Up), &[("db", "d1"), ("db", "d2")]);
    let desired = next.tables();
    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    let v = vip_id(&next, "203.0.113.30", Some((IPPROTO_TCP, 5432)));
    let entry = format!("vip {v}");
    let first = leads_to(&desired, v);
    let db = target_id(&next, "db");
    assert!(first.iter().any(|f| f.starts_with(&format!("ring {db}/"))));
    for f in &first {
        assert_before(&store.log, f, &entry);
    }
    assert_before(&store.log, &entry, "filter");
    let mut all = first;
    all.extend([entry, "filter".into()]);
    // And the new addresses: the VIP's and its paths'.
    all.extend(
        desired
            .addrs
            .keys()
            .filter(|a| !current.addrs.contains_key(*a))
            .map(|a| format!("addr {}", std::net::Ipv4Addr::from(*a))),
    );
    assert_eq!(sorted(store.log.clone()), sorted(all), "nothing else");
    assert_eq!(store.read(), desired);
}

/// Guards the removal order: a removed VIP disappears before its reverse-NAT entries, and both
/// before its target and paths are zeroed (so no packet finds a VIP leading to a zeroed path);
/// the pre-filter is refreshed once they are gone; the freed slots are left zeroed (state down,
/// so flows still naming them re-steer).
#[test]
fn a_removed_vip_goes_before_what_it_led_to() {
    let a = model_a();
    let current = a.tables();
    let next = Model::new(
        config_a()
            .without_vip("203.0.113.20")
            .without_target("api")
            .config(),
        &a,
    )
    .expect("fits");
    let desired = next.tables();
    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    let log = &store.log;

    let gone = format!(
        "-vip {}",
        vip_id(&a, "203.0.113.20", Some((IPPROTO_UDP, 53)))
    );
    let api = target_id(&a, "api");
    for p in ["a1", "a2", "a3"] {
        let id = path_id(&a, "api", p);
        let rev = format!("-rev {}", address(&a, "api", p));
        assert_before(log, &gone, &rev);
        assert_before(log, &rev, "filter");
        for zeroed in [format!("path {id}"), format!("path-meta {id}")] {
            assert_before(log, &gone, &zeroed);
            assert_before(log, &rev, &zeroed);
        }
        assert_eq!(store.tables.paths[&id], PathValue::default());
    }
    for zeroed in [format!("target {api}"), format!("target-meta {api}")] {
        assert_before(log, &gone, &zeroed);
    }
    assert_eq!(store.tables.targets[&api], TargetValue::none());
    assert_eq!(store.read(), desired);
}

/// Configuration C, a generation after B: B plus a new service whose VIP takes B's freed id 1.
fn model_c(b: &Model) -> Model {
    Model::new(
        config_b()
            .service("203.0.113.31", "tcp", 80, None, "db")
            .config(),
        b,
    )
    .expect("fits")
}

/// Guards VIP id reuse: B drops VIP 1 (203.0.113.11 tcp/443), and C (a generation later, the
/// id out of quarantine) gives id 1 to a new key. Applied straight from maps that still hold
/// A (a B that never made it to the maps), the old key must leave the VIP hash map before the
/// id describes the new one, or the old address would keep leading to id 1.
#[test]
fn a_reused_vip_id_drops_its_old_key_first() {
    let a = model_a();
    let b = Model::new(config_b().config(), &a).expect("fits");
    let old = key("203.0.113.11", Some((IPPROTO_TCP, 443)));
    let new = key("203.0.113.31", Some((IPPROTO_TCP, 80)));
    let c = model_c(&b);
    assert_eq!((a.ids.vips[&old], c.ids.vips[&new]), (1, 1));

    let mut store = store_holding(&a.tables());
    apply(&mut store, &a.tables(), &c.tables()).expect("writes");
    assert_before(&store.log, "-vip 1", "vip 1");
    assert!(!store.vip_keys.contains(&old), "{:?}", store.vip_keys);
    assert!(store.vip_keys.contains(&new));
    assert_eq!(store.read(), c.tables());
}

// ---- 3. Ids across a reload. ----

/// Guards the traffic columns (`LB_PAIR_STATS`): a VIP keeps its rank among its target's VIPs
/// across a reload, a new VIP takes the lowest rank free on its target, and a VIP that moves
/// to a target where its rank is taken gets another: two VIPs of one target never share a
/// column, so neither's traffic counts as the other's. The tables carry the rank in the VIP's
/// info and in every reverse-NAT entry of it.
#[test]
fn vip_ranks_are_kept_per_target_and_never_shared() {
    let a = model_a();
    let rank = |m: &Model, address: &str, service: Service| m.ids.vip_ranks[&key(address, service)];
    assert_eq!(rank(&a, "203.0.113.10", None), 0);
    assert_eq!(rank(&a, "203.0.113.11", Some((IPPROTO_TCP, 443))), 1);
    assert_eq!(rank(&a, "203.0.113.20", Some((IPPROTO_UDP, 53))), 0);

    // .10 leaves web; .20 moves from api to web, where its rank 0 is free now; a new VIP on
    // web takes the lowest rank left.
    let b = Model::new(
        config_a()
            .without_vip("203.0.113.10")
            .without_vip("203.0.113.20")
            .service("203.0.113.20", "udp", 53, None, "web")
            .service("203.0.113.40", "udp", 123, None, "web")
            .config(),
        &a,
    )
    .expect("fits");
    assert_eq!(rank(&b, "203.0.113.11", Some((IPPROTO_TCP, 443))), 1);
    assert_eq!(rank(&b, "203.0.113.20", Some((IPPROTO_UDP, 53))), 0);
    assert_eq!(rank(&b, "203.0.113.40", Some((IPPROTO_UDP, 123))), 2);

    // Back: .20 returns to api (rank 0 there); .10 comes back to web, where rank 0 is .20's
    // no more, .11 keeps 1 and .40 keeps 2.
    let c = Model::new(
        config_a()
            .service("203.0.113.40", "udp", 123, None, "web")
            .config(),
        &b,
    )
    .expect("fits");
    let mut per_target: BTreeMap<String, BTreeSet<u8>> = BTreeMap::new();
    for v in &c.config.vips {
        let r = c.ids.vip_ranks[&lb_user::control::model::vip_key(v)];
        assert!(
            per_target.entry(v.target.clone()).or_default().insert(r),
            "rank {r} twice on {}",
            v.target
        );
    }
    assert_eq!(rank(&c, "203.0.113.11", Some((IPPROTO_TCP, 443))), 1);
    assert_eq!(rank(&c, "203.0.113.40", Some((IPPROTO_UDP, 123))), 2);

    let t = c.tables();
    for v in &c.config.vips {
        let k = lb_user::control::model::vip_key(v);
        let (id, r) = (c.ids.vips[&k], c.ids.vip_ranks[&k]);
        assert_eq!(t.vips[&id].rank, r);
        let revs: Vec<_> = t.rev_nat.values().filter(|rv| rv.vip_id == id).collect();
        assert!(!revs.is_empty());
        assert!(revs.iter().all(|rv| rv.vip_rank == r));
    }
    // The pinned tables give the ranks back (a restart keeps them).
    assert_eq!(
        lb_user::control::model::Ids::from_tables(&t).vip_ranks,
        c.ids.vip_ranks
    );
}

/// Guards id stability: a reload keeps the id of every target, path and VIP it keeps (flows
/// and counters are by id), in whatever order the file lists them, and gives new ones the
/// lowest ids neither held by a kept one nor freed by this reload (here path 3 and VIP 1 are
/// freed: quarantined for one generation, so that nothing in flight for the removed path or
/// VIP reaches what replaces it), reused at the next. What the kept paths knew survives, and
/// applying A → B leaves exactly B in the maps.
#[test]
fn ids_are_kept_across_a_reload_and_freed_ids_reused() {
    let a = model_a();
    let b = Model::new(config_b().config(), &a).expect("fits");

    let names = |list: &[(&str, &str, u32)]| -> BTreeMap<(String, String), u32> {
        list.iter()
            .map(|(t, p, id)| ((t.to_string(), p.to_string()), *id))
            .collect()
    };
    let expected = Ids {
        targets: [("web", 0), ("api", 1), ("db", 2)]
            .map(|(n, id)| (n.to_string(), id))
            .into(),
        paths: names(&[
            ("web", "nn1", 0),
            ("web", "nn2", 1),
            ("api", "a1", 2),
            ("api", "a3", 4),
            ("db", "d1", 5),
            ("db", "d2", 6),
        ]),
        vips: [
            (key("203.0.113.10", None), 0),
            (key("203.0.113.20", Some((IPPROTO_UDP, 53))), 2),
            (key("203.0.113.30", Some((IPPROTO_TCP, 5432))), 3),
        ]
        .into(),
        // One VIP left on each target.
        vip_ranks: [
            (key("203.0.113.10", None), 0),
            (key("203.0.113.20", Some((IPPROTO_UDP, 53))), 0),
            (key("203.0.113.30", Some((IPPROTO_TCP, 5432))), 0),
        ]
        .into(),
    };
    assert_eq!(b.ids, expected);
    for (name, id) in &a.ids.paths {
        if let Some(kept) = b.ids.paths.get(name) {
            assert_eq!(kept, id, "{name:?}");
            assert_eq!(b.paths[kept], a.paths[id], "{name:?} keeps its state");
        }
    }

    // The order of the file does not matter: B listed backwards gets the same ids.
    let mut reversed = config_b();
    reversed.list("targets").reverse();
    reversed.list("vips").reverse();
    let r = Model::new(reversed.config(), &a).expect("fits");
    assert_eq!(r.ids, b.ids);

    let mut store = store_holding(&a.tables());
    apply(&mut store, &a.tables(), &b.tables()).expect("writes");
    assert_eq!(store.read(), b.tables());
    let keys: BTreeSet<EndpointKey6> = b.tables().vips.values().map(|v| v.key).collect();
    assert_eq!(store.vip_keys, keys);

    // A generation later, the freed ids are the lowest free ones again.
    let c = Model::new(
        config_b()
            .add_path("db", ("d3", "192.0.2.23", 2))
            .service("203.0.113.31", "tcp", 80, None, "db")
            .config(),
        &b,
    )
    .expect("fits");
    assert_eq!(path_id(&c, "db", "d3"), 3);
    assert_eq!(c.ids.vips[&key("203.0.113.31", Some((IPPROTO_TCP, 80)))], 1);
}

// ---- 4. Restart. ----

/// A model where every kind of state shows: up/down/unknown paths, an RTT with a fraction of
/// a microsecond, change times to the nanosecond, a drain, and the three decisions: web on
/// nn1, api ringed, cold none; sticky (no preempt) stays on s2 although s1, preferred, is
/// back up (a fresh decision would pick s1).
fn rich_config() -> Cfg {
    config_a()
        .target("cold", failover(), &[("c1", "192.0.2.31", 0)])
        .target(
            "sticky",
            json!({ "preempt": false, "all_down": "last-known" }),
            &[("s1", "192.0.2.41", 0), ("s2", "192.0.2.42", 1)],
        )
        .service("203.0.113.40", "udp", 4789, Some(14789), "sticky")
}

fn rich_model() -> Model {
    let mut m = fresh(&rich_config());
    let at = |s: u64, ns: u32| UNIX_EPOCH + Duration::new(s, ns);
    let up = Some(Health::Up);
    let down = Some(Health::Down);
    set_health(
        &mut m,
        up,
        &[
            ("web", "nn1"),
            ("api", "a1"),
            ("api", "a3"),
            ("sticky", "s2"),
        ],
    );
    set_health(
        &mut m,
        down,
        &[("web", "nn2"), ("cold", "c1"), ("sticky", "s1")],
    );
    set_health(&mut m, up, &[("sticky", "s1")]);
    let nn1 = state(&mut m, "web", "nn1");
    nn1.rtt = Some(Duration::from_nanos(1_234_567));
    nn1.changed = at(1_700_000_000, 123_456_789);
    let nn2 = state(&mut m, "web", "nn2");
    nn2.disabled = true;
    nn2.changed = at(1_700_000_001, 1);
    state(&mut m, "api", "a1").rtt = Some(Duration::from_micros(80));
    state(&mut m, "cold", "c1").changed = at(1_700_000_002, 999_999_999);
    m.decide_all();
    m
}

/// Guards restarts: the pinned maps alone give back the ids, each path's health (up, down and
/// unknown), drain, RTT (to the microsecond the maps keep) and change time (to the nanosecond),
/// and the decisions in force. The restarted daemon's model keeps them: no known path goes back
/// to unknown (which would mean down until probed), no decision is recomputed from scratch (the
/// sticky target stays on s2), and nothing needs writing.
#[test]
fn a_restart_recovers_ids_states_and_decisions() {
    let m = rich_model();
    let nn2 = path_id(&m, "web", "nn2");
    let decision = |m: &Model, t: &str| m.decisions[&target_id(m, t)].clone();
    assert_eq!(
        decision(&m, "web"),
        Decision::Single(path_id(&m, "web", "nn1"))
    );
    assert!(matches!(decision(&m, "api"), Decision::Ring(_)));
    assert_eq!(decision(&m, "cold"), Decision::None);
    assert_eq!(
        decision(&m, "sticky"),
        Decision::Single(path_id(&m, "sticky", "s2"))
    );
    assert_eq!(m.paths[&path_id(&m, "api", "a2")].health, None);

    let pinned = m.tables();
    let recovered = Model::from_tables(&pinned, |id| admin(id == nn2));
    assert_eq!(recovered.ids, m.ids);
    assert_eq!(
        recovered.paths.keys().collect::<Vec<_>>(),
        m.paths.keys().collect::<Vec<_>>()
    );
    for (id, s) in &m.paths {
        let r = &recovered.paths[id];
        let name = m.path_name(*id);
        assert_eq!(r.health, s.health, "{name:?}");
        assert_eq!(r.disabled, s.disabled, "{name:?}");
        assert_eq!(r.changed, s.changed, "{name:?}");
        match (s.rtt, r.rtt) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(a.abs_diff(b) < Duration::from_micros(1), "{name:?}"),
            other => panic!("{name:?}: rtt {other:?}"),
        }
    }
    assert_eq!(recovered.decisions, m.decisions);

    let restarted = Model::new(rich_config().config(), &recovered).expect("fits");
    assert_eq!(restarted.ids, m.ids);
    for (id, s) in &m.paths {
        let r = &restarted.paths[id];
        assert_eq!((r.health, r.disabled), (s.health, s.disabled), "{id}");
    }
    assert_eq!(restarted.decisions, m.decisions);
    assert_eq!(restarted.tables(), pinned);
    let mut store = store_holding(&pinned);
    assert_eq!(
        apply(&mut store, &pinned, &restarted.tables()).ok(),
        Some(0)
    );
}

// ---- 5. Decisions as the maps see them. ----

/// Guards the decisions through the model and `tables()`: a failover target follows priority
/// (not the listed order, nor the id), writes PATH_DOWN for a down path and SINGLE on the
/// survivor, and NONE when the only up path is drained and all_down is drop; an active/active
/// target gets a full ring over its usable paths only.
#[test]
fn decisions_reach_the_tables() {
    // nn2 is listed first, so it has the lower id: only the priority makes nn1 preferred.
    let cfg = Cfg::new()
        .target(
            "vm",
            failover(),
            &[("nn2", "192.0.2.2", 20), ("nn1", "192.0.2.1", 10)],
        )
        .target(
            "aa",
            active_active(),
            &[
                ("p1", "192.0.2.11", 0),
                ("p2", "192.0.2.12", 0),
                ("p3", "192.0.2.13", 0),
                ("p4", "192.0.2.14", 0),
                ("p5", "192.0.2.15", 0),
            ],
        )
        .vip("203.0.113.10", "vm")
        .vip("203.0.113.11", "aa");
    let mut m = fresh(&cfg);
    let (vm, nn1, nn2) = (
        target_id(&m, "vm"),
        path_id(&m, "vm", "nn1"),
        path_id(&m, "vm", "nn2"),
    );
    assert!(nn2 < nn1);
    let single = TargetValue::single;

    // Nothing known yet: nothing chosen.
    assert_eq!(m.decisions[&vm], Decision::None);
    assert_eq!(m.tables().targets[&vm].mode, TARGET_MODE_NONE);

    set_health(&mut m, Some(Health::Up), &[("vm", "nn1"), ("vm", "nn2")]);
    assert_eq!(m.decisions[&vm], Decision::Single(nn1));
    assert_eq!(m.tables().targets[&vm], single(nn1));

    set_health(&mut m, Some(Health::Down), &[("vm", "nn1")]);
    assert_eq!(m.decisions[&vm], Decision::Single(nn2));
    let t = m.tables();
    assert_eq!(t.paths[&nn1].state, PATH_DOWN);
    assert_eq!(t.paths[&nn2].state, PATH_UP);
    assert_eq!(t.targets[&vm], single(nn2));

    state(&mut m, "vm", "nn2").disabled = true;
    m.decide_all();
    assert_eq!(m.decisions[&vm], Decision::None);
    let t = m.tables();
    assert_eq!(t.paths[&nn2].state, PATH_DISABLED);
    assert_eq!(t.targets[&vm], TargetValue::none());

    // Active/active: p1 and p5 up; p2 down, p3 unknown, p4 up but drained.
    set_health(
        &mut m,
        Some(Health::Up),
        &[("aa", "p1"), ("aa", "p4"), ("aa", "p5")],
    );
    set_health(&mut m, Some(Health::Down), &[("aa", "p2")]);
    state(&mut m, "aa", "p4").disabled = true;
    m.decide_all();
    let aa = target_id(&m, "aa");
    let t = m.tables();
    assert_eq!(t.targets[&aa].mode, TARGET_MODE_RING);
    assert_eq!(t.targets[&aa].active, NO_ID);
    let ring = &t.rings[&(aa, t.targets[&aa].ring_half)];
    assert_eq!(ring.len(), RING_SIZE as usize);
    let used: BTreeSet<u32> = ring.iter().copied().collect();
    let usable = BTreeSet::from([path_id(&m, "aa", "p1"), path_id(&m, "aa", "p5")]);
    assert_eq!(used, usable);
    assert_eq!(m.decisions[&aa], Decision::Ring(ring.clone()));
    assert!(
        t.rings.keys().all(|(id, _)| *id == aa),
        "no ring for a single-mode target"
    );
}

// ---- 6. Reverse NAT. ----

/// Guards the reverse-NAT entries: a reply is found by (path address, protocol, the port the VM
/// answers from) and restores the VIP's address and port. Whole address: (addr, 0, 0), port
/// kept (vip_port 0); translated tcp/443 → 8443: keyed on 8443, restores 443; a service without
/// translation (none given, or the same port given) keys on its own port.
#[test]
fn reverse_nat_entries() {
    let cfg = Cfg::new()
        .target(
            "web",
            failover(),
            &[("nn1", "192.0.2.1", 0), ("nn2", "192.0.2.2", 1)],
        )
        .vip("203.0.113.10", "web")
        .service("203.0.113.11", "tcp", 443, Some(8443), "web")
        .service("203.0.113.12", "udp", 53, None, "web")
        .service("203.0.113.13", "tcp", 80, Some(80), "web");
    let m = fresh(&cfg);
    let t = m.tables();
    // (address, service, the port on the VM when translated)
    let vips: [(&str, Service, Option<u16>); 4] = [
        ("203.0.113.10", None, None),
        ("203.0.113.11", Some((IPPROTO_TCP, 443)), Some(8443)),
        ("203.0.113.12", Some((IPPROTO_UDP, 53)), None),
        ("203.0.113.13", Some((IPPROTO_TCP, 80)), None),
    ];
    let mut expected = BTreeMap::new();
    for (address, service, target_port) in vips {
        let vid = vip_id(&m, address, service);
        let info = t.vips[&vid];
        assert_eq!(info.key, key(address, service));
        assert_eq!(info.target, target_id(&m, "web"));
        assert_eq!(info.target_port, target_port.unwrap_or(0).to_be_bytes());
        for path in ["nn1", "nn2"] {
            let pid = path_id(&m, "web", path);
            let std::net::IpAddr::V4(addr) = t.paths[&pid].ip() else {
                panic!("an IPv4 path");
            };
            let reply = service.map(|(proto, port)| (proto, target_port.unwrap_or(port)));
            expected.insert(
                EndpointKey::new(addr, reply),
                RevValue {
                    vip_addr: address.parse::<Ipv4Addr>().expect("address").octets(),
                    vip_port: service.map_or(0, |(_, port)| port).to_be_bytes(),
                    // Every service shares its path addresses with the whole-address VIP.
                    flags: if service.is_some() {
                        lb_common::maps::REV_F_SHADOWS_WHOLE
                    } else {
                        0
                    },
                    vip_rank: m.ids.vip_ranks[&key(address, service)],
                    vip_id: vid,
                    path: pid,
                },
            );
        }
    }
    assert_eq!(t.rev_nat, expected);

    // The same, spelled out for the translated service on nn1.
    let rev = t.rev_nat[&EndpointKey::service([192, 0, 2, 1], IPPROTO_TCP, 8443u16.to_be_bytes())];
    assert_eq!(
        (rev.vip_addr, u16::from_be_bytes(rev.vip_port)),
        ([203, 0, 113, 11], 443)
    );
    let whole = t.rev_nat[&EndpointKey::addr([192, 0, 2, 2])];
    assert_eq!(
        (whole.vip_addr, whole.vip_port),
        ([203, 0, 113, 10], [0, 0])
    );
}

// ---- 7. Address changes. ----

/// Guards a path whose address changes: what was known of the old address means nothing for
/// the new one (health unknown, RTT forgotten), but an operator's drain stays. Both on a reload
/// and on a restart (where the old address comes from the pinned maps).
#[test]
fn a_changed_address_starts_unknown_but_stays_drained() {
    let mut a = model_a();
    let nn1 = path_id(&a, "web", "nn1");
    let nn2 = path_id(&a, "web", "nn2");
    let s = state(&mut a, "web", "nn1");
    s.disabled = true;
    s.rtt = Some(Duration::from_micros(300));
    set_health(&mut a, Some(Health::Up), &[("web", "nn2")]);
    let moved = config_a().edit_path("web", "nn1", |p| p["address"] = json!("192.0.2.101"));

    let restarted_from = Model::from_tables(&a.tables(), |id| admin(id == nn1));
    for previous in [&a, &restarted_from] {
        let b = Model::new(moved.config(), previous).expect("fits");
        assert_eq!(b.ids, a.ids);
        let s = &b.paths[&nn1];
        assert_eq!((s.health, s.disabled, s.rtt), (None, true, None));
        assert_eq!(
            b.paths[&nn2].health,
            Some(Health::Up),
            "the other path keeps"
        );
        let t = b.tables();
        assert_eq!(
            t.paths[&nn1].addr,
            lb_common::maps::mapped([192, 0, 2, 101])
        );
        assert_eq!(t.paths[&nn1].state, PATH_DISABLED);
        assert_eq!(t.path_meta[&nn1].health, HEALTH_UNKNOWN);
        assert_eq!(t.path_meta[&nn1].rtt_us, 0);
        assert_eq!(b.decisions[&target_id(&b, "web")], Decision::Single(nn2));
    }
}

// ---- 8. The model the CLI rebuilds. ----

/// Guards `Model::from_tables` as the CLI uses it with no daemon (`lb path disable` applies the
/// rebuilt model's `tables()`): the configuration as the maps record it gives back the very
/// same tables (no VIP, reverse-NAT entry, ring or meta lost), and deciding on the rebuilt
/// model after a drain writes what the daemon's model would, and nothing else.
#[test]
fn the_model_rebuilt_from_the_maps_gives_the_same_tables() {
    let m = rich_model();
    let pinned = m.tables();
    let rebuilt = Model::from_tables(&pinned, |id| m.paths[&id].admin());
    assert_eq!(rebuilt.tables(), pinned);

    // What the maps record of the configuration: everything but probes and interfaces.
    let shape = |c: &Config| {
        let mut targets: Vec<String> = c
            .targets
            .iter()
            .map(|t| {
                let mut paths: Vec<String> = t
                    .paths
                    .iter()
                    .map(|p| format!("{} {} {} {}", p.name, p.address, p.priority, p.weight))
                    .collect();
                paths.sort();
                format!(
                    "{} {:?} {} {:?} {paths:?}",
                    t.name, t.mode, t.preempt, t.all_down
                )
            })
            .collect();
        targets.sort();
        let mut vips: Vec<String> = c.vips.iter().map(|v| format!("{v:?}")).collect();
        vips.sort();
        (targets, vips)
    };
    assert_eq!(shape(&rebuilt.config), shape(&m.config));

    // `lb path disable web nn1` with no daemon, against the daemon doing the same.
    let nn1 = path_id(&m, "web", "nn1");
    let web = target_id(&m, "web");
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut daemon = m.clone();
    let mut cli = rebuilt;
    for model in [&mut daemon, &mut cli] {
        let s = model.paths.get_mut(&nn1).expect("nn1");
        s.disabled = true;
        s.changed = at;
        model.decide("web");
    }
    let desired = cli.tables();
    assert_eq!(desired, daemon.tables());
    assert_eq!(
        cli.decisions[&web],
        Decision::None,
        "nn2 is down and drained"
    );
    let mut store = store_holding(&pinned);
    apply(&mut store, &pinned, &desired).expect("writes");
    assert_eq!(
        sorted(store.log.clone()),
        sorted(vec![
            format!("path {nn1}"),
            format!("path-meta {nn1}"),
            format!("target {web}"),
        ])
    );
    assert_eq!(store.read(), desired);
}
// ---- Freed ids and names at the edge of the maps. ----

/// Guards a drain against outliving its path: a reload that removes the drained web/nn2 and
/// adds web/nn3 in the same go does not give nn3 the freed id 1 (quarantined for this
/// generation), and nn3 does not start drained; the next reload may give id 1 to a new path,
/// which does not start drained either (nobody drained it).
#[test]
fn a_new_path_on_a_freed_id_is_not_born_drained() {
    let mut a = model_a();
    state(&mut a, "web", "nn2").disabled = true;
    a.decide_all();
    let freed = path_id(&a, "web", "nn2");
    let next = config_a()
        .without_path("web", "nn2")
        .add_path("web", ("nn3", "192.0.2.3", 30));
    let b = Model::new(next.config(), &a).expect("fits");
    assert_ne!(
        path_id(&b, "web", "nn3"),
        freed,
        "quarantined for one generation"
    );
    assert_eq!(b.paths[&path_id(&b, "web", "nn3")], PathState::default());
    let c = Model::new(next.add_path("web", ("nn4", "192.0.2.4", 40)).config(), &b).expect("fits");
    assert_eq!(
        path_id(&c, "web", "nn4"),
        freed,
        "free again a generation later"
    );
    assert_eq!(c.paths[&freed], PathState::default());
}

/// Names reach the maps at up to `NAME_LEN` (32) bytes (longer ones are rejected by the
/// configuration: `config.rs`, `names_fit_the_pinned_maps`): the maps are where a restarted
/// daemon and the CLI find targets and paths by name, so two names that differ only in their
/// 32nd byte must come back from the tables as two, with their own VIPs and paths.
#[test]
fn names_of_the_full_length_survive_the_maps() {
    let (one, two) = (
        "customer-production-web-fronte-1",
        "customer-production-web-fronte-2",
    );
    assert_eq!((one.len(), two.len()), (32, 32));
    let path = "path-name-of-exactly-32-bytes-p1";
    assert_eq!(path.len(), 32);
    let cfg = Cfg::new()
        .target(one, failover(), &[(path, "192.0.2.1", 0)])
        .target(two, failover(), &[(path, "192.0.2.2", 0)])
        .vip("203.0.113.1", one)
        .vip("203.0.113.2", two);
    let config = Config::from_json(&cfg.0.to_string()).expect("32-byte names are valid");
    let m = Model::new(config, &Model::empty()).expect("fits");
    assert_eq!(m.ids.targets.len(), 2);
    let rebuilt = Model::from_tables(&m.tables(), |_| Admin::Enabled);
    assert_eq!(rebuilt.ids, m.ids);
    assert_eq!(rebuilt.tables(), m.tables());
    assert!(rebuilt.ids.targets.contains_key(one) && rebuilt.ids.targets.contains_key(two));
    assert!(
        rebuilt
            .ids
            .paths
            .contains_key(&(two.to_owned(), path.to_owned()))
    );
}

/// A decision that moves away from a path still up keeps the one in force as the previous
/// decision (failback with preempt, a ring change); one whose path went down or was disabled
/// keeps none. Rings alternate halves so the previous one stays where the datapath reads it.
#[test]
fn decision_changes_keep_the_previous_decision_while_its_path_is_up() {
    let cfg = Cfg::new()
        .target(
            "vm",
            failover(),
            &[("nn1", "192.0.2.1", 10), ("nn2", "192.0.2.2", 20)],
        )
        .target(
            "aa",
            active_active(),
            &[("p1", "192.0.2.11", 0), ("p2", "192.0.2.12", 0)],
        )
        .vip("203.0.113.10", "vm")
        .vip("203.0.113.11", "aa");
    let mut m = fresh(&cfg);
    let (vm, nn1, nn2) = (
        target_id(&m, "vm"),
        path_id(&m, "vm", "nn1"),
        path_id(&m, "vm", "nn2"),
    );
    set_health(&mut m, Some(Health::Up), &[("vm", "nn1"), ("vm", "nn2")]);
    assert!(
        !m.transitions.contains_key(&vm),
        "from nothing: no transition"
    );
    // nn1 fails: its connections cannot be kept, no transition.
    set_health(&mut m, Some(Health::Down), &[("vm", "nn1")]);
    assert_eq!(m.tables().targets[&vm], TargetValue::single(nn2));
    // nn1 heals, preempt moves back while nn2 is up: nn2 is the previous decision.
    set_health(&mut m, Some(Health::Up), &[("vm", "nn1")]);
    let t = m.tables();
    assert_eq!(
        t.targets[&vm],
        TargetValue::single(nn1).with_previous(&TargetValue::single(nn2))
    );
    assert_ne!(t.target_meta[&vm].transition_ns, 0);
    // Ended after `tcp_idle`: the previous decision goes.
    let since = m.transitions[&vm].since;
    assert!(
        m.end_transitions(since + Duration::from_secs(1), Duration::from_secs(2))
            .is_empty()
    );
    assert_eq!(
        m.end_transitions(since + Duration::from_secs(2), Duration::from_secs(2)),
        [vm]
    );
    assert_eq!(m.tables().targets[&vm], TargetValue::single(nn1));
    assert_eq!(m.tables().target_meta[&vm].transition_ns, 0);

    // Active/active: p2 joins a ring of p1; the new ring goes to the other half, the old one
    // stays as the previous decision.
    let aa = target_id(&m, "aa");
    set_health(&mut m, Some(Health::Up), &[("aa", "p1")]);
    let first = m.tables().targets[&aa];
    assert!(!first.in_transition());
    set_health(&mut m, Some(Health::Up), &[("aa", "p2")]);
    let t = m.tables();
    let v = t.targets[&aa];
    assert_eq!((v.mode, v.prev_mode), (TARGET_MODE_RING, TARGET_MODE_RING));
    assert_eq!(v.ring_half, first.ring_half ^ 1);
    let p1 = path_id(&m, "aa", "p1");
    assert!(t.rings[&(aa, v.ring_half ^ 1)].iter().all(|p| *p == p1));
    assert!(t.rings[&(aa, v.ring_half)].iter().any(|p| *p != p1));
    // The model read back from the maps has the same transition.
    let back = Model::from_tables(&t, |_| Admin::Enabled);
    assert_eq!(back.tables().targets[&aa], v);
    assert_eq!(back.tables().rings, t.rings);
}

/// Guards the graceful drain: a draining path takes no new flows, but stays up in the path
/// table and becomes the previous decision, so established TCP connections keep it; the
/// drain survives a restart (through `LB_ADMIN`) and ends as a disable, which moves them.
#[test]
fn a_drain_keeps_established_connections_and_ends_as_a_disable() {
    let cfg = Cfg::new()
        .target(
            "vm",
            failover(),
            &[("nn1", "192.0.2.1", 10), ("nn2", "192.0.2.2", 20)],
        )
        .vip("203.0.113.10", "vm");
    let mut m = fresh(&cfg);
    let (vm, nn1, nn2) = (
        target_id(&m, "vm"),
        path_id(&m, "vm", "nn1"),
        path_id(&m, "vm", "nn2"),
    );
    set_health(&mut m, Some(Health::Up), &[("vm", "nn1"), ("vm", "nn2")]);
    assert_eq!(m.decisions[&vm], Decision::Single(nn1));

    let until = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    m.paths
        .get_mut(&nn1)
        .expect("nn1")
        .apply_admin(Admin::Draining { until });
    m.decide("vm");
    let t = m.tables();
    assert_eq!(
        t.targets[&vm],
        TargetValue::single(nn2).with_previous(&TargetValue::single(nn1)),
        "new flows to nn2, established ones keep nn1"
    );
    assert_eq!(
        t.paths[&nn1].state, PATH_UP,
        "the datapath still sends to nn1"
    );

    // A restart reads the drain back from `LB_ADMIN`.
    let raw = m.paths[&nn1].admin().raw();
    assert_eq!(raw, 2_000_000_000);
    let back = Model::from_tables(&t, |id| {
        if id == nn1 {
            Admin::from_raw(raw)
        } else {
            Admin::Enabled
        }
    });
    assert_eq!(back.paths[&nn1].draining, Some(until));
    assert_eq!(back.tables().targets[&vm], t.targets[&vm]);

    // Ended: disabled, so its connections move; the previous decision had no other path.
    m.paths
        .get_mut(&nn1)
        .expect("nn1")
        .apply_admin(Admin::Disabled);
    m.decide("vm");
    let t = m.tables();
    assert_eq!(t.paths[&nn1].state, PATH_DISABLED);
    assert_eq!(t.targets[&vm].mode, TargetValue::single(nn2).mode);
    assert_eq!(t.targets[&vm].active, nn2);
    // Enabled again: preempt takes new flows back to nn1.
    m.paths
        .get_mut(&nn1)
        .expect("nn1")
        .apply_admin(Admin::Enabled);
    m.decide("vm");
    assert_eq!(m.decisions[&vm], Decision::Single(nn1));
}

// ---- Failed writes: planned, committed, undone. ----

/// Guards the commit: wherever a plan from A to C (VIPs, paths and a whole target added and
/// removed, a ring rebuilt, a VIP id reused) fails, what was written before is undone and the
/// maps hold A again, as the error says; nothing is left half-applied.
#[test]
fn a_failed_write_is_undone_wherever_it_fails() {
    let a = model_a();
    let b = Model::new(config_b().config(), &a).expect("fits");
    let c = model_c(&b);
    let (from, to) = (a.tables(), c.tables());
    let plan = lb_user::datapath::tables::Plan::new(&from, &to);
    assert!(plan.writes.len() > 10, "{:?}", plan.writes);
    for k in 0..plan.writes.len() {
        let mut store = store_holding(&from);
        store.fail = BTreeSet::from([store.calls + k]);
        let e = apply(&mut store, &from, &to).expect_err("the write fails");
        assert_eq!((e.index, e.total), (k, plan.writes.len()));
        assert!(e.undone.is_ok(), "write {k}: {e}");
        assert_eq!(store.read(), from, "write {k} ({}): undone", e.failed);
        assert_eq!(e.holds, from);
        let said = e.to_string();
        let in_force = if k == 0 {
            "nothing was written: the previous state is in force"
        } else {
            "were undone: the previous state is in force"
        };
        assert!(said.contains(in_force), "{said}");
        assert!(said.contains(&plan.writes[k].to_string()), "{said}");
    }
    // And without a failure, the plan is what `apply` writes.
    let mut store = store_holding(&from);
    assert_eq!(
        apply(&mut store, &from, &to).expect("writes"),
        plan.entries()
    );
    assert_eq!(store.read(), to);
}

/// When the undo fails too, the error says the maps hold a mix, and carries what they hold as
/// read back, so the next attempt starts from the truth.
#[test]
fn a_failed_undo_reads_back_what_the_maps_hold() {
    let a = model_a();
    let b = Model::new(config_b().config(), &a).expect("fits");
    let (from, to) = (a.tables(), b.tables());
    let mut store = store_holding(&from);
    // The fourth write fails, then the first write of its undo.
    store.fail = BTreeSet::from([store.calls + 3, store.calls + 4]);
    let e = apply(&mut store, &from, &to).expect_err("fails");
    assert!(e.undone.is_err());
    assert!(e.to_string().contains("hold a mix"), "{e}");
    assert_eq!(e.holds, store.read());
    assert_ne!(e.holds, from, "three writes stayed");
    // From there, a plan reaches either state.
    let holds = e.holds.clone();
    apply(&mut store, &holds, &to).expect("writes");
    assert_eq!(store.read(), to);
}

// ---- Several edges: the same choice everywhere. ----

/// What a target's current decision sends new flows to, by path name, as the maps hold it:
/// the active path, or the ring slot by slot.
fn choice_by_name(m: &Model, t: &Tables, target: &str) -> (u8, Vec<String>) {
    let tid = target_id(m, target);
    let v = t.targets[&tid];
    let name = |id: u32| {
        m.path_name(id)
            .map_or(format!("?{id}"), |(_, p)| p.to_string())
    };
    let slots = match v.mode {
        TARGET_MODE_RING => t.rings[&(tid, v.ring_half)]
            .iter()
            .map(|id| name(*id))
            .collect(),
        TARGET_MODE_NONE => Vec::new(),
        _ => vec![name(v.active)],
    };
    (v.mode, slots)
}

/// Two edges run one configuration but have lived different lives: edge B was started on
/// another configuration and reloaded (so its ids differ), and its paths came up in another
/// order. Given the same path states, their maps send every new flow to the same path: the
/// failover choice by name, and the consistent-hash table slot by slot (Maglev hashes path
/// names, never ids or anything of the host; the flow hash has a fixed seed, its vectors are
/// `lb_common::hash`'s tests).
#[test]
fn two_edges_with_one_configuration_make_the_same_choice_slot_by_slot() {
    let a = {
        let mut m = fresh(&config_a());
        set_health(&mut m, Some(Health::Up), &[("web", "nn1"), ("web", "nn2")]);
        set_health(
            &mut m,
            Some(Health::Up),
            &[("api", "a1"), ("api", "a2"), ("api", "a3")],
        );
        m
    };
    let b = {
        let mut m = fresh(&config_b());
        set_health(&mut m, Some(Health::Up), &[("db", "d1"), ("api", "a3")]);
        let mut m = Model::new(config_a().config(), &m).expect("fits");
        // Another order: nn2 first, then nn1 (a failback on this edge only); a3 before a1, a2.
        set_health(&mut m, Some(Health::Up), &[("web", "nn2")]);
        set_health(&mut m, Some(Health::Up), &[("web", "nn1")]);
        set_health(&mut m, Some(Health::Up), &[("api", "a1")]);
        set_health(&mut m, Some(Health::Up), &[("api", "a2")]);
        m
    };
    assert_ne!(a.ids, b.ids, "the edges' ids differ (the test's premise)");
    let (ta, tb) = (a.tables(), b.tables());
    for target in ["web", "api"] {
        let (ca, cb) = (
            choice_by_name(&a, &ta, target),
            choice_by_name(&b, &tb, target),
        );
        assert_eq!(ca.0, cb.0, "{target}: mode");
        assert_eq!(ca.1.len(), cb.1.len(), "{target}: slots");
        let differ = ca.1.iter().zip(&cb.1).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ, 0,
            "{target}: {differ} slots differ between the edges"
        );
    }
    assert_eq!(choice_by_name(&a, &ta, "web").1, ["nn1"]);
    assert_eq!(choice_by_name(&a, &ta, "api").1.len(), RING_SIZE as usize);

    // The same after a path fails on both edges.
    let (mut a, mut b) = (a, b);
    for m in [&mut a, &mut b] {
        set_health(m, Some(Health::Down), &[("api", "a2"), ("web", "nn1")]);
    }
    let (ta, tb) = (a.tables(), b.tables());
    for target in ["web", "api"] {
        assert_eq!(
            choice_by_name(&a, &ta, target),
            choice_by_name(&b, &tb, target),
            "{target} after a2 and nn1 failed"
        );
    }
}

// ---- IPv6: dual stack. ----

/// Configuration A plus an IPv6 target `web6` (active/active over two IPv6 paths) with an IPv6
/// whole-address VIP and an IPv6 service translated 443 → 8443 on the same address.
fn config_dual() -> Cfg {
    config_a()
        .target(
            "web6",
            active_active(),
            &[("v1", "2001:db8:1::1", 0), ("v2", "2001:db8:2::1", 1)],
        )
        .vip("2001:db8:ff::10", "web6")
        .service("2001:db8:ff::11", "tcp", 443, Some(8443), "web6")
}

fn model_dual() -> Model {
    let mut m = Model::new(config_dual().config(), &model_a()).expect("fits");
    set_health(&mut m, Some(Health::Up), &[("web6", "v1"), ("web6", "v2")]);
    m
}

fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>()
        .expect("an IPv6 address")
        .octets()
}

/// Guards the IPv6 half of `Model::tables`: an IPv6 VIP's reverse-NAT entries go to
/// `LB_REV_NAT6` (keyed by the IPv6 path address, restoring the IPv6 VIP), its addresses to
/// `LB_ADDRS6`, its paths hold their own 16 bytes (never IPv4-mapped), and nothing of it leaks
/// into the IPv4 tables; the IPv4 half is what configuration A alone gives.
#[test]
fn an_ipv6_vip_fills_the_ipv6_tables() {
    let m = model_dual();
    let t = m.tables();
    let a = model_a().tables();
    assert_eq!(t.rev_nat, a.rev_nat, "the IPv4 reverse NAT is untouched");
    assert_eq!(t.addrs, a.addrs, "the IPv4 addresses are untouched");

    let web6 = target_id(&m, "web6");
    let mut expected = BTreeMap::new();
    let vips: [(&str, Service, Option<u16>); 2] = [
        ("2001:db8:ff::10", None, None),
        ("2001:db8:ff::11", Some((IPPROTO_TCP, 443)), Some(8443)),
    ];
    for (address, service, target_port) in vips {
        let vid = vip_id(&m, address, service);
        let info = t.vips[&vid];
        assert_eq!(info.key, key(address, service));
        assert_eq!(info.key.addr, v6(address), "held as is, not mapped");
        assert_eq!(info.target, web6);
        for (path, path_address) in [("v1", "2001:db8:1::1"), ("v2", "2001:db8:2::1")] {
            let pid = path_id(&m, "web6", path);
            assert_eq!(t.paths[&pid].addr, v6(path_address));
            assert_eq!(t.paths[&pid].ip(), path_address.parse::<IpAddr>().unwrap());
            let reply = service.map(|(proto, port)| (proto, target_port.unwrap_or(port)));
            expected.insert(
                EndpointKey6::with(v6(path_address), reply),
                lb_common::maps::RevValue6 {
                    vip_addr: v6(address),
                    vip_port: service.map_or(0, |(_, port)| port).to_be_bytes(),
                    // The service shares its path addresses with the whole-address VIP.
                    flags: if service.is_some() {
                        lb_common::maps::REV_F_SHADOWS_WHOLE
                    } else {
                        0
                    },
                    vip_rank: m.ids.vip_ranks[&key(address, service)],
                    vip_id: vid,
                    path: pid,
                },
            );
        }
    }
    assert_eq!(t.rev_nat6, expected);
    let addrs6: BTreeMap<[u8; 16], u32> = [
        ("2001:db8:1::1", lb_common::maps::ADDR_PATH),
        ("2001:db8:2::1", lb_common::maps::ADDR_PATH),
        ("2001:db8:ff::10", lb_common::maps::ADDR_VIP),
        ("2001:db8:ff::11", lb_common::maps::ADDR_VIP),
    ]
    .into_iter()
    .map(|(a, k)| (v6(a), k))
    .collect();
    assert_eq!(t.addrs6, addrs6);
    assert_eq!(
        m.decisions[&web6],
        Decision::Ring(t.rings[&(web6, t.targets[&web6].ring_half)].clone())
    );
}

/// Guards the write order for IPv6 VIPs (the same rule as IPv4): added to maps holding A, each
/// new IPv6 VIP is written after its target, paths and `LB_REV_NAT6` entries and before the
/// pre-filter refresh, its addresses go to `LB_ADDRS6`, and nothing else is written; what the
/// store holds reads back as the tables, and as the model the CLI rebuilds from them.
#[test]
fn a_new_ipv6_vip_is_written_after_everything_it_leads_to() {
    let a = model_a();
    let current = a.tables();
    let next = model_dual();
    let desired = next.tables();
    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    let mut all = vec!["filter".to_string()];
    for address in ["2001:db8:ff::10", "2001:db8:ff::11"] {
        let service = (address == "2001:db8:ff::11").then_some((IPPROTO_TCP, 443));
        let vid = vip_id(&next, address, service);
        let entry = format!("vip {vid}");
        let mut first = leads_to(&desired, vid);
        for (k, rev) in &desired.rev_nat6 {
            if rev.vip_id == vid {
                first.push(format!("rev {}", k.ip()));
            }
        }
        for f in &first {
            assert_before(&store.log, f, &entry);
        }
        assert_before(&store.log, &entry, "filter");
        all.extend(first);
        all.push(entry);
    }
    for a in desired.addrs6.keys() {
        let entry = format!("addr {}", std::net::Ipv6Addr::from(*a));
        assert_before(&store.log, &entry, "filter");
        all.push(entry);
    }
    all.sort();
    all.dedup();
    let mut log = sorted(store.log.clone());
    log.dedup();
    assert_eq!(log, all, "nothing else");
    // One write per reverse-NAT entry (an address has one for each of its VIPs' services).
    let revs = store.log.iter().filter(|e| e.starts_with("rev ")).count();
    assert_eq!(revs, desired.rev_nat6.len());
    assert_eq!(store.read(), desired);
    assert!(store.vip_keys.contains(&key("2001:db8:ff::10", None)));

    // `lb status` and `lb path` without a daemon: the IPv6 half survives the maps.
    let rebuilt = Model::from_tables(&desired, |_| Admin::Enabled);
    assert_eq!(rebuilt.tables(), desired);
    let web6 = rebuilt.config.target("web6").expect("web6 rebuilt");
    assert_eq!(
        web6.paths
            .iter()
            .map(|p| p.address.to_string())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["2001:db8:1::1".to_string(), "2001:db8:2::1".to_string()])
    );
    assert!(
        rebuilt
            .config
            .vips
            .iter()
            .any(|v| v.address.to_string() == "2001:db8:ff::10")
    );
}

/// Guards removal on reload for IPv6: the VIP goes before its `LB_REV_NAT6` entries, both
/// before its target and paths are zeroed, the IPv6 addresses leave `LB_ADDRS6`, and the
/// pre-filter is refreshed once they are gone.
#[test]
fn a_removed_ipv6_vip_goes_before_what_it_led_to() {
    let dual = model_dual();
    let current = dual.tables();
    let next = Model::new(config_a().config(), &dual).expect("fits");
    let desired = next.tables();
    assert!(desired.rev_nat6.is_empty() && desired.addrs6.is_empty());
    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    let log = &store.log;
    let web6 = target_id(&dual, "web6");
    for (vip, service) in [
        ("2001:db8:ff::10", None),
        ("2001:db8:ff::11", Some((IPPROTO_TCP, 443))),
    ] {
        let gone = format!("-vip {}", vip_id(&dual, vip, service));
        for p in ["v1", "v2"] {
            let id = path_id(&dual, "web6", p);
            let rev = format!("-rev {}", address(&dual, "web6", p));
            assert_before(log, &gone, &rev);
            assert_before(log, &rev, "filter");
            assert_before(log, &rev, &format!("path {id}"));
        }
        assert_before(log, &gone, &format!("target {web6}"));
        let addr = format!("-addr {vip}");
        assert_before(log, &addr, "filter");
    }
    assert_eq!(store.read(), desired);
}

/// Guards the commit for dual stack: wherever a plan that adds the IPv6 half (and one that
/// takes it away again) fails, what was written is undone and the maps hold what they held.
#[test]
fn a_failed_ipv6_write_is_undone_wherever_it_fails() {
    let (a, dual) = (model_a().tables(), model_dual().tables());
    for (from, to) in [(&a, &dual), (&dual, &a)] {
        let plan = lb_user::datapath::tables::Plan::new(from, to);
        assert!(
            plan.writes
                .iter()
                .any(|w| w.to_string().contains("2001:db8")),
            "{:?}",
            plan.writes
        );
        for k in 0..plan.writes.len() {
            let mut store = store_holding(from);
            store.fail = BTreeSet::from([store.calls + k]);
            let e = apply(&mut store, from, to).expect_err("the write fails");
            assert!(e.undone.is_ok(), "write {k}: {e}");
            assert_eq!(store.read(), *from, "write {k} ({}): undone", e.failed);
        }
    }
}

// ---- Dual stack: one target with paths and VIPs of both families. ----

use lb_user::config::Family;

/// Configuration A with IPv6 paths and VIPs added to its targets: `web` (failover) gains v1 and
/// v2 and an IPv6 whole-address VIP and service (the same service as its IPv4 one), `api`
/// (active/active) gains b1 and b2 and an IPv6 service.
fn config_mixed() -> Cfg {
    config_a()
        .add_path("web", ("v1", "2001:db8:1::1", 10))
        .add_path("web", ("v2", "2001:db8:2::1", 20))
        .add_path("api", ("b1", "2001:db8:11::1", 0))
        .add_path("api", ("b2", "2001:db8:12::1", 1))
        .vip("2001:db8:ff::10", "web")
        .service("2001:db8:ff::11", "tcp", 443, Some(8443), "web")
        .service("2001:db8:ff::20", "udp", 53, None, "api")
}

/// A reloaded to the mixed configuration, its IPv6 paths up.
fn model_mixed() -> Model {
    let mut m = Model::new(config_mixed().config(), &model_a()).expect("fits");
    set_health(
        &mut m,
        Some(Health::Up),
        &[("web", "v1"), ("web", "v2"), ("api", "b1"), ("api", "b2")],
    );
    m
}

/// The target id serving `target`'s paths and VIPs of `family`.
#[track_caller]
fn family_id(m: &Model, target: &str, family: Family) -> u32 {
    m.ids
        .targets
        .serving(target, family)
        .expect("the target has an id for the family")
}

/// Path names of target id `tid`, as the model chooses among them.
fn path_names(m: &Model, tid: u32) -> Vec<String> {
    m.paths_of(tid).iter().map(|p| p.name.clone()).collect()
}

/// Guards the ids of a target with paths of both families: one target id per family, each
/// holding that family's paths (their `target` in `LB_PATHS`) and the same name and policy in
/// its meta; the IPv4 half keeps the id the target had, a target of one family keeps its one
/// id, and a path keeps its one id.
#[test]
fn a_target_of_both_families_gets_an_id_per_family() {
    let a = model_a();
    let m = model_mixed();
    let (web4, web6) = (
        family_id(&m, "web", Family::V4),
        family_id(&m, "web", Family::V6),
    );
    assert_ne!(web4, web6);
    assert_eq!(
        m.ids.targets.of("web").collect::<Vec<_>>(),
        [(Some(Family::V4), web4), (Some(Family::V6), web6)]
    );
    assert_eq!(
        web4,
        target_id(&a, "web"),
        "the IPv4 half keeps the target's id"
    );
    assert!(!a.ids.targets.values().any(|id| id == web6), "a new id");
    assert_eq!(m.ids.targets.len(), 4, "web and api, two each");
    assert_eq!(path_names(&m, web4), ["nn1", "nn2"]);
    assert_eq!(path_names(&m, web6), ["v1", "v2"]);
    assert_eq!(m.target_name(web6), Some("web"));
    assert_eq!(m.target_label(web6), "web (IPv6)");
    for (target, path) in [("web", "nn1"), ("web", "nn2"), ("api", "a1")] {
        assert_eq!(path_id(&m, target, path), path_id(&a, target, path));
    }

    let t = m.tables();
    for (path, tid) in [("nn1", web4), ("nn2", web4), ("v1", web6), ("v2", web6)] {
        assert_eq!(t.paths[&path_id(&m, "web", path)].target, tid, "{path}");
    }
    let api6 = family_id(&m, "api", Family::V6);
    for (path, family) in [("a1", Family::V4), ("b1", Family::V6), ("b2", Family::V6)] {
        assert_eq!(
            t.paths[&path_id(&m, "api", path)].target,
            family_id(&m, "api", family),
            "{path}"
        );
    }
    assert_eq!(
        t.target_meta[&web4], t.target_meta[&web6],
        "one name, one policy"
    );
    assert_eq!(t.target_meta[&api6], t.target_meta[&target_id(&a, "api")]);

    // A target of one family keeps its one id, whatever the family.
    let single = fresh(&config_dual());
    assert_eq!(
        single.ids.targets.of("web6").collect::<Vec<_>>(),
        [(None, target_id(&single, "web6"))]
    );
}

/// Guards what each VIP leads to: its family's target id, and reverse NAT only from its
/// family's paths. The IPv4 half of the maps is exactly what configuration A alone gives.
#[test]
fn each_vip_points_at_its_familys_target_id() {
    let m = model_mixed();
    let t = m.tables();
    let a = model_a().tables();
    let vips: [(&str, Service, &str, Family); 5] = [
        ("203.0.113.10", None, "web", Family::V4),
        ("203.0.113.11", Some((IPPROTO_TCP, 443)), "web", Family::V4),
        ("203.0.113.20", Some((IPPROTO_UDP, 53)), "api", Family::V4),
        ("2001:db8:ff::10", None, "web", Family::V6),
        (
            "2001:db8:ff::11",
            Some((IPPROTO_TCP, 443)),
            "web",
            Family::V6,
        ),
    ];
    for (address, service, target, family) in vips {
        let vid = vip_id(&m, address, service);
        assert_eq!(
            t.vips[&vid].target,
            family_id(&m, target, family),
            "{address}"
        );
    }
    let api6 = family_id(&m, "api", Family::V6);
    assert_eq!(
        t.vips[&vip_id(&m, "2001:db8:ff::20", Some((IPPROTO_UDP, 53)))].target,
        api6
    );
    // IPv4: untouched. IPv6: each IPv6 path answers for its target's IPv6 VIPs only.
    assert_eq!(t.rev_nat, a.rev_nat);
    for (id, v) in &a.vips {
        assert_eq!(t.vips[id], *v, "IPv4 VIP {id}");
    }
    assert_eq!(t.rev_nat6.len(), 2 * 2 + 2);
    for (k, rev) in &t.rev_nat6 {
        let (target, path) = m.path_name(rev.path).expect("a path");
        let family = Family::of(k.ip());
        assert_eq!(family, Family::V6);
        assert_eq!(t.paths[&rev.path].target, family_id(&m, target, family));
        assert_eq!(
            t.vips[&rev.vip_id].target, t.paths[&rev.path].target,
            "{path}"
        );
    }
}

/// Guards failover per family: each family's id follows priority and preempt among its own
/// paths; an IPv4 path going down moves the IPv4 decision and leaves the IPv6 one (and its
/// map entry) alone, and the reverse; every IPv4 path down drops IPv4 (`all_down: drop`) while
/// IPv6 is served, and only the IPv6 address stays announceable.
#[test]
fn failover_is_decided_per_family() {
    let mut m = model_mixed();
    let (web4, web6) = (
        family_id(&m, "web", Family::V4),
        family_id(&m, "web", Family::V6),
    );
    let id = |m: &Model, p: &str| path_id(m, "web", p);
    set_health(&mut m, Some(Health::Up), &[("web", "nn2")]);
    assert_eq!(m.decisions[&web4], Decision::Single(id(&m, "nn1")));
    assert_eq!(m.decisions[&web6], Decision::Single(id(&m, "v1")));
    let before = m.tables();

    state(&mut m, "web", "nn1").health = Some(Health::Down);
    assert_eq!(m.decide("web"), [web4], "only the IPv4 decision changed");
    assert_eq!(m.decisions[&web4], Decision::Single(id(&m, "nn2")));
    assert_eq!(m.decisions[&web6], Decision::Single(id(&m, "v1")));
    assert!(!m.transitions.contains_key(&web6));
    let t = m.tables();
    assert_eq!(t.targets[&web4], TargetValue::single(id(&m, "nn2")));
    assert_eq!(t.targets[&web6], before.targets[&web6]);

    state(&mut m, "web", "v1").health = Some(Health::Down);
    assert_eq!(m.decide("web"), [web6]);
    assert_eq!(m.decisions[&web4], Decision::Single(id(&m, "nn2")));
    assert_eq!(m.decisions[&web6], Decision::Single(id(&m, "v2")));

    // nn1 back: preempt, within IPv4 only.
    state(&mut m, "web", "nn1").health = Some(Health::Up);
    assert_eq!(m.decide("web"), [web4]);
    assert_eq!(m.decisions[&web4], Decision::Single(id(&m, "nn1")));
    assert!(
        m.transitions.contains_key(&web4),
        "nn2 is up: its connections stay"
    );
    assert!(!m.transitions.contains_key(&web6));

    // Every IPv4 path down: IPv4 dropped, IPv6 served; per address, per family.
    set_health(
        &mut m,
        Some(Health::Down),
        &[("web", "nn1"), ("web", "nn2")],
    );
    assert_eq!(m.decisions[&web4], Decision::None);
    assert_eq!(m.decisions[&web6], Decision::Single(id(&m, "v2")));
    assert_eq!(m.tables().targets[&web4], TargetValue::none());
    let addresses = lb_user::control::announce::addresses(&m, true);
    let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
    assert!(addresses[&ip("203.0.113.10")].is_err());
    assert_eq!(addresses[&ip("2001:db8:ff::10")], Ok(()));
}

/// Guards active/active per family: each family's id has a consistent-hash table of its own
/// paths only, the one a target of that family alone would have (Maglev hashes path names); a
/// path of one family leaving changes that family's table alone (and starts its transition),
/// never the other's.
#[test]
fn a_ring_per_family() {
    let mut m = model_mixed();
    let (api4, api6) = (
        family_id(&m, "api", Family::V4),
        family_id(&m, "api", Family::V6),
    );
    let ring = |m: &Model, t: &Tables, tid: u32| -> Vec<String> {
        t.rings[&(tid, t.targets[&tid].ring_half)]
            .iter()
            .map(|p| m.path_name(*p).expect("a path").1.to_string())
            .collect()
    };
    let t = m.tables();
    assert_eq!(t.targets[&api4].mode, TARGET_MODE_RING);
    assert_eq!(t.targets[&api6].mode, TARGET_MODE_RING);
    let (ring4, ring6) = (ring(&m, &t, api4), ring(&m, &t, api6));
    assert_eq!(ring4.len(), RING_SIZE as usize);
    assert!(ring4.iter().all(|p| p == "a1" || p == "a3"), "a2 unknown");
    assert!(ring6.iter().all(|p| p == "b1" || p == "b2"));
    assert!(ring6.iter().any(|p| p == "b1") && ring6.iter().any(|p| p == "b2"));
    // What `api` had before it had IPv6 paths, and what an IPv6-only `api` would have.
    let a = model_a();
    assert_eq!(ring4, ring(&a, &a.tables(), target_id(&a, "api")));
    let mut alone = fresh(&Cfg::new().target(
        "api",
        active_active(),
        &[("b1", "2001:db8:11::1", 0), ("b2", "2001:db8:12::1", 1)],
    ));
    set_health(
        &mut alone,
        Some(Health::Up),
        &[("api", "b1"), ("api", "b2")],
    );
    assert_eq!(
        ring6,
        ring(&alone, &alone.tables(), target_id(&alone, "api"))
    );

    state(&mut m, "api", "b1").health = Some(Health::Down);
    assert_eq!(m.decide("api"), [api6]);
    let after = m.tables();
    assert!(ring(&m, &after, api6).iter().all(|p| p == "b2"));
    assert!(
        m.transitions.contains_key(&api6),
        "the previous ring is kept"
    );
    assert_eq!(after.targets[&api4], t.targets[&api4]);
    assert_eq!(ring(&m, &after, api4), ring4);
    assert!(!m.transitions.contains_key(&api4));
}

/// Guards a reload that gives a target of one family paths and VIPs of the other, and the one
/// that takes them away again: the IPv4 half keeps its id, decision and map entries (nothing of
/// IPv4 is written), the IPv6 half gets a new id whose target, paths and reverse NAT exist
/// before its VIPs; wherever a write fails, the maps go back to what they held; the way back
/// removes the IPv6 VIPs before what they led to and leaves exactly configuration A's tables.
/// A restart in between recovers both ids. The same for a target of IPv6 paths gaining IPv4
/// ones: it keeps its id for IPv6.
#[test]
fn a_reload_makes_a_target_dual_stack_and_back() {
    let a = model_a();
    let web = target_id(&a, "web");
    let mut b = Model::new(config_mixed().config(), &a).expect("fits");
    let (web4, web6) = (
        family_id(&b, "web", Family::V4),
        family_id(&b, "web", Family::V6),
    );
    assert_eq!(web4, web);
    assert_eq!(b.decisions[&web4], a.decisions[&web], "kept");
    assert!(!b.transitions.contains_key(&web4) && b.settling.is_empty());
    set_health(&mut b, Some(Health::Up), &[("web", "v1"), ("api", "b2")]);
    let (current, desired) = (a.tables(), b.tables());

    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    assert_eq!(store.read(), desired);
    let log = store.log.clone();
    for (address, service) in [
        ("2001:db8:ff::10", None),
        ("2001:db8:ff::11", Some((IPPROTO_TCP, 443))),
        ("2001:db8:ff::20", Some((IPPROTO_UDP, 53))),
    ] {
        let vid = vip_id(&b, address, service);
        let entry = format!("vip {vid}");
        let mut first = leads_to(&desired, vid);
        first.extend(
            desired
                .rev_nat6
                .iter()
                .filter(|(_, rev)| rev.vip_id == vid)
                .map(|(k, _)| format!("rev {}", k.ip())),
        );
        for f in &first {
            assert_before(&log, f, &entry);
        }
        assert_before(&log, &entry, "filter");
    }
    let ipv4: Vec<String> = [format!("target {web4}"), format!("target-meta {web4}")]
        .into_iter()
        .chain(current.vips.keys().map(|v| format!("vip {v}")))
        .chain(current.paths.keys().map(|p| format!("path {p}")))
        .chain(current.rev_nat.keys().map(|k| format!("rev {}", k.ip())))
        .collect();
    for entry in &ipv4 {
        assert!(!log.contains(entry), "{entry} rewritten: {log:?}");
    }
    assert!(log.contains(&format!("target {web6}")));

    // A restart while dual stack: both ids, the one target, the same tables.
    let rebuilt = Model::from_tables(&desired, |_| Admin::Enabled);
    assert_eq!(rebuilt.ids, b.ids);
    assert_eq!(rebuilt.tables(), desired);
    assert_eq!(rebuilt.config.targets.len(), 2);
    assert_eq!(rebuilt.config.target("web").expect("web").paths.len(), 4);
    let restarted = Model::new(config_mixed().config(), &rebuilt).expect("fits");
    assert_eq!(restarted.ids, b.ids);
    assert_eq!(restarted.decisions, b.decisions);

    // Back to IPv4 only.
    let c = Model::new(config_a().config(), &b).expect("fits");
    assert_eq!(c.ids, a.ids);
    assert_eq!(c.decisions[&web], b.decisions[&web4]);
    assert!(!c.decisions.contains_key(&web6));
    assert_eq!(c.tables(), current);
    let mut store = store_holding(&desired);
    apply(&mut store, &desired, &current).expect("writes");
    assert_eq!(store.read(), current);
    for (vip, service) in [
        ("2001:db8:ff::10", None),
        ("2001:db8:ff::11", Some((IPPROTO_TCP, 443))),
    ] {
        let gone = format!("-vip {}", vip_id(&b, vip, service));
        for p in ["v1", "v2"] {
            let rev = format!("-rev {}", address(&b, "web", p));
            assert_before(&store.log, &gone, &rev);
            assert_before(&store.log, &rev, &format!("path {}", path_id(&b, "web", p)));
        }
        assert_before(&store.log, &gone, &format!("target {web6}"));
    }

    // Nothing half-applied, either way, wherever a write fails.
    for (from, to) in [(&current, &desired), (&desired, &current)] {
        let plan = lb_user::datapath::tables::Plan::new(from, to);
        for k in 0..plan.writes.len() {
            let mut store = store_holding(from);
            store.fail = BTreeSet::from([store.calls + k]);
            let e = apply(&mut store, from, to).expect_err("the write fails");
            assert!(e.undone.is_ok(), "write {k}: {e}");
            assert_eq!(store.read(), *from, "write {k} ({}): undone", e.failed);
        }
    }

    // IPv6 first: `web6` of configuration "dual" gains an IPv4 path and VIP.
    let d = fresh(&config_dual());
    let only = target_id(&d, "web6");
    let e = Model::new(
        config_dual()
            .add_path("web6", ("n4", "192.0.2.99", 5))
            .vip("203.0.113.99", "web6")
            .config(),
        &d,
    )
    .expect("fits");
    assert_eq!(family_id(&e, "web6", Family::V6), only);
    assert_ne!(family_id(&e, "web6", Family::V4), only);
    assert_eq!(
        Model::new(config_dual().config(), &e).expect("fits").ids,
        d.ids
    );
}

/// Guards `lb status` (and `--json`) for a target with paths of both families: shown once,
/// under its name, with each family's decision under `families` (the target-wide fields then
/// empty) and all its paths; a target of one family reads exactly as before, without
/// `families`.
#[test]
fn status_shows_a_dual_stack_target_once_with_each_familys_decision() {
    // v1 fails and comes back: IPv6 fails back to it, keeping v2's connections there.
    let mut m = model_mixed();
    set_health(&mut m, Some(Health::Down), &[("web", "v1")]);
    set_health(&mut m, Some(Health::Up), &[("web", "v1")]);
    let t = m.tables();
    let targets = lb_user::view::targets(&m, &t, |_| None);
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["web", "api"]);
    let web = &targets[0];
    assert_eq!(
        (&web.active, web.shares.is_empty(), &web.transition),
        (&None, true, &None)
    );
    assert_eq!(web.paths.len(), 4);
    let json = serde_json::to_value(web).expect("serializes");
    assert_eq!(json["families"]["ipv4"]["active"], "nn1");
    assert_eq!(json["families"]["ipv6"]["active"], "v1");
    assert_eq!(json["families"]["ipv6"]["transition"]["previous"], "v2");
    assert_eq!(json["families"]["ipv4"]["transition"], Value::Null);
    let api = serde_json::to_value(&targets[1]).expect("serializes");
    let shares = &api["families"]["ipv6"]["shares"];
    assert_eq!(shares.as_object().expect("shares").len(), 2, "{api}");

    // One family: the fields as before, and no `families`.
    let a = model_a();
    let single = lb_user::view::targets(&a, &a.tables(), |_| None);
    let web = serde_json::to_value(&single[0]).expect("serializes");
    let keys: Vec<&str> = web
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        sorted(keys.iter().map(|k| k.to_string()).collect()),
        sorted(
            [
                "name",
                "mode",
                "preempt",
                "all_down",
                "active",
                "shares",
                "transition",
                "paths"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(web["active"], "nn1");
    assert!(
        !serde_json::to_string(&single)
            .expect("serializes")
            .contains("families")
    );
}

/// Guards a path of a dual-stack target whose address changes family (it keeps its id, and
/// moves to the other family's target id): the decision of its old id stops naming it before
/// it takes its new address (the datapath follows a current decision without checking the
/// path's target, and would write that address into packets of the other family), and a
/// decision of its new id names it only after; wherever a write fails, it is undone.
#[test]
fn a_path_changing_family_leaves_its_old_target_id_first() {
    let mut a = model_mixed();
    set_health(&mut a, Some(Health::Up), &[("web", "nn2")]);
    set_health(&mut a, Some(Health::Down), &[("web", "nn1")]);
    let (web4, web6) = (
        family_id(&a, "web", Family::V4),
        family_id(&a, "web", Family::V6),
    );
    let nn2 = path_id(&a, "web", "nn2");
    assert_eq!(a.decisions[&web4], Decision::Single(nn2));

    let moved = config_mixed().edit_path("web", "nn2", |p| {
        p["address"] = json!("2001:db8:3::1");
        p["priority"] = json!(5);
    });
    let mut b = Model::new(moved.config(), &a).expect("fits");
    assert_eq!(path_id(&b, "web", "nn2"), nn2, "one path, one id");
    assert_eq!(family_id(&b, "web", Family::V4), web4);
    assert_eq!(family_id(&b, "web", Family::V6), web6);
    assert_eq!(path_names(&b, web6), ["nn2", "v1", "v2"]);
    assert_eq!(b.decisions[&web4], Decision::None, "nn1 is down");
    // nn2 rises at its new address, and is preferred: IPv6 moves to it.
    set_health(&mut b, Some(Health::Up), &[("web", "nn2")]);
    assert_eq!(b.decisions[&web6], Decision::Single(nn2));
    let (current, desired) = (a.tables(), b.tables());
    assert_eq!(desired.paths[&nn2].target, web6);

    let mut store = store_holding(&current);
    apply(&mut store, &current, &desired).expect("writes");
    assert_eq!(store.read(), desired);
    assert_before(
        &store.log,
        &format!("target {web4}"),
        &format!("path {nn2}"),
    );
    assert_before(
        &store.log,
        &format!("path {nn2}"),
        &format!("target {web6}"),
    );

    // Back: nn2 returns to IPv4, where web4 chooses it (nn1 is down): after it is there.
    let mut c = Model::new(config_mixed().config(), &b).expect("fits");
    state(&mut c, "web", "nn2").health = Some(Health::Up);
    c.decide_all();
    assert_eq!(c.decisions[&web4], Decision::Single(nn2));
    let back = c.tables();
    let mut store = store_holding(&desired);
    apply(&mut store, &desired, &back).expect("writes");
    assert_eq!(store.read(), back);
    assert_before(
        &store.log,
        &format!("target {web6}"),
        &format!("path {nn2}"),
    );
    assert_before(
        &store.log,
        &format!("path {nn2}"),
        &format!("target {web4}"),
    );

    for (from, to) in [(&current, &desired), (&desired, &back)] {
        let plan = lb_user::datapath::tables::Plan::new(from, to);
        for k in 0..plan.writes.len() {
            let mut store = store_holding(from);
            store.fail = BTreeSet::from([store.calls + k]);
            let e = apply(&mut store, from, to).expect_err("the write fails");
            assert!(e.undone.is_ok(), "write {k}: {e}");
            assert_eq!(store.read(), *from, "write {k} ({}): undone", e.failed);
        }
    }
}
