//! The cache's metrics: the counts its handles keep, published when a handle reports, so that
//! no request pays for them (a hit adds nothing to its path).

/// Publishes `counts` as absolute counters and `gauges` as gauges, labelled `name`.
pub(crate) fn export_counts(
    name: &str,
    counts: &[(&'static str, u64)],
    gauges: &[(&'static str, u64)],
) {
    for &(what, value) in counts {
        metrics::counter!(what, "name" => name.to_owned()).absolute(value);
    }
    for &(what, value) in gauges {
        metrics::gauge!(what, "name" => name.to_owned()).set(value as f64);
    }
}
