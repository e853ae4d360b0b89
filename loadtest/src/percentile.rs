//! Nearest-rank percentiles, shared by every table of the load tester.

/// The nearest-rank `p`th percentile of `sorted` (ascending); 0 when empty.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[index.clamp(1, sorted.len()) - 1]
}
