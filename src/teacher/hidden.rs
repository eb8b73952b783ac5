//! Stage one's hidden states (`--hidden-states`): a teacher output's vectors at the cached
//! positions, copied out of ONNX Runtime, optionally through a fixed random projection.

use crate::error::{Error, Result};
use crate::rng::Rng;

use super::{HiddenOutput, HiddenValues};

/// A fixed Gaussian random projection `R^d -> R^r`: entries `N(0, 1/r)` drawn from
/// [`Rng`] stream 0 of `seed`, row by row, so the same `(seed, d, r)` gives the same
/// matrix on every machine. Squared norms and inner products are kept in expectation
/// (Johnson-Lindenstrauss), to within about `1/sqrt(r)` relative.
#[derive(Debug, Clone)]
pub struct Projection {
    /// `[r, d]`, row-major.
    matrix: Vec<f32>,
    d: usize,
    r: usize,
}

impl Projection {
    pub fn new(seed: u64, d: usize, r: usize) -> Projection {
        let mut rng = Rng::new(seed, 0);
        let scale = 1.0 / (r as f64).sqrt();
        let matrix = (0..r * d).map(|_| (standard_normal(&mut rng) * scale) as f32).collect();
        Projection { matrix, d, r }
    }

    /// # Shapes
    /// - `x`: `[d]`; appends `[r]` to `out`
    pub fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        debug_assert_eq!(x.len(), self.d);
        out.extend(self.matrix.chunks_exact(self.d).map(|row| row.iter().zip(x).map(|(a, b)| (a * b) as f64).sum::<f64>() as f32));
    }

    pub fn dim(&self) -> usize {
        self.r
    }
}

/// A standard normal draw (Box-Muller over two 53-bit uniforms).
fn standard_normal(rng: &mut Rng) -> f64 {
    let u = |rng: &mut Rng| ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (u(rng), u(rng));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Copy one batch's vectors of `output` at `at` (indices into the flattened
/// `[batch * seq]` positions, or batch rows for `[batch, dim]` outputs) into a new buffer,
/// after checking the shape against the batch.
///
/// # Shapes
/// - `values.shape`: `[batch, dim]` or `[batch, seq, dim]`; returns `[at.len() * dim]`
pub fn gather(
    teacher: &std::path::Path,
    output: &HiddenOutput,
    values: &HiddenValues<'_>,
    batch: usize,
    seq: Option<usize>,
    at: impl Iterator<Item = usize>,
) -> Result<Vec<f32>> {
    let d = output.dim;
    let expected: Vec<usize> = match (output.per_position, seq) {
        (true, Some(s)) => vec![batch, s, d],
        (true, None) => vec![batch, values.shape.get(1).copied().unwrap_or(0), d],
        (false, _) => vec![batch, d],
    };
    if values.shape != expected {
        return Err(Error::teacher(teacher, format!("output `{}` has shape {:?}, expected {expected:?}", output.name, values.shape)));
    }
    let mut out = Vec::new();
    for i in at {
        values.values.extend_f32(i * d..(i + 1) * d, &mut out);
    }
    if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
        return Err(Error::teacher(teacher, format!("output `{}`: value {} is not finite ({})", output.name, bad % d, out[bad])));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projection keeps squared norms in expectation: over 200 random unit vectors
    /// of width 64 projected to 32, the mean squared norm is 1 within 3 standard errors
    /// (each squared norm is ~ chi^2_32 / 32: standard deviation sqrt(2/32) = 0.25, so the
    /// mean's standard error is 0.25 / sqrt(200) = 0.018); and the matrix is a function of
    /// the seed alone.
    #[test]
    fn projection_keeps_norms_and_is_seeded() {
        let p = Projection::new(7, 64, 32);
        let mut rng = Rng::new(1, 1);
        let mut sum = 0.0;
        for _ in 0..200 {
            let x: Vec<f32> = (0..64).map(|_| standard_normal(&mut rng) as f32).collect();
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let unit: Vec<f32> = x.iter().map(|v| v / norm).collect();
            let mut y = Vec::new();
            p.apply(&unit, &mut y);
            sum += y.iter().map(|v| (v * v) as f64).sum::<f64>();
        }
        let mean = sum / 200.0;
        assert!((mean - 1.0).abs() < 3.0 * 0.018, "mean squared norm {mean}");
        assert_eq!(Projection::new(7, 64, 32).matrix, p.matrix);
        assert_ne!(Projection::new(8, 64, 32).matrix, p.matrix);
    }
}
