//! The learning-rate schedule: Clarifai's convention (rates per item, multiplied by the batch
//! size), a linear warm-up from `warmup_ratio × base` over `warmup_iters`, then a cosine down to
//! the minimum at the last step.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base: f64,
    pub min: f64,
    pub warmup_iters: u64,
    pub warmup_ratio: f64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// From per-item rates: `base = batch_size × per_item_lrate`, `min = batch_size × per_item_min_lrate`.
    pub fn per_item(
        batch_size: usize,
        per_item_lrate: f64,
        per_item_min_lrate: f64,
        warmup_iters: u64,
        warmup_ratio: f64,
        total_steps: u64,
    ) -> LrSchedule {
        LrSchedule {
            base: batch_size as f64 * per_item_lrate,
            min: batch_size as f64 * per_item_min_lrate,
            warmup_iters,
            warmup_ratio,
            total_steps,
        }
    }

    /// The rate of optimizer step `step` (from 0).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_iters {
            let progress = step as f64 / self.warmup_iters as f64;
            return self.base * (self.warmup_ratio + (1.0 - self.warmup_ratio) * progress);
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_iters).max(1);
        let progress = ((step - self.warmup_iters) as f64 / decay_steps as f64).min(1.0);
        self.min + 0.5 * (self.base - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_follows_a_cosine_to_the_minimum() {
        let s = LrSchedule::per_item(64, 1.953125e-5, 1.5625e-8, 100, 1e-4, 1100);
        assert!((s.base - 1.25e-3).abs() < 1e-12);
        assert!((s.at(0) - 1.25e-7).abs() < 1e-12);
        assert!((s.at(50) - (1.25e-7 + (1.25e-3 - 1.25e-7) * 0.5)).abs() < 1e-12);
        assert!((s.at(100) - 1.25e-3).abs() < 1e-12);
        let mid = s.min + 0.5 * (s.base - s.min);
        assert!((s.at(600) - mid).abs() < 1e-12);
        assert!((s.at(1100) - s.min).abs() < 1e-12);
        assert!(s.at(700) < s.at(600) && s.at(600) < s.at(300));
    }
}
