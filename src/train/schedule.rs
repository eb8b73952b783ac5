//! The learning-rate schedule of stage two.

/// Learning rate at `step` of `total`: 5% linear warm-up, then cosine to 10%.
pub(crate) fn lr_at(base: f64, step: usize, total: usize) -> f64 {
    let warm = (total / 20).max(1);
    if step < warm {
        return base * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (total.saturating_sub(warm)).max(1) as f64;
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule by hand, base 1e-3 over 200 steps: warm-up of 200 / 20 = 10 steps rising
    /// linearly to the base (step 0: 1e-4, step 9: 1e-3), then a cosine from the base to a
    /// tenth of it: halfway through the decay (step 10 + 95) it is 0.1 + 0.9 * 0.5 = 0.55
    /// of the base, at the last step 0.1.
    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let lr = |s| lr_at(1e-3, s, 200);
        assert!((lr(0) - 1e-4).abs() < 1e-12 && (lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(105) - 0.55e-3).abs() < 1e-9, "{}", lr(105));
        assert!((lr(200) - 1e-4).abs() < 1e-12 && (lr(10_000) - 1e-4).abs() < 1e-12, "never below a tenth");
        assert!((1..200).all(|s| lr(s) <= lr(s.min(9)) + 1e-15), "no step after the warm-up exceeds the base");
        // One step in all: a warm-up of one step, at the base.
        assert!((lr_at(1e-3, 0, 1) - 1e-3).abs() < 1e-12);
    }
}
