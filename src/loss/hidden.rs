//! The hidden-state term of stage two (`--hidden-layers`): a learned linear map takes a
//! student layer's hidden state to the teacher output cached beside the soft labels, and
//! a distance between the two joins the loss (DistilBERT's cosine loss, TinyBERT's and
//! TextBrewer's MSE). The maps train with the student and are dropped when it is exported.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// `--hidden-loss`: the distance between the mapped student state and the teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HiddenLoss {
    /// `1 - cos(W h_s + b, h_t)`, mean over positions: the direction only (the norms'
    /// product gets 1e-24 under its root).
    Cosine,
    /// `mean((W h_s + b - h_t)^2)` over positions and values.
    Mse,
}

/// One `--hidden-layers` pair: the student layer whose hidden state is mapped, and the
/// teacher output (as cached) it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiddenPair {
    pub layer: usize,
    pub output: String,
}

impl HiddenPair {
    /// `LAYER:OUTPUT[,LAYER:OUTPUT...]`.
    pub fn parse_list(s: &str) -> std::result::Result<Vec<HiddenPair>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let bad = || format!("`{p}` is not LAYER:OUTPUT (e.g. `2:pooled`)");
                let (layer, output) = p.split_once(':').ok_or_else(bad)?;
                let layer = layer.trim().parse::<usize>().map_err(|_| bad())?;
                let output = output.trim();
                if output.is_empty() {
                    return Err(bad());
                }
                Ok(HiddenPair { layer, output: output.to_string() })
            })
            .collect()
    }
}

/// `--hidden-layers`: the pairs, `LAYER:OUTPUT,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenPairs(pub Vec<HiddenPair>);

impl std::str::FromStr for HiddenPairs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<HiddenPairs, String> {
        HiddenPair::parse_list(s).map(HiddenPairs)
    }
}

impl std::fmt::Display for HiddenPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|p| format!("{}:{}", p.layer, p.output)).collect();
        f.write_str(&pairs.join(","))
    }
}

/// The learned maps, one per pair: `Linear(student width -> cached width)`.
#[derive(Module, Debug)]
pub struct HiddenMaps {
    pub maps: Vec<Linear>,
}

impl HiddenMaps {
    /// # Shapes
    /// - `widths`: (student width, cached width) per pair
    pub fn new(widths: &[(usize, usize)], device: &Device) -> HiddenMaps {
        HiddenMaps { maps: widths.iter().map(|&(s, t)| LinearConfig::new(s, t).init(device)).collect() }
    }

    /// The hidden-state term: the mean over pairs of each pair's distance.
    ///
    /// # Shapes
    /// - `student[j]`: `[n, student width]`; `teacher[j]`: `[n, cached width]`; returns `[1]`
    pub fn loss(&self, student: Vec<Tensor<2>>, teacher: Vec<Tensor<2>>, kind: HiddenLoss) -> Tensor<1> {
        let pairs = self.maps.len().max(1) as f32;
        let terms = self.maps.iter().zip(student).zip(teacher).map(|((map, s), t)| distance(map.forward(s), t, kind));
        terms.reduce(|a, b| a + b).expect("at least one pair") / pairs
    }
}

/// # Shapes
/// - `mapped`, `target`: `[n, r]`; returns `[1]`
pub fn distance(mapped: Tensor<2>, target: Tensor<2>, kind: HiddenLoss) -> Tensor<1> {
    match kind {
        HiddenLoss::Mse => (mapped - target).powi_scalar(2).mean(),
        HiddenLoss::Cosine => {
            let dot = (mapped.clone() * target.clone()).sum_dim(1); // [n, 1]
            // + 1e-24 inside the root: a zero vector gives a finite gradient (clamping after
            // the root would give 0 * inf).
            let norms = (mapped.powi_scalar(2).sum_dim(1) * target.powi_scalar(2).sum_dim(1)).add_scalar(1e-24).sqrt();
            (dot / norms).neg().add_scalar(1.0).mean()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn t(v: &[f32], n: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [n, v.len() / n]), &Device::default())
    }
    fn value(x: Tensor<1>) -> f32 {
        x.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    /// Hand-computed: rows (1, 0) vs (0, 2) are orthogonal (cosine 0, term 1), rows (3, 4)
    /// vs (6, 8) parallel (term 0): mean 0.5. MSE: ((1-0)^2 + (0-2)^2 + (3-6)^2 + (4-8)^2) / 4
    /// = (1 + 4 + 9 + 16) / 4 = 7.5.
    #[test]
    fn distances_match_hand_computed_values() {
        let a = t(&[1.0, 0.0, 3.0, 4.0], 2);
        let b = t(&[0.0, 2.0, 6.0, 8.0], 2);
        assert!((value(distance(a.clone(), b.clone(), HiddenLoss::Cosine)) - 0.5).abs() < 1e-6);
        assert!((value(distance(a, b, HiddenLoss::Mse)) - 7.5).abs() < 1e-6);
    }

    #[test]
    fn pairs_parse_and_bad_ones_are_named() {
        let p = HiddenPair::parse_list("2:pooled, 0:hidden").unwrap();
        assert_eq!(p, vec![HiddenPair { layer: 2, output: "pooled".into() }, HiddenPair { layer: 0, output: "hidden".into() }]);
        for bad in ["pooled", "x:pooled", "2:"] {
            let e = HiddenPair::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
