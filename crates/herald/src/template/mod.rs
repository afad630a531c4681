//! Message templates (ntfy's `X-Template`, https://docs.ntfy.sh/publish/#message-templating):
//! systems that cannot shape their webhook (Grafana, Alertmanager, GitHub) post
//! their own JSON, and a template turns it into a title, message and priority.
//!
//! The language is Go's `text/template` with the Sprig functions that make sense
//! over JSON. The Rust ports (gtmpl, gotmpl) have no Sprig and no bound on output,
//! allocation or time (gtmpl none at all; docs/TEMPLATES.md has the evaluation), and
//! untrusted templates need all of them, so this module is an interpreter of its own:
//! [`lex`] → [`parse`] → [`exec`] over [`value`]s, with [`funcs`].
//!
//! # Grammar (as Go's, minus `define`/`block`/`template`/`call`, which are refused)
//!
//! ```text
//! template  := (text | action)*
//! action    := "{{" ["- "] body [" -"] "}}"  |  "{{" ["- "] "/*" comment "*/" [" -"] "}}"
//! body      := pipeline
//!            | "if" pipeline "}}" template ("{{else if" pipeline "}}" template)*
//!                  ["{{else}}" template] "{{end"        (likewise "with")
//!            | "range" [var ["," var] ":="] pipeline "}}" template ["{{else}}" template] "{{end"
//!            | "break" | "continue"                        (inside range)
//! pipeline  := [var (":=" | "=")] command ("|" command)*
//! command   := operand (" " operand)*
//! operand   := term field*
//! term      := "." | field | var | function | literal | "(" pipeline ")"
//! field     := "." identifier          var := "$" [identifier]
//! literal   := string | raw string | char | number | "true" | "false" | "nil"
//! ```
//!
//! # Bounds (untrusted input never panics, loops or allocates without bound)
//! A template is at most 32 KiB ([`MAX_TEMPLATE_BYTES`], `40056`); nesting at most
//! 64 deep (parse error); a render takes at most [`MAX_STEPS`] steps and
//! [`TIME_LIMIT`] (`40055`), writes at most [`MAX_OUTPUT`] and builds at most
//! [`MAX_ALLOC`] of values (`40045`). Rendering is synchronous CPU work: callers run it
//! off the async runtime's threads (`tokio::task::spawn_blocking`).

mod exec;
mod funcs;
mod lex;
mod parse;
mod value;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) use exec::Budget;
use value::Value;

/// Largest template (inline or from a file), as ntfy.
pub(crate) const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
/// Largest output of one render, as ntfy.
pub(crate) const MAX_OUTPUT: usize = 1024 * 1024;
/// Wall-clock limit of one render, as ntfy.
pub(crate) const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Steps of one render: a deterministic bound far above what real templates use
/// (ntfy's built-ins take a few hundred) and reached well within [`TIME_LIMIT`].
pub(crate) const MAX_STEPS: u64 = 1_000_000;
/// Bytes of values one render may build.
pub(crate) const MAX_ALLOC: usize = 16 * 1024 * 1024;
/// A templated body is read up to max(`message-size-limit`, this), as ntfy.
pub(crate) const JSON_BODY_LIMIT: usize = 32 * 1024;

/// Why a template could not be applied; `error` maps each to ntfy's code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `40043`: does not parse (or names an undefined function or variable).
    #[error("template is invalid: {0}")]
    Parse(String),
    /// `40044`: uses `define`, `block`, `template` or `call`.
    #[error("template uses disallowed functions")]
    Disallowed,
    /// `40045`: failed while rendering (`fail`, a type error, the output limit).
    #[error("template execution failed: {0}")]
    Exec(String),
    /// `40055`: ran out of steps or time.
    #[error("template execution timed out")]
    Timeout,
    /// `40056`: the template itself is over 32 KiB.
    #[error("template too large")]
    TooLarge,
    /// `40042`: the body is not JSON.
    #[error("message body must be JSON")]
    NotJson,
    /// `40047`: no built-in or `template-dir` template of that name.
    #[error("template file not found")]
    NotFound,
    /// `40048`: the template file is not the YAML ntfy expects.
    #[error("template file invalid")]
    InvalidFile,
    /// `40041`: the title or message came out longer than `message-size-limit`.
    #[error("message or title too large after templating")]
    ResultTooLarge,
}

/// `X-Template`'s value: `yes`/`true`/`1` templates the parameters; another value
/// names a template file. `no`/`false`/`0` (and no parameter) mean "off".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Inline,
    Named(String),
}

impl Mode {
    pub(crate) fn parse(value: &str) -> Option<Mode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "no" | "false" | "0" => None,
            "yes" | "true" | "1" => Some(Mode::Inline),
            _ => Some(Mode::Named(value.trim().to_string())),
        }
    }
}

