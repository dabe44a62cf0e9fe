//! Log setup shared by the binaries: upstream's `-v` levels mapped onto
//! tracing filters; `RUST_LOG`, when set, wins.

/// The filter for a klog-style verbosity: 0 → info, 1–4 → debug for konnq
/// crates, 5 and above → trace for konnq crates.
pub fn filter_for_verbosity(v: u8) -> String {
    match v {
        0 => "info".to_owned(),
        1..=4 => "info,konnq_server=debug,konnq_agent=debug,konnq_shared=debug".to_owned(),
        _ => "debug,konnq_server=trace,konnq_agent=trace,konnq_shared=trace".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(filter_for_verbosity(0), "info");
        assert!(filter_for_verbosity(4).contains("konnq_server=debug"));
        assert!(filter_for_verbosity(9).contains("konnq_agent=trace"));
    }
}
