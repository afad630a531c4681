//! The evaluator: walks the tree over the JSON data with a budget. Every node,
//! command and loop turn costs a step; values built by functions are charged to an
//! allocation budget; output is capped. Exhausting the steps or the wall-clock
//! deadline is a timeout (ntfy's `40055`); the rest are execution errors (`40045`).
//! Nesting is bounded by the parser, and templates cannot call templates, so the
//! recursion depth is the tree's depth.

use std::time::Instant;

use super::TemplateError;
use super::funcs;
use super::parse::{Branch, Command, Node, Operand, Pipeline, Term};
use super::value::Value;

/// What one render may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Steps (nodes, commands, loop turns) before the render counts as timed out.
    pub steps: u64,
    /// Wall-clock limit (ntfy: 100 ms).
    pub deadline: Instant,
    /// Output bytes (ntfy: 1 MiB).
    pub output: usize,
    /// Bytes of values built while rendering.
    pub alloc: usize,
}

enum Flow {
    Normal,
    Break,
    Continue,
}

pub(super) struct Exec {
    pub out: String,
    budget: Budget,
    steps: u64,
    allocated: usize,
    vars: Vec<(String, Value)>,
}

fn exec_err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Exec(msg.into())
}

impl Exec {
    pub fn new(budget: Budget, data: Value) -> Exec {
        Exec {
            out: String::new(),
            budget,
            steps: 0,
            allocated: 0,
            vars: vec![("$".into(), data)],
        }
    }

    pub fn run(&mut self, nodes: &[Node]) -> Result<(), TemplateError> {
        let dot = self.vars[0].1.clone();
        self.list(nodes, &dot).map(|_| ())
    }

    fn tick(&mut self) -> Result<(), TemplateError> {
        self.steps += 1;
        if self.steps > self.budget.steps {
            return Err(TemplateError::Timeout);
        }
        if self.steps.is_multiple_of(512) && Instant::now() > self.budget.deadline {
            return Err(TemplateError::Timeout);
        }
        Ok(())
    }

    /// Charges a value built by a function to the allocation budget.
    pub fn charge(&mut self, bytes: usize) -> Result<(), TemplateError> {
        self.allocated = self.allocated.saturating_add(bytes);
        if self.allocated > self.budget.alloc || bytes > self.budget.output {
            return Err(exec_err("template allocation limit exceeded"));
        }
        // Large values cost time too.
        self.steps = self.steps.saturating_add((bytes / 4096) as u64);
        self.tick()
    }

    fn write(&mut self, v: &Value) -> Result<(), TemplateError> {
        v.print_action(&mut self.out);
        if self.out.len() > self.budget.output {
            return Err(exec_err("template output limit exceeded"));
        }
        Ok(())
    }

