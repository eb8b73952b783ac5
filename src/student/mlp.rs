//! Stage two's student for numeric features: a multilayer perceptron classifier.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The MLP student's architecture, as `student.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input features per example.
    pub input: usize,
    /// Widths of the hidden layers (ReLU after each).
    pub hidden: Vec<usize>,
    /// Classes (from the cache's manifest).
    pub classes: usize,
}

impl MlpConfig {
    pub fn init(&self, device: &Device) -> Mlp {
        let mut layers = Vec::new();
        let mut width = self.input;
        for &h in &self.hidden {
            layers.push(LinearConfig::new(width, h).init(device));
            width = h;
        }
        Mlp { layers, output: LinearConfig::new(width, self.classes).init(device) }
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub output: Linear,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, input]`
    /// - returns logits `[batch, classes]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_tapped(x, &[]).0
    }

    /// As [`Mlp::forward`], with the activations after each hidden layer in `taps`
    /// (`l`: hidden layer `l`, 1-based, after its ReLU).
    ///
    /// # Shapes
    /// - returns logits `[batch, classes]` and one `[batch, hidden[l - 1]]` per tap
    pub fn forward_tapped(&self, x: Tensor<2>, taps: &[usize]) -> (Tensor<2>, Vec<Tensor<2>>) {
        let mut h = x;
        let mut tapped: Vec<Option<Tensor<2>>> = vec![None; taps.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            h = relu(layer.forward(h));
            for (t, _) in taps.iter().enumerate().filter(|(_, l)| **l == i + 1) {
                tapped[t] = Some(h.clone());
            }
        }
        let tapped = tapped.into_iter().map(|t| t.expect("every tap is a hidden layer of the MLP (checked by the caller)")).collect();
        (self.output.forward(h), tapped)
    }
}
