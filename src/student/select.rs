//! Which of a student's weights train (`--train`, `--freeze`): the others are marked as not
//! requiring a gradient, so backpropagation stops at them, the optimizer holds no state for
//! them, and they are exported bit for bit as they started.
//!
//! Names are the student's parameter paths: `embed.weight`, `blocks.3.q.weight`,
//! `blocks.3.attn_norm.gamma`, `norm.gamma`, `head.weight` (decoder); `word.weight`,
//! `blocks.0.up.bias`, `pooler.weight`, `classifier.weight` (encoder); `layers.0.weight`,
//! `output.weight` (MLP).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;

use super::Student;
use crate::error::{Error, Result};

/// `--train`: which parameters train before `--freeze` removes some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trainable {
    /// Every parameter (the default).
    All,
    /// The output layer: the LM head (the embedding when tied), or the pooler and classifier,
    /// or an MLP's output layer.
    Head,
    /// The last N blocks, the final norm and the head.
    Last(usize),
    /// Parameters whose name matches one of the globs (`*` is any text).
    Globs(Vec<String>),
}

impl Trainable {
    /// `all`, `head`, `last:N` or comma-separated globs.
    pub fn parse(s: &str) -> std::result::Result<Trainable, String> {
        Ok(match s {
            "all" => Trainable::All,
            "head" => Trainable::Head,
            _ => match s.strip_prefix("last:") {
                Some(n) => Trainable::Last(n.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("`{s}`: expected last:N with N >= 1"))?),
                None => Trainable::Globs(Globs::parse(s)?.0),
            },
        })
    }
}

impl std::str::FromStr for Trainable {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Trainable, String> {
        Trainable::parse(s)
    }
}

impl std::fmt::Display for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trainable::All => f.write_str("all"),
            Trainable::Head => f.write_str("head"),
            Trainable::Last(n) => write!(f, "last:{n}"),
            // One glob spelled like a keyword (`all,`) keeps its comma, or it would read back
            // as the keyword.
            Trainable::Globs(g) if matches!(g.as_slice(), [one] if one == "all" || one == "head") => write!(f, "{},", g[0]),
            Trainable::Globs(g) => f.write_str(&g.join(",")),
        }
    }
}

/// Comma-separated globs over parameter names (`--freeze`), at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globs(pub Vec<String>);

impl Globs {
    fn parse(s: &str) -> std::result::Result<Globs, String> {
        let globs = globs(s);
        if globs.is_empty() {
            return Err(format!("`{s}` names no parameter: give comma-separated globs such as `embed.*,blocks.0.*`"));
        }
        Ok(Globs(globs))
    }
}

impl std::str::FromStr for Globs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Globs, String> {
        Globs::parse(s)
    }
}

impl std::fmt::Display for Globs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Comma-separated globs.
pub fn globs(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()
}

/// Does `name` match `glob` (`*` matches any text, every other character itself)?
fn matches(glob: &str, name: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == name;
    }
    let Some(mut rest) = name.strip_prefix(parts[0]) else { return false };
    for (i, p) in parts[1..].iter().enumerate() {
        if i + 2 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the parameter `name` of `student` trains.
fn trains(student: &Student, name: &str, trainable: &Trainable, freeze: &[String]) -> bool {
    let blocks = match student {
        Student::Decoder(d) => d.blocks.len(),
        Student::Encoder(e) => e.blocks.len(),
        Student::Mlp(m) => m.layers.len(),
    };
    let head = |name: &str| match student {
        Student::Decoder(d) => name.starts_with("head.") || (d.head.is_none() && name.starts_with("embed.")),
        Student::Encoder(_) => name.starts_with("pooler.") || name.starts_with("classifier."),
        Student::Mlp(_) => name.starts_with("output."),
    };
    let block_index = |name: &str| {
        let rest = name.strip_prefix("blocks.").or_else(|| name.strip_prefix("layers."))?;
        rest.split('.').next()?.parse::<usize>().ok()
    };
    let selected = match trainable {
        Trainable::All => true,
        Trainable::Head => head(name),
        Trainable::Last(n) => head(name) || name.starts_with("norm.") || block_index(name).is_some_and(|i| i + n >= blocks),
        Trainable::Globs(g) => g.iter().any(|g| matches(g, name)),
    };
    selected && !freeze.iter().any(|g| matches(g, name))
}

/// Walks the parameters with their paths, freezing those that do not train.
struct Select<'a> {
    student: &'a Student,
    trainable: &'a Trainable,
    freeze: &'a [String],
    path: Vec<String>,
    /// (name, trains) of every float parameter, in order.
    seen: Vec<(String, bool)>,
}

