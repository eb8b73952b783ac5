//! Chat data, for both stages and `eval`: a column of conversations (`[{role, content}, ...]`,
//! the layout of instruction datasets) rendered with the tokenizer's chat template, and the
//! assistant turns found in the rendered text so that only their tokens are cached and
//! trained (`--positions assistant`, TRL's `assistant_only_loss`).
//!
//! Rendering follows `transformers`' `apply_chat_template`: a Jinja template (minijinja, with
//! Python's string methods, `trim_blocks` and `lstrip_blocks`, `raise_exception`, and
//! `tojson` writing as Python's `json.dumps` does) given `messages`, the special tokens of
//! `tokenizer_config.json` (`bos_token`, `eos_token`, ...) and `add_generation_prompt =
//! false`. The assistant spans are the template's `{% generation %}...{% endgeneration %}`
//! blocks, as for `return_assistant_tokens_mask=True`; a token is an assistant token when
//! it lies between the tokens holding a span's first and last characters. `strftime_now` is
//! not provided, so a template that dates its system prompt uses its fixed fallback and
//! stage one and stage two render the same text on any day.
//!
//! The template and its special tokens travel with the cache (`chat_template.json`) and are
//! fingerprinted in the manifest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the saved template inside a cache and a run directory.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.json";

/// Marks the start and end of a `{% generation %}` block in the rendered text (private-use
/// characters, removed before tokenizing).
const START: char = '\u{E000}';
const END: char = '\u{E001}';

