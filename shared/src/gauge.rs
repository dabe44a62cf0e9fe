//! A Prometheus gauge held up for as long as a guard lives, so every exit
//! path (errors, cancellation, panics) gives the count back.

use prometheus_client::metrics::gauge::Gauge;

pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn inc(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_gives_the_count_back() {
        let g = Gauge::<i64>::default();
        {
            let _a = GaugeGuard::inc(&g);
            let _b = GaugeGuard::inc(&g);
            assert_eq!(g.get(), 2);
        }
        assert_eq!(g.get(), 0);
    }
}
