//! README.md stays in step with the code: it names every metric the daemon exports.

const README: &str = include_str!("../../README.md");
/// Every metric is declared by one `# TYPE <name> <kind>` line of the exposition.
const METRICS_SOURCE: &str = include_str!("../src/metrics.rs");

#[test]
fn every_metric_is_in_the_readme() {
    let names: Vec<&str> = METRICS_SOURCE
        .split("# TYPE ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        names.len() >= 10 && names.iter().all(|n| n.starts_with("lb_")),
        "the metric declarations were not found: {names:?}"
    );
    for name in names {
        assert!(
            README.contains(&format!("`{name}")),
            "README.md does not list metric {name}"
        );
    }
}
