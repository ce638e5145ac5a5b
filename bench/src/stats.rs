//! Latency distributions (an HDR histogram in microseconds) and the
//! figures the report prints from them.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Durations from 1 µs to an hour, three significant digits.
pub struct Dist {
    h: Histogram<u64>,
}

impl Default for Dist {
    fn default() -> Self {
        Dist {
            h: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Dist {
    pub fn record(&mut self, d: Duration) {
        self.h.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn n(&self) -> u64 {
        self.h.len()
    }

    /// The `q` quantile in milliseconds.
    pub fn q_ms(&self, q: f64) -> f64 {
        self.h.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn p50(&self) -> f64 {
        self.q_ms(0.5)
    }

    pub fn p99(&self) -> f64 {
        self.q_ms(0.99)
    }

    pub fn max(&self) -> f64 {
        self.h.max() as f64 / 1000.0
    }

    pub fn mean(&self) -> f64 {
        self.h.mean() / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n(),
            "p50_ms": round(self.p50()),
            "p99_ms": round(self.p99()),
            "mean_ms": round(self.mean()),
            "max_ms": round(self.max()),
        })
    }

    /// `p50 1.23 ms, p99 4.56 ms`
    pub fn text(&self) -> String {
        format!("p50 {}, p99 {}", ms(self.p50()), ms(self.p99()))
    }
}

/// Rounds to three decimals (microseconds of a millisecond figure).
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A millisecond figure for people: `0.182 ms`, `12.4 ms`, `4.31 s`.
pub fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.3} ms")
    }
}

/// The median of a few figures (rounds of a throughput run).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}
