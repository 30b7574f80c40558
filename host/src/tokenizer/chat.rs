//! Chat templates: `tokenizer.chat_template` is a Jinja template (written for Hugging Face's
//! `apply_chat_template`), rendered here with minijinja in the same environment HF uses:
//! `trim_blocks` and `lstrip_blocks` on, `raise_exception(msg)` available, `tojson` formatting
//! like Python's `json.dumps` (`", "` and `": "` separators, non-ASCII kept), and Python string
//! methods (`.strip()`, `.startswith()`, …) through minijinja-contrib's pycompat.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::{Result, Tokenizer, TokenizerError};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A built-in ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a
/// template of their own whose vocabulary has the ChatML markers. Never applied implicitly.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), Error> {
    let nl = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(s)
                    .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                py_json(it, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                nl(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                let ks = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(
                    &serde_json::to_string(&ks)
                        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?,
                );
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                nl(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {}", v.kind()),
            ));
        }
    }
    Ok(())
}

fn tojson(v: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut s = String::new();
    py_json(&v, indent, 0, &mut s)?;
    Ok(s)
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Both options are valid together; `build` cannot fail for the default delimiters.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// Renders a chat template for `messages` (and, when given, `tools`: JSON function
/// descriptions), with `bos_token`/`eos_token` defined as the model's texts.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    tools: Option<&[serde_json::Value]>,
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let env = environment();
    let tmpl = env.template_from_str(template)?;
    let tools = tools.map(|t| Value::from(minijinja::value::Serde(t)));
    let out = tmpl.render(context! {
        messages => Value::from(minijinja::value::Serde(messages)),
        tools => tools,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })?;
    Ok(out)
}

impl Tokenizer {
    /// Renders the model's chat template for `messages` and encodes it as a prompt: BOS as the
    /// file asks, and special tokens parsed only where the template wrote them. Text inside a
    /// message's content is never turned into a control token, so a user who types
    /// `<|im_end|>` cannot close their own turn. Outside those spans the ids are exactly
    /// `encode(&rendered, true, true)`.
    ///
    /// Works by rendering once more with each content replaced by a placeholder to find where
    /// the contents land; a template that alters a content (strips it, say) is refused with an
    /// error rather than guessed at.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let t = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        self.encode_chat_with(t, messages, None, add_generation_prompt)
    }

    /// [`Tokenizer::encode_chat`] with a given template and optional tools.
    pub fn encode_chat_with(
        &self,
        template: &str,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let direct =
            self.apply_chat_template_with(template, messages, tools, add_generation_prompt)?;
        let mark = |i: usize| format!("\u{F8FF}\u{E000}msg{i}\u{E000}\u{F8FF}");
        let marked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                role: m.role.clone(),
                content: if m.content.is_empty() {
                    String::new()
                } else {
                    mark(i)
                },
            })
            .collect();
        let with_marks =
            self.apply_chat_template_with(template, &marked, tools, add_generation_prompt)?;
        // Substitute the contents back, recording where each lands.
        let mut rebuilt = String::with_capacity(direct.len());
        let mut spans = Vec::new();
        let mut rest = with_marks.as_str();
        while let Some(a) = rest.find("\u{F8FF}\u{E000}msg") {
            let after = &rest[a + "\u{F8FF}\u{E000}msg".len()..];
            let Some(b) = after.find("\u{E000}\u{F8FF}") else {
                break;
            };
            let Some(m) = after[..b]
                .parse::<usize>()
                .ok()
                .and_then(|i| messages.get(i))
            else {
                break;
            };
            rebuilt.push_str(&rest[..a]);
            spans.push((rebuilt.len(), rebuilt.len() + m.content.len()));
            rebuilt.push_str(&m.content);
            rest = &after[b + "\u{E000}\u{F8FF}".len()..];
        }
        rebuilt.push_str(rest);
        if rebuilt != direct {
            return Err(TokenizerError::Template(
                "the template changes message contents, so they cannot be told apart from its own \
                 markers; encode apply_chat_template's output explicitly if that is acceptable"
                    .into(),
            ));
        }
        Ok(self.encode_masked(direct.as_bytes(), true, true, &spans))
    }

    /// Renders the model's chat template (`tokenizer.chat_template`); a model without one is an
    /// error ([`TokenizerError::NoChatTemplate`]): pass a template to
    /// [`Tokenizer::apply_chat_template_with`] instead, e.g. [`CHATML_TEMPLATE`].
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        self.apply_chat_template_with(t, messages, None, add_generation_prompt)
    }

    /// Renders a given template (and optional tools) with this model's BOS/EOS texts.
    pub fn apply_chat_template_with(
        &self,
        template: &str,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or("");
        render(
            template,
            messages,
            tools,
            add_generation_prompt,
            text(self.bos),
            text(self.eos),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Expected strings are what Python's json.dumps(x, ensure_ascii=False) prints.
        let env = environment();
        let r = |src: &str| env.render_str(src, context! {}).unwrap();
        assert_eq!(
            r(r#"{{ {"name": "f", "n": 1, "xs": [1, 2.5, true, none], "s": "é\"<"} | tojson }}"#),
            r#"{"name": "f", "n": 1, "xs": [1, 2.5, true, null], "s": "é\"<"}"#
        );
        assert_eq!(r("{{ [] | tojson }}"), "[]");
        assert_eq!(
            r("{{ [1, [2]] | tojson(indent=2) }}"),
            "[\n  1,\n  [\n    2\n  ]\n]"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let e = render(
            "{{ raise_exception('only user and assistant roles') }}",
            &[],
            None,
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("only user and assistant roles"),
            "{e}"
        );
    }

    #[test]
    fn chatml_builtin() {
        let out = render(
            CHATML_TEMPLATE,
            &[ChatMessage::new("user", "hi")],
            None,
            true,
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
