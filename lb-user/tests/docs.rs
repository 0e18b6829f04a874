//! README.md stays in step with the code: it names every metric the daemon exports.

const README: &str = include_str!("../../README.md");

#[test]
fn every_metric_is_in_the_readme() {
    let families = lb_user::metrics::FAMILIES;
    assert!(families.len() >= 10);
    for f in families {
        assert!(f.name.starts_with("lb_"), "{}", f.name);
        // Counters' samples carry `_total`; README names the samples.
        let sample = match f.kind {
            prometheus_client::metrics::MetricType::Counter => format!("{}_total", f.name),
            _ => f.name.to_owned(),
        };
        assert!(
            README.contains(&format!("`{sample}")),
            "README.md does not list metric {sample}"
        );
    }
}

#[test]
fn every_guest_agent_counter_is_in_the_readme() {
    let counters = lb_common::guest::GuestCounter::ALL
        .iter()
        .map(|c| c.name())
        .chain(["flows_expired"]);
    for name in counters {
        assert!(
            README.contains(&format!("`{name}`")),
            "README.md does not name the guest agent's counter {name}"
        );
    }
}
