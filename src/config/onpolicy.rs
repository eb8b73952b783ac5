//! A pipeline's `[onpolicy]`: rounds of on-policy distillation after the distilled student.
//! Each round the student completes the prompts (`generate --student`), the teacher scores
//! the completions (`cache-teacher --token-ids`), and the student trains on them.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loss::Divergence;

/// The defaults of `[onpolicy]`.
pub mod defaults {
    pub const ROUNDS: usize = 2;
    pub const PROMPT_COLUMN: &str = "prompt";
    pub const SAMPLES_PER_PROMPT: u32 = 1;
    pub const MAX_NEW_TOKENS: usize = 32;
    /// The student samples from its own distribution: on-policy.
    pub const TEMPERATURE: f32 = 1.0;
    /// GKD's generalised JSD at beta 0.5 over the cached support: the lowest teacher NLL of
    /// the student's own completions of the divergences measured on the LM pipeline
    /// (docs/results.md).
    pub const DIVERGENCE: crate::loss::Divergence = crate::loss::Divergence::Jsd(0.5);
    /// Every step of a round on the student's own samples.
    pub const LAMBDA: f32 = 1.0;
}

/// `[onpolicy]` as written, each key optional until validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPolicySettings {
    /// Rounds of generate → score → train [default: 2].
    pub rounds: Option<NonZeroUsize>,
    /// The prompts the student completes each round [default: `[cache] data`].
    pub prompts: Option<PathBuf>,
    /// Their column, and the held-out data's [default: prompt].
    pub prompt_column: Option<String>,
    /// Completions per prompt each round [default: 1].
    pub samples_per_prompt: Option<NonZeroU32>,
    /// New tokens per completion, in training and in evaluation [default: 32].
    pub max_new_tokens: Option<NonZeroUsize>,
    /// The student's sampling temperature [default: 1, its own distribution].
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// The divergence on the student's samples [default: jsd:0.5].
    #[serde(default, with = "super::as_text")]
    pub divergence: Option<Divergence>,
    /// GKD's lambda: the share of each round's steps on the student's samples; the rest
    /// train first on the training cache as `[train]` does [default: 1].
    pub lambda: Option<f32>,
    /// Student steps per round [required].
    pub steps: Option<NonZeroUsize>,
    /// Learning rate of the rounds [default: `[train] lr`].
    pub lr: Option<f64>,
}

/// Validated `[onpolicy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OnPolicyConfig {
    pub rounds: usize,
    pub prompts: PathBuf,
    pub prompt_column: String,
    pub samples_per_prompt: u32,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub divergence: Divergence,
    pub lambda: f32,
    pub steps: usize,
    pub lr: Option<f64>,
}

impl OnPolicyConfig {
    /// Steps of a round on the training cache, then on the student's samples.
    pub fn split_steps(&self) -> (usize, usize) {
        let on = ((self.steps as f64 * self.lambda as f64).round() as usize).max(1);
        (self.steps.saturating_sub(on), on)
    }
}

impl OnPolicySettings {
    /// Paths made relative to the pipeline file's directory.
    pub fn relative_to(self, base: &Path) -> OnPolicySettings {
        OnPolicySettings { prompts: super::relative_to(base)(self.prompts), ..self }
    }

    /// `cache_data`: the training data, the prompts' default.
    pub fn validate(self, cache_data: Option<&Path>) -> Result<OnPolicyConfig> {
        let prompts = self.prompts.or_else(|| cache_data.map(Path::to_path_buf)).ok_or_else(|| {
            Error::Config("onpolicy.prompts is required when [cache] names no data (the prompts the student completes)".into())
        })?;
        let steps = self.steps.ok_or_else(|| Error::Config("onpolicy.steps is required: the student's steps per round".into()))?;
        let lambda = self.lambda.unwrap_or(defaults::LAMBDA);
        if !(lambda > 0.0 && lambda <= 1.0) {
            return Err(Error::Config(format!(
                "onpolicy.lambda must be in (0, 1], the share of a round's steps on the student's samples (got {lambda})"
            )));
        }
        let temperature = self.temperature.unwrap_or(defaults::TEMPERATURE);
        super::check_temperature("onpolicy.temperature (the student's sampling temperature)", temperature)?;
        let top_p = self.top_p.unwrap_or(super::defaults::generate::TOP_P);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::Config(format!("onpolicy.top_p must be in (0, 1] (got {top_p})")));
        }
        if let Some(lr) = self.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            return Err(Error::Config(format!("onpolicy.lr must be > 0 (got {lr})")));
        }
        Ok(OnPolicyConfig {
            rounds: self.rounds.map_or(defaults::ROUNDS, NonZeroUsize::get),
            prompts,
            prompt_column: self.prompt_column.unwrap_or_else(|| defaults::PROMPT_COLUMN.into()),
            samples_per_prompt: self.samples_per_prompt.map_or(defaults::SAMPLES_PER_PROMPT, NonZeroU32::get),
            max_new_tokens: self.max_new_tokens.map_or(defaults::MAX_NEW_TOKENS, NonZeroUsize::get),
            temperature,
            top_p,
            divergence: self.divergence.unwrap_or(defaults::DIVERGENCE),
            lambda,
            steps: steps.get(),
            lr: self.lr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults fill the rest; steps are required; lambda splits a round's steps (0.25 of 10
    /// on-policy rounds to 3: 7 on the training cache first); errors name the key.
    #[test]
    fn validates_and_splits_the_steps() {
        let base = OnPolicySettings { steps: NonZeroUsize::new(10), ..Default::default() };
        let c = base.clone().validate(Some(Path::new("train.jsonl"))).unwrap();
        assert_eq!((c.rounds, c.divergence, c.lambda, c.split_steps()), (2, Divergence::Jsd(0.5), 1.0, (0, 10)));
        assert_eq!(c.prompts, PathBuf::from("train.jsonl"));
        let quarter = OnPolicySettings { lambda: Some(0.25), ..base.clone() }.validate(Some(Path::new("t"))).unwrap();
        assert_eq!(quarter.split_steps(), (7, 3));
        let err = |s: OnPolicySettings| s.validate(Some(Path::new("t"))).unwrap_err().to_string();
        assert!(err(OnPolicySettings::default()).contains("onpolicy.steps is required"));
        assert!(err(OnPolicySettings { lambda: Some(0.0), ..base.clone() }).contains("onpolicy.lambda"));
        assert!(err(OnPolicySettings { temperature: Some(0.0), ..base.clone() }).contains("onpolicy.temperature"));
        assert!(base.validate(None).unwrap_err().to_string().contains("onpolicy.prompts is required"));
    }
}