impl ModuleMapper for Select<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // The enum's variant (Student::Decoder) is not part of the names.
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let train = trains(self.student, &name, self.trainable, self.freeze);
        self.seen.push((name, train));
        if train { param } else { param.set_require_grad(false) }
    }
}

/// `student` with the parameters that do not train frozen, and a sentence saying how many
/// train. A selection that trains nothing is refused, listing some names.
pub fn select(student: Student, trainable: &Trainable, freeze: &[String]) -> Result<(Student, Option<String>)> {
    if *trainable == Trainable::All && freeze.is_empty() {
        return Ok((student, None));
    }
    let probe = student.clone();
    let mut mapper = Select { student: &probe, trainable, freeze, path: Vec::new(), seen: Vec::new() };
    let student = student.map(&mut mapper);
    let globs = match trainable {
        Trainable::Globs(g) => g.iter().chain(freeze).collect::<Vec<_>>(),
        _ => freeze.iter().collect(),
    };
    if let Some(g) = globs.iter().find(|g| !mapper.seen.iter().any(|(n, _)| matches(g, n))) {
        let some: Vec<&str> = mapper.seen.iter().take(6).map(|(n, _)| n.as_str()).collect();
        return Err(Error::Config(format!(
            "train.train / train.freeze: `{g}` matches no parameter (`head` and `last:N` stand alone; names look like {})",
            some.join(", ")
        )));
    }
    let trained: Vec<&str> = mapper.seen.iter().filter(|(_, t)| *t).map(|(n, _)| n.as_str()).collect();
    if trained.is_empty() {
        let some: Vec<&str> = mapper.seen.iter().take(6).map(|(n, _)| n.as_str()).collect();
        return Err(Error::Config(format!(
            "train.train / train.freeze leave no parameter to train (the student's parameters are named like {})",
            some.join(", ")
        )));
    }
    let note = format!(
        "training {} of the {} parameter tensors ({}{}); the others are frozen",
        trained.len(),
        mapper.seen.len(),
        trained.iter().take(4).copied().collect::<Vec<_>>().join(", "),
        if trained.len() > 4 { ", ..." } else { "" }
    );
    Ok((student, Some(note)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_written() {
        assert!(matches("blocks.*.q.weight", "blocks.3.q.weight"));
        assert!(matches("embed.*", "embed.weight"));
        assert!(!matches("blocks.*.q.weight", "blocks.3.k.weight"));
        assert!(matches("head.weight", "head.weight") && !matches("head.weight", "head.bias"));
        assert!(matches("*norm*", "blocks.0.attn_norm.gamma"));
        assert_eq!(Trainable::parse("last:2").unwrap(), Trainable::Last(2));
        assert!(Trainable::parse("last:0").is_err());
        assert_eq!(Trainable::parse("head,norm.*").unwrap(), Trainable::Globs(vec!["head".into(), "norm.*".into()]));
        // Written back as read (a flag over a pipeline file goes through the text form).
        for text in ["all", "head", "last:3", "head,norm.*", "all,", "head,", "blocks.*.q.weight"] {
            let t = Trainable::parse(text).unwrap();
            assert_eq!(Trainable::parse(&t.to_string()).unwrap(), t, "{text}");
        }
    }

    /// A decoder's names as the mapper sees them, and which train under each selection.
    #[test]
    fn selections_name_the_parameters_they_train() {
        use crate::student::{DecoderConfig, StudentArch};
        let device = burn::tensor::Device::flex();
        let student = StudentArch::Decoder(DecoderConfig::new(16, 8, 3, 2, 12)).init(&device);
        let names = |t: &Trainable, f: &[String]| {
            let probe = student.clone();
            let mut m = Select { student: &probe, trainable: t, freeze: f, path: Vec::new(), seen: Vec::new() };
            let _ = student.clone().map(&mut m);
            m.seen.into_iter().filter(|(_, t)| *t).map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(names(&Trainable::Head, &[]), ["head.weight"]);
        let last = names(&Trainable::Last(1), &[]);
        assert!(last.contains(&"blocks.2.q.weight".to_string()) && last.contains(&"norm.gamma".to_string()));
        assert!(!last.iter().any(|n| n.starts_with("blocks.1.") || n.starts_with("embed.")), "{last:?}");
        let all_but = names(&Trainable::All, &globs("embed.*,blocks.0.*"));
        assert!(all_but.iter().all(|n| !n.starts_with("embed.") && !n.starts_with("blocks.0.")), "{all_but:?}");
        assert!(select(student.clone(), &Trainable::Globs(vec!["nothing".into()]), &[]).is_err());
    }
}