/// What is saved in a cache: the template text and the special tokens it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTemplate {
    pub template: String,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token`, ... as `tokenizer_config.json` names them.
    pub tokens: BTreeMap<String, String>,
}

/// A loaded chat template, ready to render.
pub struct ChatTemplate {
    pub saved: SavedTemplate,
    /// SHA-256 of the saved template's JSON: the fingerprint recorded in manifests.
    pub sha256: String,
    /// Where the template was read from (for messages).
    pub path: PathBuf,
    env: minijinja::Environment<'static>,
}

/// A rendered conversation: the text and the byte ranges of its assistant (generation) spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub assistant: Vec<Range<usize>>,
}

impl ChatTemplate {
    /// The template for `tokenizer`: `explicit` (a `.jinja` file or a `tokenizer_config.json`)
    /// or, beside the tokenizer, `chat_template.jinja` or `tokenizer_config.json`'s
    /// `chat_template`. Special tokens come from the `tokenizer_config.json` given or beside
    /// the tokenizer.
    pub fn find(explicit: Option<&Path>, tokenizer: &Path) -> Result<ChatTemplate> {
        let dir = tokenizer.parent().unwrap_or(Path::new("."));
        let beside_config = dir.join("tokenizer_config.json");
        let (path, config) = match explicit {
            Some(p) if p.extension().is_some_and(|e| e == "json") => (p.to_path_buf(), Some(p.to_path_buf())),
            Some(p) => (p.to_path_buf(), beside_config.is_file().then_some(beside_config)),
            None if dir.join("chat_template.jinja").is_file() => {
                (dir.join("chat_template.jinja"), beside_config.is_file().then_some(beside_config))
            }
            None if beside_config.is_file() => (beside_config.clone(), Some(beside_config)),
            None => {
                return Err(Error::Config(format!(
                    "--messages-column needs a chat template: {} has no tokenizer_config.json or chat_template.jinja beside it; \
                     give one with --chat-template FILE (a .jinja template or a tokenizer_config.json)",
                    tokenizer.display()
                )));
            }
        };
        let config_json = match &config {
            Some(c) => Some(read_json(c)?),
            None => None,
        };
        let template = if path.extension().is_some_and(|e| e == "json") {
            let cfg = config_json.as_ref().expect("a .json template path is the config");
            template_of_config(cfg).ok_or_else(|| {
                Error::Config(format!("{}: has no `chat_template` (a string, or a list with a `default` entry)", path.display()))
            })?
        } else {
            crate::untrusted::read_to_string(&path, crate::untrusted::Cap::Settings)?
        };
        let tokens = config_json.as_ref().map(special_tokens).unwrap_or_default();
        ChatTemplate::new(SavedTemplate { template, tokens }, path)
    }

    /// Load a template saved in a cache or run directory.
    pub fn load_saved(path: &Path) -> Result<ChatTemplate> {
        let bytes = crate::untrusted::read(path, crate::untrusted::Cap::Settings)?;
        let saved: SavedTemplate =
            serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: not a saved chat template: {e}", path.display())))?;
        ChatTemplate::new(saved, path.to_path_buf())
    }

    pub fn new(saved: SavedTemplate, path: PathBuf) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", tojson);
        // A template from someone else may loop without end: every render gets a budget.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template_owned("chat", mark_generation_blocks(&saved.template))
            .map_err(|e| Error::Config(format!("{}: the chat template does not parse: {e:#}", path.display())))?;
        let sha256 = crate::integrity::sha256_bytes(&serde_json::to_vec(&saved).expect("template serialises"));
        Ok(ChatTemplate { saved, sha256, path, env })
    }

    /// Save beside a cache or a run (`dir/chat_template.json`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.saved).expect("template serialises");
        crate::integrity::write_atomic(&dir.join(CHAT_TEMPLATE_FILE), &json)
    }

    /// Render one conversation (`messages`: a JSON list of turns), with the assistant
    /// header a reply would follow when `add_generation_prompt`. The error is the
    /// template's (e.g. its `raise_exception` message), for the caller to place.
    pub fn render(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> std::result::Result<Rendered, String> {
        if !messages.is_array() {
            return Err(format!("expected a list of {{role, content}} turns, found {}", json_kind(messages)));
        }
        let mut ctx: BTreeMap<String, minijinja::Value> =
            self.saved.tokens.iter().map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str()))).collect();
        if holds_marker(messages) {
            return Err(format!(
                "a turn holds U+{:04X} or U+{:04X}, the characters distill marks assistant spans with",
                START as u32, END as u32
            ));
        }
        ctx.insert("messages".into(), minijinja::Value::from_serialize(messages));
        // As transformers passes them when a conversation has no tools or documents.
        ctx.insert("tools".into(), minijinja::Value::from(()));
        ctx.insert("documents".into(), minijinja::Value::from(()));
        ctx.insert("add_generation_prompt".into(), minijinja::Value::from(add_generation_prompt));
        let template = self.env.get_template("chat").expect("added in new");
        let mut out = BoundedText(Vec::new());
        template.render_captured_to(minijinja::Value::from_serialize(&ctx), &mut out).map(drop).map_err(|e| match e.kind() {
            minijinja::ErrorKind::InvalidOperation => format!("the chat template refused the conversation: {}", e.detail().unwrap_or("")),
            minijinja::ErrorKind::OutOfFuel => {
                format!("the chat template ran past its limit of {TEMPLATE_FUEL} instructions for one conversation (a loop without end?)")
            }
            minijinja::ErrorKind::WriteFailure => {
                format!("the chat template wrote more than its limit of {TEMPLATE_OUTPUT_BYTES} bytes for one conversation")
            }
            _ => format!("the chat template failed: {e:#}"),
        })?;
        let out = String::from_utf8(out.0).map_err(|_| "the chat template wrote text that is not UTF-8".to_string())?;
        split_spans(&out)
    }
}

/// The instructions one render may run: real templates render a long conversation in tens
/// of thousands; a template from someone else that loops without end stops here.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// The most text one render may write.
pub const TEMPLATE_OUTPUT_BYTES: usize = 64 << 20;

/// A render's output, refused once it passes [`TEMPLATE_OUTPUT_BYTES`].
struct BoundedText(Vec<u8>);

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_OUTPUT_BYTES {
            return Err(std::io::Error::other("chat template output over its limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rewrite `{% generation %}` / `{% endgeneration %}` into blocks that print a marker. The
/// marker sits between `{% if true %}` and `{% endif %}` so that whitespace control and
/// `trim_blocks` / `lstrip_blocks` act on the rewritten tags as on the original ones.
fn mark_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(len) = rest[open..].find("%}") else { break };
        let tag = &rest[open + 2..open + len];
        let (left, inner) = match tag.strip_prefix(['-', '+']) {
            Some(t) => (&tag[..1], t),
            None => ("", tag),
        };
        let (inner, right) = match inner.strip_suffix(['-', '+']) {
            Some(t) => (t, &inner[inner.len() - 1..]),
            None => (inner, ""),
        };
        let marker = match inner.trim() {
            "generation" => Some(START),
            "endgeneration" => Some(END),
            _ => None,
        };
        out.push_str(&rest[..open]);
        match marker {
            Some(m) => out.push_str(&format!("{{%{left} if true %}}{{{{ '{m}' }}}}{{% endif {right}%}}")),
            None => out.push_str(&rest[open..open + len + 2]),
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Whether any string in `v` holds a span marker.
fn holds_marker(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains([START, END]),
        serde_json::Value::Array(a) => a.iter().any(holds_marker),
        serde_json::Value::Object(o) => o.iter().any(|(k, x)| k.contains([START, END]) || holds_marker(x)),
        _ => false,
    }
}

/// Remove the markers, returning the text and the byte ranges between each pair.
fn split_spans(marked: &str) -> std::result::Result<Rendered, String> {
    let mut text = String::with_capacity(marked.len());
    let (mut spans, mut open) = (Vec::new(), None);
    for c in marked.chars() {
        match (c, open) {
            (START, None) => open = Some(text.len()),
            (END, Some(s)) => {
                spans.push(s..text.len());
                open = None;
            }
            (START | END, _) => return Err("the chat template's {% generation %} blocks are nested or unbalanced".into()),
            _ => text.push(c),
        }
    }
    if open.is_some() {
        return Err("a {% generation %} block of the chat template is not closed".into());
    }
    Ok(Rendered { text, assistant: spans })
}

/// Which tokens lie in an assistant span, as `transformers` decides it: the tokens from the
/// one holding the span's first byte to the one holding its last byte; a span whose first
/// byte no token holds ends the marking (a truncated text).
///
/// # Shapes
/// - `offsets`: `[tokens]` byte ranges into the rendered text; result `[tokens]`
pub fn assistant_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    let token_of = |byte: usize| offsets.iter().position(|&(s, e)| s <= byte && byte < e);
    let mut mask = vec![false; offsets.len()];
    for span in spans.iter().filter(|s| !s.is_empty()) {
        let Some(first) = token_of(span.start) else { break };
        // transformers marks to the end when the last token is not found (or is token 0).
        let last = match token_of(span.end - 1) {
            Some(l) if l > 0 => l,
            _ => offsets.len().saturating_sub(1),
        };
        for m in &mut mask[first..=last.max(first)] {
            *m = true;
        }
    }
    mask
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::untrusted::read(path, crate::untrusted::Cap::Settings)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// `chat_template` of a tokenizer_config.json: a string, or a list of `{name, template}`
/// (the `default` one, else the first).
fn template_of_config(cfg: &serde_json::Value) -> Option<String> {
    match cfg.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
            named("default").or(list.first())?.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// The `*_token` entries of a tokenizer_config.json, as strings (an AddedToken object gives
/// its `content`).
fn special_tokens(cfg: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(obj) = cfg.as_object() {
        for (k, v) in obj.iter().filter(|(k, _)| k.ends_with("_token")) {
            let content = match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            };
            if let Some(c) = content {
                out.insert(k.clone(), c);
            }
        }
    }
    out
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `tojson` as `transformers` defines it: Python's `json.dumps(x, ensure_ascii=False)`, whose
/// separators are `", "` and `": "` (or newlines and `indent` spaces with `indent`).
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted as transformers' tojson accepts them; only their defaults are supported.
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<minijinja::Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    if ensure_ascii == Some(true) || sort_keys == Some(true) || separators.is_some_and(|s| !s.is_none()) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "tojson: only ensure_ascii=False, sort_keys=False and the default separators are supported",
        ));
    }
    let json = serde_json::to_value(&value).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, x)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).expect("a string serialises"));
                out.push_str(": ");
                write_python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).expect("JSON serialises")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let tokens = [("bos_token", "<s>"), ("eos_token", "</s>")].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        ChatTemplate::new(SavedTemplate { template: source.into(), tokens }, PathBuf::from("t.jinja")).unwrap()
    }

    /// Spans are the generation blocks' text; `trim_blocks` still removes the newline after
    /// the rewritten tags, and `{%-` still trims before them (as jinja2 does with the
    /// original tags: expected strings written by hand from jinja2's rules).
    #[test]
    fn generation_blocks_become_spans_with_whitespace_control_kept() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{% if m.role == 'assistant' %}{% generation %}\n{{ m.content.strip() }}{{ eos_token }}{%- endgeneration %}\n{% else %}{{ m.content }}\n{% endif %}{% endfor %}",
        );
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yes "}]);
        let r = t.render(&msgs, false).unwrap();
        assert_eq!(r.text, "<s><|user|>\nhi\n<|assistant|>\nyes</s>");
        assert_eq!(r.assistant.len(), 1);
        assert_eq!(&r.text[r.assistant[0].clone()], "yes</s>");
    }

    #[test]
    fn raise_exception_and_unbalanced_blocks_are_errors() {
        let t = template(
            "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('tool turns are not supported') }}{% endif %}{% endfor %}",
        );
        let err = t.render(&serde_json::json!([{"role": "tool", "content": "x"}]), false).unwrap_err();
        assert!(err.contains("tool turns are not supported"), "{err}");
        let t = template("{% generation %}{{ messages[0].content }}");
        assert!(t.render(&serde_json::json!([{"role": "user", "content": "x"}]), false).unwrap_err().contains("not closed"));
        assert!(t.render(&serde_json::json!("text"), false).unwrap_err().contains("a list"));
    }

    /// A template that loops without end is stopped by its instruction budget, one that
    /// writes without end by its output limit, each with a message that names the limit.
    #[test]
    fn runaway_templates_stop_at_their_limits() {
        let msgs = serde_json::json!([{"role": "user", "content": "x"}]);
        let t = template("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}");
        let err = t.render(&msgs, false).unwrap_err();
        assert!(err.contains(&format!("limit of {TEMPLATE_FUEL} instructions")), "{err}");
        let t = template("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}");
        let err = t.render(&msgs, false).unwrap_err();
        assert!(err.contains(&format!("more than its limit of {TEMPLATE_OUTPUT_BYTES} bytes")), "{err}");
    }

    /// By hand: tokens at bytes [0,3) [3,5) [5,9) [9,10); a span over bytes 4..9 starts in
    /// token 1 and ends in token 2; a span starting past every token stops the marking.
    #[test]
    fn assistant_mask_covers_the_tokens_holding_the_span() {
        let offsets = [(0, 3), (3, 5), (5, 9), (9, 10)];
        assert_eq!(assistant_mask(&offsets, std::slice::from_ref(&(4..9))), vec![false, true, true, false]);
        assert_eq!(assistant_mask(&offsets, &[9..10, 20..22, 0..1]), vec![false, false, false, true]);
    }

    /// `tojson` writes as Python's json.dumps(ensure_ascii=False): ", " and ": " separators,
    /// keys in the conversation's own order (expected strings from Python's json.dumps).
    #[test]
    fn tojson_writes_as_python() {
        let t = template("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}");
        let r = t.render(&serde_json::from_str("[{\"role\": \"user\", \"content\": \"é<b>\"}]").unwrap(), false).unwrap();
        assert_eq!(r.text, "[{\"role\": \"user\", \"content\": \"é<b>\"}]|{\n  \"role\": \"user\",\n  \"content\": \"é<b>\"\n}");
        // `tools is none` holds when there are none, as transformers passes tools=None.
        let t = template("{% if tools is none %}no tools{% endif %}");
        assert_eq!(t.render(&serde_json::json!([]), false).unwrap().text, "no tools");
        // The span markers cannot come from the data.
        let t = template("{{ messages[0].content }}");
        assert!(t.render(&serde_json::json!([{"content": "a\u{E000}"}]), false).unwrap_err().contains("U+E000"));
    }
}