/// The templates of one publish: in inline mode the request's own title, message and
/// priority parameters; in named mode the file's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    pub title: Option<String>,
    pub message: Option<String>,
    pub priority: Option<String>,
}

/// Renders one template over `data`.
fn render(template: &str, data: &Value, deadline: Instant) -> Result<String, TemplateError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge);
    }
    let parsed = parse::parse(lex::lex(template)?)?;
    if parsed.disallowed {
        return Err(TemplateError::Disallowed);
    }
    let budget = Budget {
        steps: MAX_STEPS,
        deadline,
        output: MAX_OUTPUT,
        alloc: MAX_ALLOC,
    };
    let mut exec = exec::Exec::new(budget, data.clone());
    exec.run(&parsed.nodes)?;
    // As ntfy: trimmed, and literal `\n` outside actions become newlines.
    Ok(exec.out.replace("\\n", "\n").trim().to_string())
}

/// Where named templates come from: herald's built-ins, overridden by `<name>.yml`
/// files in `template-dir`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Templates {
    dir: Option<PathBuf>,
}

/// herald's own templates for the webhooks ntfy has built-in templates for.
const BUILTIN: &[(&str, &str)] = &[
    ("github", include_str!("builtin/github.yml")),
    ("grafana", include_str!("builtin/grafana.yml")),
    ("alertmanager", include_str!("builtin/alertmanager.yml")),
];

/// A template file bigger than this is not read (a template in it could not be
/// used anyway).
const MAX_FILE_BYTES: u64 = 4 * MAX_TEMPLATE_BYTES as u64;

impl Templates {
    pub(crate) fn new(dir: Option<PathBuf>) -> Templates {
        Templates { dir }
    }

    /// The fields of a named template (ntfy's lookup: the name must match
    /// `^[-_A-Za-z0-9]+$`; a non-empty file in `template-dir` wins over a built-in).
    fn load(&self, name: &str) -> Result<Fields, TemplateError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TemplateError::NotFound);
        }
        let mut content = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.to_string());
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{name}.yml"));
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.len() > MAX_FILE_BYTES {
                    return Err(TemplateError::TooLarge);
                }
                if let Ok(text) = std::fs::read_to_string(&path)
                    && !text.is_empty()
                {
                    content = Some(text);
                }
            }
        }
        let content = content.ok_or(TemplateError::NotFound)?;
        #[derive(serde::Deserialize)]
        struct File {
            title: Option<String>,
            message: Option<String>,
            priority: Option<String>,
        }
        let file: File =
            serde_saphyr::from_str(&content).map_err(|_| TemplateError::InvalidFile)?;
        Ok(Fields {
            title: file.title,
            message: file.message,
            priority: file.priority,
        })
    }

    /// Renders the fields `mode` selects over the JSON `body`; the result holds only
    /// the fields that were templated (the caller keeps the others). In inline mode
    /// `params` are the request's title, message and priority; the message and title
    /// are always rendered, the priority only when given.
    pub(crate) fn apply(
        &self,
        mode: &Mode,
        params: Fields,
        body: &[u8],
        message_size_limit: usize,
    ) -> Result<Fields, TemplateError> {
        let started = Instant::now();
        let fields = match mode {
            Mode::Inline => Fields {
                message: Some(params.message.unwrap_or_default()),
                title: Some(params.title.unwrap_or_default()),
                priority: params.priority.filter(|p| !p.is_empty()),
            },
            Mode::Named(name) => self.load(name)?,
        };
        let mut data: Option<Value> = None;
        let mut one = |template: Option<String>| -> Result<Option<String>, TemplateError> {
            let Some(template) = template else {
                return Ok(None);
            };
            if template.len() > MAX_TEMPLATE_BYTES {
                return Err(TemplateError::TooLarge);
            }
            let data = match &data {
                Some(d) => d,
                None => {
                    let text = std::str::from_utf8(body).map_err(|_| TemplateError::NotJson)?;
                    let json: serde_json::Value =
                        serde_json::from_str(text.trim()).map_err(|_| TemplateError::NotJson)?;
                    data.insert(Value::from_json(&json))
                }
            };
            // Each render gets ntfy's time limit of its own.
            render(&template, data, Instant::now() + TIME_LIMIT).map(Some)
        };
        let out = Fields {
            message: one(fields.message)?,
            title: one(fields.title)?,
            priority: one(fields.priority)?,
        };
        let too_long =
            |f: &Option<String>| f.as_ref().is_some_and(|s| s.len() > message_size_limit);
        if too_long(&out.title) || too_long(&out.message) {
            return Err(TemplateError::ResultTooLarge);
        }
        tracing::trace!(elapsed = ?started.elapsed(), "templates rendered");
        Ok(out)
    }
}