    fn list(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, TemplateError> {
        for node in nodes {
            self.tick()?;
            match node {
                Node::Text(t) => {
                    self.out.push_str(t);
                    if self.out.len() > self.budget.output {
                        return Err(exec_err("template output limit exceeded"));
                    }
                }
                Node::Action(p) => {
                    let v = self.pipeline(p, dot)?;
                    if p.vars.is_empty() {
                        self.write(&v)?;
                    }
                }
                Node::If(b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(&b.pipe, dot)?;
                    let list = if v.truthy() { &b.list } else { &b.else_list };
                    let flow = self.list(list, dot)?;
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::With(b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(&b.pipe, dot)?;
                    let flow = if v.truthy() {
                        self.list(&b.list, &v)?
                    } else {
                        self.list(&b.else_list, dot)?
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range(b) => self.range(b, dot)?,
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn range(&mut self, b: &Branch, dot: &Value) -> Result<(), TemplateError> {
        let mark = self.vars.len();
        let v = self.commands(&b.pipe, dot)?;
        let mut items: Box<dyn Iterator<Item = (Value, Value)>> = match &v {
            Value::List(l) => {
                let l = l.clone();
                Box::new((0..l.len()).map(move |i| (Value::Int(i as i64), l[i].clone())))
            }
            Value::Map(m) => {
                let m = m.clone();
                let keys: Vec<String> = m.keys().cloned().collect();
                Box::new(keys.into_iter().map(move |k| {
                    let v = m.get(&k).cloned().unwrap_or_default();
                    (Value::str(k), v)
                }))
            }
            // Go 1.22: ranging over an integer counts from 0.
            Value::Int(n) => Box::new((0..(*n).max(0)).map(|i| (Value::Int(i), Value::Int(i)))),
            Value::Nil => Box::new(std::iter::empty()),
            other => {
                return Err(exec_err(format!(
                    "range can't iterate over {}",
                    other.to_display()
                )));
            }
        };
        let mut any = false;
        for (key, elem) in &mut items {
            self.tick()?;
            any = true;
            self.vars.truncate(mark);
            match b.pipe.vars.as_slice() {
                [one] => self.vars.push((format!("${one}"), elem.clone())),
                [k, e] => {
                    self.vars.push((format!("${k}"), key));
                    self.vars.push((format!("${e}"), elem.clone()));
                }
                _ => {}
            }
            match self.list(&b.list, &elem)? {
                Flow::Break => break,
                Flow::Normal | Flow::Continue => {}
            }
        }
        self.vars.truncate(mark);
        if !any {
            self.list(&b.else_list, dot)?;
            self.vars.truncate(mark);
        }
        Ok(())
    }

    /// Evaluates a pipeline and binds its variables (`$x := ...`, `$x = ...`).
    fn pipeline(&mut self, p: &Pipeline, dot: &Value) -> Result<Value, TemplateError> {
        let v = self.commands(p, dot)?;
        if let Some(name) = p.vars.first() {
            let name = format!("${name}");
            if p.declare {
                self.vars.push((name, v.clone()));
            } else if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| *n == name) {
                slot.1 = v.clone();
            } else {
                return Err(exec_err(format!("undefined variable: {name}")));
            }
        }
        Ok(v)
    }

    /// The pipeline's value, without binding variables (`range` binds its own).
    fn commands(&mut self, p: &Pipeline, dot: &Value) -> Result<Value, TemplateError> {
        let mut piped = None;
        for cmd in &p.cmds {
            piped = Some(self.command(cmd, dot, piped)?);
        }
        Ok(piped.unwrap_or_default())
    }

    fn command(
        &mut self,
        cmd: &Command,
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        self.tick()?;
        let Some(first) = cmd.args.first() else {
            return Err(exec_err("empty command"));
        };
        if let Operand::Chain(Term::Func(name), _) = first {
            let rest = &cmd.args[1..];
            // `and`/`or` evaluate their arguments only as far as needed (Go 1.18).
            if name == "and" || name == "or" {
                let want = name == "or";
                let mut last = Value::Nil;
                let count = rest.len() + usize::from(piped.is_some());
                if count == 0 {
                    return Err(exec_err(format!("wrong number of args for {name}")));
                }
                for arg in rest {
                    last = self.operand(arg, dot)?;
                    if last.truthy() == want {
                        return Ok(last);
                    }
                }
                if let Some(p) = piped {
                    last = p;
                }
                return Ok(last);
            }
            let mut args = Vec::with_capacity(rest.len() + 1);
            for a in rest {
                args.push(self.operand(a, dot)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            let v = funcs::call(name, args, self)?;
            self.charge(v.weight())?;
            return Ok(v);
        }
        if cmd.args.len() > 1 || piped.is_some() {
            return Err(exec_err("can't give argument to non-function"));
        }
        self.operand(first, dot)
    }

    fn operand(&mut self, op: &Operand, dot: &Value) -> Result<Value, TemplateError> {
        let Operand::Chain(term, fields) = op;
        let mut v = match term {
            Term::Dot => dot.clone(),
            Term::Var(name) => self
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| exec_err(format!("undefined variable: {name}")))?,
            Term::Func(name) => funcs::call(name, Vec::new(), self)?,
            Term::Str(s) => Value::str(s.as_str()),
            Term::Int(i) => Value::Int(*i),
            Term::Float(f) => Value::Float(*f),
            Term::Bool(b) => Value::Bool(*b),
            Term::Nil => return Err(exec_err("nil is not a command")),
            Term::Pipe(p) => {
                let mark = self.vars.len();
                let v = self.pipeline(p, dot)?;
                self.vars.truncate(mark);
                v
            }
        };
        for f in fields {
            v = match &v {
                Value::Map(m) => m.get(f).cloned().unwrap_or_default(),
                Value::Nil => {
                    return Err(exec_err(format!(
                        "nil pointer evaluating interface {{}}.{f}"
                    )));
                }
                other => {
                    return Err(exec_err(format!(
                        "can't evaluate field {f} in type {}",
                        other.type_name()
                    )));
                }
            };
        }
        Ok(v)
    }
}
