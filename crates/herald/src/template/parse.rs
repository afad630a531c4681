//! The parser: tokens → a tree of [`Node`]s, with Go's rules for pipelines,
//! variable declarations, `if`/`else if`/`range`/`with`/`break`/`continue`, and
//! function names checked at parse time (`function "x" not defined`, as Go).
//! `define`, `block`, `template` and `call` are parsed and marked, so the caller can
//! refuse them the way ntfy does (after a successful parse).

use super::TemplateError;
use super::funcs;
use super::lex::Tok;

/// Deepest nesting of blocks and parentheses a template may have.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub(super) enum Node {
    Text(String),
    /// `{{pipeline}}`: printed unless it declares a variable.
    Action(Pipeline),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub pipe: Pipeline,
    pub list: Vec<Node>,
    pub else_list: Vec<Node>,
}

#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    /// Variables declared (`:=`) or assigned (`=`) by this pipeline.
    pub vars: Vec<String>,
    pub declare: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(super) struct Command {
    pub args: Vec<Operand>,
}

#[derive(Debug, Clone)]
pub(super) enum Operand {
    /// A term followed by field names (`.a.b`, `$x.a`, `(pipe).a`).
    Chain(Term, Vec<String>),
}

#[derive(Debug, Clone)]
pub(super) enum Term {
    Dot,
    Var(String),
    Func(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Pipe(Box<Pipeline>),
}

/// What the parser produced: the tree, and whether it uses a feature ntfy refuses.
pub(super) struct Parsed {
    pub nodes: Vec<Node>,
    pub disallowed: bool,
}

pub(super) fn parse(tokens: Vec<Tok>) -> Result<Parsed, TemplateError> {
    let mut p = Parser {
        toks: tokens,
        pos: 0,
        depth: 0,
        range_depth: 0,
        disallowed: false,
        vars: vec!["$".into()],
    };
    let (nodes, end) = p.list()?;
    match end {
        Stop::Eof => Ok(Parsed {
            nodes,
            disallowed: p.disallowed,
        }),
        Stop::End => Err(err("unexpected {{end}}")),
        Stop::Else(_) => Err(err("unexpected {{else}}")),
    }
}

fn err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Parse(msg.into())
}

