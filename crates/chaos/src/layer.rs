//! The chaos layer and its builder.

use std::{
    fmt,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::Arc,
};

use tower_layer::Layer;
use tower_patterns_core::{ConfigError, error::check_name, http::register_error_response};

use crate::{
    error::ChaosError,
    fault::Fault,
    handle::{ChaosHandle, Shared},
    policy::Plan,
    respond::HttpAnswer,
    select::Always,
    service::Chaos,
};

/// Injects faults into the calls of the services it wraps. Built with
/// [`ChaosLayer::builder`]; see the [crate docs](crate) for an example.
///
/// `Sel` chooses the calls that may get a fault ([`Always`], [`Header`](crate::Header),
/// [`Tenants`](crate::Tenants) or a closure); `A` makes the answer of a status fault
/// ([`HttpAnswer`], [`AnswerAsError`](crate::AnswerAsError) or a closure). Every clone and
/// every service it makes share one state, read and switched through [`handle`](Self::handle).
#[derive(Clone)]
pub struct ChaosLayer<Sel = Always, A = HttpAnswer> {
    shared: Arc<Shared>,
    select: Sel,
    answer: A,
}

impl ChaosLayer {
    /// Starts a builder; `name` labels the metrics, the traces and the handle's report.
    pub fn builder(name: impl Into<Arc<str>>) -> ChaosBuilder {
        ChaosBuilder {
            name: name.into(),
            seed: None,
            enabled: true,
            faults: Vec::new(),
            select: Always,
            answer: HttpAnswer,
        }
    }
}

impl<Sel, A> ChaosLayer<Sel, A> {
    /// The handle that reads and switches this layer's faults.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, Sel: Clone, A: Clone> Layer<S> for ChaosLayer<Sel, A> {
    type Service = Chaos<S, Sel, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos::new(
            inner,
            Arc::clone(&self.shared),
            self.select.clone(),
            self.answer.clone(),
        )
    }
}

impl<Sel: fmt::Debug, A: fmt::Debug> fmt::Debug for ChaosLayer<Sel, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("name", &self.shared.name())
            .field("active", &self.shared.is_active())
            .field("select", &self.select)
            .field("answer", &self.answer)
            .finish()
    }
}

/// Configures a [`ChaosLayer`]. Every setting has a default: no faults (add them here or later
/// through the handle), every call selected, switched on, a seed taken from the name.
#[derive(Clone, Debug)]
pub struct ChaosBuilder<Sel = Always, A = HttpAnswer> {
    name: Arc<str>,
    seed: Option<u64>,
    enabled: bool,
    faults: Vec<Fault>,
    select: Sel,
    answer: A,
}

impl<Sel, A> ChaosBuilder<Sel, A> {
    /// Seeds the random draws. Two layers with one seed, given the same selected calls
    /// in the same order, inject the same faults. The default is a hash of the name, so a run
    /// repeats and two layers with different names draw differently.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a fault to the plan the layer starts with. The rates of all faults must add up to
    /// at most 1 (checked by [`build`](Self::build)).
    #[must_use]
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Whether the layer starts switched on (the default). A layer built switched off costs
    /// one atomic load per call until [`ChaosHandle::enable`] is called.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Which calls may get a fault: [`Always`] (the default), [`Header`](crate::Header),
    /// [`Tenants`](crate::Tenants) or any `Fn(&Req) -> bool`.
    pub fn select<S2>(self, select: S2) -> ChaosBuilder<S2, A> {
        ChaosBuilder {
            name: self.name,
            seed: self.seed,
            enabled: self.enabled,
            faults: self.faults,
            select,
            answer: self.answer,
        }
    }

    /// How a status fault answers: [`HttpAnswer`] (the default, for `http::Response<B>`),
    /// [`AnswerAsError`](crate::AnswerAsError) (any response type) or any
    /// `Fn(Answer) -> Resp`.
    pub fn answer_with<A2>(self, answer: A2) -> ChaosBuilder<Sel, A2> {
        ChaosBuilder {
            name: self.name,
            seed: self.seed,
            enabled: self.enabled,
            faults: self.faults,
            select: self.select,
            answer,
        }
    }

    /// Checks the name and the faults (each rate from 0 to 1, a gRPC code from 1 to 16, the
    /// rates adding up to at most 1), registers the metrics on the recorder installed now and
    /// [`ChaosError`]'s HTTP mapping, and builds the layer.
    pub fn build(self) -> Result<ChaosLayer<Sel, A>, ConfigError> {
        check_name(&self.name)?;
        let plan = Plan::new(self.faults)?;
        register_error_response::<ChaosError>();
        let seed = self.seed.unwrap_or_else(|| {
            BuildHasherDefault::<DefaultHasher>::default().hash_one(&*self.name)
        });
        Ok(ChaosLayer {
            shared: Arc::new(Shared::new(self.name, seed, self.enabled, plan)),
            select: self.select,
            answer: self.answer,
        })
    }
}
