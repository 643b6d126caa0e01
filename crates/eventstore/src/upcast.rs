//! Upcasting: old schema versions of an event brought up to the current one on read, as a
//! chain (v1 → v2 → v3), so stored events never need rewriting.

use std::{collections::HashMap, fmt, sync::Arc};

use serde_json::{Value, value::RawValue};

use crate::{Error, RecordedEvent};

/// Turns one event type's payload from schema version `from_version` into `from_version + 1`.
pub trait Upcaster: Send + Sync {
    /// The event type it applies to.
    fn event_type(&self) -> &str;
    /// The schema version it reads; it produces the next one.
    fn source_version(&self) -> u32;
    /// The payload, one version up.
    ///
    /// # Errors
    ///
    /// A reason, when the payload is not what the version says.
    fn upcast(&self, payload: Value) -> Result<Value, String>;
}

struct FnUpcaster<F> {
    event_type: String,
    from: u32,
    f: F,
}

impl<F: Fn(Value) -> Result<Value, String> + Send + Sync> Upcaster for FnUpcaster<F> {
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn source_version(&self) -> u32 {
        self.from
    }
    fn upcast(&self, payload: Value) -> Result<Value, String> {
        (self.f)(payload)
    }
}

/// A set of [`Upcaster`]s, applied in a chain on read.
///
/// ```
/// use serde_json::json;
/// use tower_patterns_eventstore::Upcasters;
///
/// // v1 `Deposited` had `cents`; v2 has `amount` in whole units and a currency.
/// let upcasters = Upcasters::new()
///     .with_fn("Deposited", 1, |mut p| {
///         let cents = p["cents"].as_i64().ok_or("no cents")?;
///         p = json!({ "amount": cents / 100 });
///         Ok(p)
///     })
///     .with_fn("Deposited", 2, |mut p| {
///         p["currency"] = json!("EUR");
///         Ok(p)
///     });
/// let (v, payload) = upcasters.upcast_value("Deposited", 1, json!({ "cents": 2500 })).unwrap();
/// assert_eq!(v, 3);
/// assert_eq!(payload, json!({ "amount": 25, "currency": "EUR" }));
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    by_type: HashMap<(String, u32), Arc<dyn Upcaster>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.by_type.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// None.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an upcaster (replacing one for the same type and version).
    #[must_use]
    pub fn with(mut self, upcaster: impl Upcaster + 'static) -> Self {
        self.by_type.insert(
            (upcaster.event_type().to_owned(), upcaster.source_version()),
            Arc::new(upcaster),
        );
        self
    }

    /// Adds an upcaster from a closure.
    #[must_use]
    pub fn with_fn(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.with(FnUpcaster {
            event_type: event_type.into(),
            from: from_version,
            f,
        })
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Runs the chain on a payload: returns the final version and payload.
    ///
    /// # Errors
    ///
    /// The failing step's version and reason.
    pub fn upcast_value(
        &self,
        event_type: &str,
        mut version: u32,
        mut payload: Value,
    ) -> Result<(u32, Value), (u32, String)> {
        // Bounded: a chain cannot loop, since each step raises the version.
        while let Some(step) = self.by_type.get(&(event_type.to_owned(), version)) {
            payload = step.upcast(payload).map_err(|e| (version, e))?;
            version = version
                .checked_add(1)
                .ok_or((version, "version overflow".into()))?;
        }
        Ok((version, payload))
    }

    /// Brings `event` to its current schema version. Events with no upcaster for their
    /// (type, version) are returned as they are, without parsing their payload.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the event, when its payload is not JSON or a step fails.
    pub fn apply(&self, mut event: RecordedEvent) -> Result<RecordedEvent, Error> {
        if !self
            .by_type
            .contains_key(&(event.event_type.clone(), event.schema_version))
        {
            return Ok(event);
        }
        let payload: Value = serde_json::from_str(event.payload.get())
            .map_err(|e| event.corrupt(format!("payload is not JSON: {e}")))?;
        let (version, payload) = self
            .upcast_value(&event.event_type, event.schema_version, payload)
            .map_err(|(v, why)| event.corrupt(format!("upcasting from version {v}: {why}")))?;
        event.schema_version = version;
        event.payload =
            RawValue::from_string(payload.to_string()).map_err(|e| event.corrupt(e.to_string()))?;
        Ok(event)
    }
}