/// How a list ended.
enum Stop {
    Eof,
    End,
    /// `{{else}}`, or `{{else if ...}}`/`{{else with ...}}` (the keyword).
    Else(Option<String>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    range_depth: usize,
    disallowed: bool,
    /// Variables in scope (Go refuses undefined ones at parse time).
    vars: Vec<String>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn skip_space(&mut self) {
        while self.peek() == Some(&Tok::Space) {
            self.pos += 1;
        }
    }

    fn enter(&mut self) -> Result<(), TemplateError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err("template nested too deeply"));
        }
        Ok(())
    }

    fn list(&mut self) -> Result<(Vec<Node>, Stop), TemplateError> {
        let mut nodes = Vec::new();
        loop {
            match self.next() {
                None => return Ok((nodes, Stop::Eof)),
                Some(Tok::Text(t)) => nodes.push(Node::Text(t)),
                Some(Tok::Open) => {
                    self.skip_space();
                    let keyword = match self.peek() {
                        Some(Tok::Ident(w)) => Some(w.clone()),
                        _ => None,
                    };
                    match keyword.as_deref() {
                        Some("end") => {
                            self.pos += 1;
                            self.close()?;
                            return Ok((nodes, Stop::End));
                        }
                        Some("else") => {
                            self.pos += 1;
                            self.skip_space();
                            if let Some(Tok::Ident(w)) = self.peek()
                                && (w == "if" || w == "with")
                            {
                                let w = w.clone();
                                // The `if`/`with` is parsed by the caller as a nested block.
                                return Ok((nodes, Stop::Else(Some(w))));
                            }
                            self.close()?;
                            return Ok((nodes, Stop::Else(None)));
                        }
                        Some(kw @ ("if" | "with" | "range")) => {
                            let kw = kw.to_string();
                            self.pos += 1;
                            nodes.push(self.branch(&kw)?);
                        }
                        Some(kw @ ("break" | "continue")) => {
                            if self.range_depth == 0 {
                                return Err(err(format!("{{{{{kw}}}}} outside {{{{range}}}}")));
                            }
                            let node = if kw == "break" {
                                Node::Break
                            } else {
                                Node::Continue
                            };
                            self.pos += 1;
                            self.close()?;
                            nodes.push(node);
                        }
                        Some("define" | "block") => {
                            self.pos += 1;
                            self.disallowed = true;
                            self.skip_space();
                            self.pipeline(false)?;
                            self.enter()?;
                            let (_, end) = self.list()?;
                            self.depth -= 1;
                            if !matches!(end, Stop::End) {
                                return Err(err("unexpected EOF in define/block"));
                            }
                        }
                        Some("template") => {
                            self.pos += 1;
                            self.disallowed = true;
                            self.skip_space();
                            self.pipeline(false)?;
                        }
                        _ => {
                            let pipe = self.pipeline(true)?;
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                Some(t) => return Err(err(format!("unexpected {t:?}"))),
            }
        }
    }

    fn close(&mut self) -> Result<(), TemplateError> {
        self.skip_space();
        match self.next() {
            Some(Tok::Close) => Ok(()),
            _ => Err(err("unexpected token in action, expected }}")),
        }
    }

    /// `if`/`with`/`range` after the keyword, up to and including its `{{end}}`.
    fn branch(&mut self, kw: &str) -> Result<Node, TemplateError> {
        self.enter()?;
        let scope = self.vars.len();
        self.skip_space();
        let pipe = self.pipeline(kw == "range")?;
        if kw == "range" {
            self.range_depth += 1;
        }
        let (list, end) = self.list()?;
        if kw == "range" {
            self.range_depth -= 1;
        }
        let else_list = match end {
            Stop::End => Vec::new(),
            Stop::Eof => return Err(err(format!("unexpected EOF in {kw}"))),
            Stop::Else(None) => {
                let (else_list, end) = self.list()?;
                if !matches!(end, Stop::End) {
                    return Err(err(format!("expected end in {kw}")));
                }
                else_list
            }
            // `{{else if x}}` is `{{else}}{{if x}}...{{end}}` sharing the outer `end`.
            Stop::Else(Some(nested)) => {
                self.pos += 1;
                vec![self.branch(&nested)?]
            }
        };
        self.vars.truncate(scope);
        self.depth -= 1;
        let branch = Branch {
            pipe,
            list,
            else_list,
        };
        Ok(match kw {
            "if" => Node::If(branch),
            "with" => Node::With(branch),
            _ => Node::Range(branch),
        })
    }

    /// A pipeline up to `}}` (consumed). `range` may declare two variables.
    fn pipeline(&mut self, allow_two_vars: bool) -> Result<Pipeline, TemplateError> {
        let pipe = self.pipeline_until(allow_two_vars, true)?;
        Ok(pipe)
    }

    fn pipeline_until(
        &mut self,
        allow_two_vars: bool,
        top: bool,
    ) -> Result<Pipeline, TemplateError> {
        self.skip_space();
        let mut vars = Vec::new();
        let mut declare = false;
        // Look ahead for `$x :=`, `$x =` or `$i, $v :=`.
        let save = self.pos;
        if let Some(Tok::Var(name)) = self.peek().cloned() {
            self.pos += 1;
            self.skip_space();
            match self.peek() {
                Some(Tok::Declare) | Some(Tok::Assign) => {
                    declare = self.peek() == Some(&Tok::Declare);
                    self.pos += 1;
                    vars.push(name);
                }
                Some(Tok::Comma) if allow_two_vars => {
                    self.pos += 1;
                    self.skip_space();
                    match (self.next(), {
                        self.skip_space();
                        self.next()
                    }) {
                        (Some(Tok::Var(second)), Some(Tok::Declare | Tok::Assign)) => {
                            declare = true;
                            vars.push(name);
                            vars.push(second);
                        }
                        _ => return Err(err("range can only initialize variables")),
                    }
                }
                _ => self.pos = save,
            }
        }
        for v in &vars {
            if declare {
                self.vars.push(format!("${v}"));
            } else if !self.vars.iter().any(|x| x == &format!("${v}")) {
                return Err(err(format!("undefined variable: ${v}")));
            }
        }
        let mut cmds = Vec::new();
        loop {
            self.skip_space();
            let cmd = self.command()?;
            if cmd.args.is_empty() {
                return Err(err("missing command"));
            }
            cmds.push(cmd);
            match self.next() {
                Some(Tok::Pipe) => continue,
                Some(Tok::Close) if top => break,
                Some(Tok::RParen) if !top => break,
                _ => return Err(err("unexpected token in pipeline")),
            }
        }
        // A function that is not first in a later command receives the pipe's value:
        // only commands after the first may start with a non-function.
        for c in cmds.iter().skip(1) {
            if !matches!(c.args.first(), Some(Operand::Chain(Term::Func(_), _))) {
                return Err(err("non executable command in pipeline stage"));
            }
        }
        Ok(Pipeline {
            vars,
            declare,
            cmds,
        })
    }

    /// Operands up to `|`, `)` or `}}` (not consumed).
    fn command(&mut self) -> Result<Command, TemplateError> {
        let mut args = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None => return Err(err("unclosed action")),
                Some(Tok::Pipe | Tok::RParen | Tok::Close) => return Ok(Command { args }),
                _ => {}
            }
            let op = self.operand()?;
            // Arguments must be separated by spaces.
            if !matches!(
                self.peek(),
                Some(Tok::Space | Tok::Pipe | Tok::RParen | Tok::Close) | None
            ) {
                return Err(err("missing space between arguments"));
            }
            args.push(op);
        }
    }

    fn operand(&mut self) -> Result<Operand, TemplateError> {
        let tok = self.next().ok_or_else(|| err("unclosed action"))?;
        let (term, mut fields) = match tok {
            Tok::Dot => (Term::Dot, Vec::new()),
            Tok::Field(f) => (Term::Dot, vec![f]),
            Tok::Var(v) => {
                let name = format!("${v}");
                if !self.vars.contains(&name) {
                    return Err(err(format!("undefined variable: {name}")));
                }
                (Term::Var(name), Vec::new())
            }
            Tok::Ident(name) => {
                if name == "call" {
                    self.disallowed = true;
                } else if !funcs::exists(&name) {
                    return Err(err(format!("function {name:?} not defined")));
                }
                (Term::Func(name), Vec::new())
            }
            Tok::Str(s) => (Term::Str(s), Vec::new()),
            Tok::Int(i) => (Term::Int(i), Vec::new()),
            Tok::Float(f) => (Term::Float(f), Vec::new()),
            Tok::Bool(b) => (Term::Bool(b), Vec::new()),
            Tok::Nil => (Term::Nil, Vec::new()),
            Tok::LParen => {
                self.enter()?;
                let p = self.pipeline_until(false, false)?;
                self.depth -= 1;
                (Term::Pipe(Box::new(p)), Vec::new())
            }
            t => return Err(err(format!("unexpected {t:?} in operand"))),
        };
        while let Some(Tok::Field(f)) = self.peek() {
            fields.push(f.clone());
            self.pos += 1;
        }
        if !fields.is_empty() && matches!(term, Term::Func(_) | Term::Nil) {
            return Err(err("unexpected . after term"));
        }
        Ok(Operand::Chain(term, fields))
    }
}
