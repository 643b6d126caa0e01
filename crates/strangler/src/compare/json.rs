//! The structural comparison of two JSON bodies.

use std::borrow::Cow;

use serde_json::Value;

use super::diff::{BodyChange, Difference, DifferenceKind, Shown, Sink};
use super::normalise::{NormaliseFn, is_timestamp, is_uuid, numbers_equal};
use super::path::{Frame, MAX_DEPTH, Rules, Seg};

/// What the configured paths say at the place being walked, including what is inherited from
/// above (the built-in normalisers apply to a whole subtree).
#[derive(Clone, Copy, Debug)]
struct Ctx {
    state: Option<u32>,
    uuid: bool,
    timestamp: bool,
    tolerance: Option<f64>,
}

/// Walks two JSON documents side by side, reporting differences into a sink.
pub(super) struct Walk<'c> {
    pub(super) rules: &'c Rules,
    pub(super) customs: &'c [std::sync::Arc<NormaliseFn>],
    pub(super) sink: &'c mut Sink,
}

impl Walk<'_> {
    /// Compares two whole documents.
    pub(super) fn documents(&mut self, legacy: &Value, new: &Value) {
        let ctx = Ctx {
            state: None,
            uuid: false,
            timestamp: false,
            tolerance: None,
        };
        let ctx = match self.rules.root() {
            Some(root) => self.enter(ctx, root),
            None => ctx,
        };
        if !self.ignored(ctx) {
            self.node(&Frame::ROOT, ctx, legacy, new);
        }
    }

    /// The context inside state `id`, coming from `ctx`.
    fn enter(&self, ctx: Ctx, id: u32) -> Ctx {
        let state = self.rules.state(id);
        Ctx {
            state: Some(id),
            uuid: ctx.uuid || state.uuid,
            timestamp: ctx.timestamp || state.timestamp,
            tolerance: state.tolerance.or(ctx.tolerance),
        }
    }

    fn step(&self, ctx: Ctx, seg: Seg<'_>) -> Ctx {
        match ctx.state.and_then(|from| self.rules.step(from, seg)) {
            Some(id) => self.enter(ctx, id),
            None => Ctx { state: None, ..ctx },
        }
    }

    fn ignored(&self, ctx: Ctx) -> bool {
        ctx.state.is_some_and(|id| self.rules.state(id).ignore)
    }

    /// Compares the values at one path, after its custom normalisers.
    fn node(&mut self, at: &Frame<'_>, ctx: Ctx, legacy: &Value, new: &Value) {
        let customs = ctx
            .state
            .map_or(&[][..], |id| &self.rules.state(id).customs[..]);
        if customs.is_empty() {
            return self.values(at, ctx, legacy, new);
        }
        let mut legacy = Cow::Borrowed(legacy);
        let mut new = Cow::Borrowed(new);
        for &i in customs {
            let f = &self.customs[i];
            legacy = Cow::Owned(f(&legacy));
            new = Cow::Owned(f(&new));
        }
        self.values(at, ctx, &legacy, &new);
    }

    fn values(&mut self, at: &Frame<'_>, ctx: Ctx, legacy: &Value, new: &Value) {
        match (legacy, new) {
            (Value::Object(a), Value::Object(b)) => {
                if at.depth >= MAX_DEPTH && !(a.is_empty() && b.is_empty()) {
                    return self.too_deep(at);
                }
                for (key, va) in a {
                    let inner = self.step(ctx, Seg::Key(key));
                    if self.ignored(inner) {
                        continue;
                    }
                    let here = at.child(Seg::Key(key));
                    match b.get(key) {
                        Some(vb) => self.node(&here, inner, va, vb),
                        None => self.report(&here, BodyChange::Missing, Some(va), None),
                    }
                }
                for (key, vb) in b {
                    if a.contains_key(key) {
                        continue;
                    }
                    let inner = self.step(ctx, Seg::Key(key));
                    if !self.ignored(inner) {
                        let here = at.child(Seg::Key(key));
                        self.report(&here, BodyChange::Extra, None, Some(vb));
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                if at.depth >= MAX_DEPTH && !(a.is_empty() && b.is_empty()) {
                    return self.too_deep(at);
                }
                if a.len() != b.len() {
                    self.sink.push(|| {
                        Difference::make(
                            DifferenceKind::Body(BodyChange::Length),
                            at.to_path(),
                            elements(a.len()),
                            elements(b.len()),
                        )
                    });
                }
                for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                    let inner = self.step(ctx, Seg::Index(i));
                    if !self.ignored(inner) {
                        self.node(&at.child(Seg::Index(i)), inner, va, vb);
                    }
                }
            }
            (Value::String(a), Value::String(b)) => {
                let equal = a == b
                    || (ctx.uuid && is_uuid(a) && is_uuid(b))
                    || (ctx.timestamp && is_timestamp(a) && is_timestamp(b));
                if !equal {
                    self.report(at, BodyChange::Value, Some(legacy), Some(new));
                }
            }
            (Value::Number(a), Value::Number(b)) => {
                if !numbers_equal(a, b, ctx.tolerance) {
                    self.report(at, BodyChange::Value, Some(legacy), Some(new));
                }
            }
            (Value::Bool(a), Value::Bool(b)) => {
                if a != b {
                    self.report(at, BodyChange::Value, Some(legacy), Some(new));
                }
            }
            (Value::Null, Value::Null) => {}
            _ => self.report(at, BodyChange::Type, Some(legacy), Some(new)),
        }
    }

    fn report(&mut self, at: &Frame<'_>, change: BodyChange, a: Option<&Value>, b: Option<&Value>) {
        self.sink.push(|| {
            Difference::make(DifferenceKind::Body(change), at.to_path(), show(a), show(b))
        });
    }

    fn too_deep(&mut self, at: &Frame<'_>) {
        self.sink.push(|| {
            let shown = format!("(nested deeper than {MAX_DEPTH} levels)");
            Difference::make(
                DifferenceKind::Body(BodyChange::TooDeep),
                at.to_path(),
                shown.clone(),
                shown,
            )
        });
    }
}

fn elements(n: usize) -> String {
    if n == 1 {
        "1 element".to_owned()
    } else {
        format!("{n} elements")
    }
}

/// A value as short JSON text, or `(missing)`.
fn show(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(missing)".to_owned();
    };
    let mut out = Shown::default();
    // Stops with an error once enough is written: what was written is what is shown. A value
    // nested too deep to write stops the same way.
    let _ = serde_json::to_writer(&mut out, value);
    out.into_string()
}
