//! docs/DATAPATH.md stays in step with the code: it names every counter and every map.

const DOC: &str = include_str!("../../docs/DATAPATH.md");

#[test]
fn every_counter_is_documented() {
    for c in lb_common::Counter::ALL {
        assert!(
            DOC.contains(&format!("`{}`", c.name())),
            "docs/DATAPATH.md does not describe counter {}",
            c.name()
        );
    }
}

#[test]
fn every_map_is_documented() {
    for m in lb_common::maps::ALL
        .iter()
        .chain([&lb_common::maps::AYA_LOGS])
    {
        assert!(
            DOC.contains(&format!("`{m}`")),
            "docs/DATAPATH.md does not describe map {m}"
        );
    }
}
