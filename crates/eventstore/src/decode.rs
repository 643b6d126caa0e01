//! Decoding a stored event by its stored type: the type column chooses the variant of the
//! event enum, never the payload's shape.
//!
//! An aggregate's events are a serde enum in its default (externally tagged) representation,
//! stored as `{"Withdrew": {"amount": 5}}` (or `"Closed"` for a unit variant) with the type
//! `"Withdrew"` beside it. [`ByType`] is a serde `Deserializer` that answers the enum's
//! variant question with the stored type, and checks that the payload's tag says the same.
//! It has its own error type, so an unknown type is recognised by the derived code's call to
//! [`de::Error::unknown_variant`] on it, not by reading serde's messages.
//!
//! Events that are not such an enum (a struct, an internally tagged or untagged enum) are
//! decoded by their shape; [`decode_event`] then checks the result's
//! [`DomainEvent::event_type`] and [`DomainEvent::schema_version`] against the stored ones,
//! for every event, whatever its representation.

use std::fmt;

use serde::{
    Deserialize,
    de::{
        self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, VariantAccess, Visitor,
        value::StrDeserializer,
    },
};
use serde_json::{de::StrRead, value::RawValue};

use crate::{DomainEvent, Error, RecordedEvent};

/// Why a payload did not decode as its stored type.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The stored type is not a variant of the event enum.
    UnknownType,
    /// The payload is tagged with another type than the stored one.
    Tagged(String),
    /// The payload is not what its type says (serde's reason).
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType => f.write_str("unknown event type"),
            Self::Tagged(tag) => write!(f, "the payload is tagged {tag:?}"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Invalid(msg.to_string())
    }

    // Only the variant identifier is deserialised with this error type (the payload goes
    // through serde_json, whose errors become `Invalid`), so this is the stored type.
    fn unknown_variant(_variant: &str, _expected: &'static [&'static str]) -> Self {
        Self::UnknownType
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Runs `f` on a JSON deserializer over `json`, which must hold nothing more.
fn json<'a, T>(
    json: &'a str,
    f: impl FnOnce(&mut serde_json::Deserializer<StrRead<'a>>) -> Result<T, serde_json::Error>,
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = f(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The payload `payload` of an event stored as `event_type`, as a serde `Deserializer`.
pub(crate) struct ByType<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) payload: &'a str,
}

macro_rules! forward_to_json {
    ($($method:ident $(($($arg:ident: $ty:ty),*))?;)*) => {$(
        fn $method<V: Visitor<'a>>(
            self,
            $($($arg: $ty,)*)?
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            json(self.payload, |de| de.$method($($($arg,)*)? visitor))
        }
    )*};
}

impl<'a> Deserializer<'a> for ByType<'a> {
    type Error = DecodeError;

    // Not an externally tagged enum: decoded by shape, checked by `decode_event`.
    forward_to_json! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32;
        deserialize_i64; deserialize_i128; deserialize_u8; deserialize_u16; deserialize_u32;
        deserialize_u64; deserialize_u128; deserialize_f32; deserialize_f64; deserialize_char;
        deserialize_str; deserialize_string; deserialize_bytes; deserialize_byte_buf;
        deserialize_option; deserialize_unit; deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq;
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map; deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_identifier; deserialize_ignored_any;
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_enum(self)
    }
}

impl<'a> EnumAccess<'a> for ByType<'a> {
    type Error = DecodeError;
    type Variant = Content<'a>;

    fn variant_seed<S: DeserializeSeed<'a>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Content<'a>), DecodeError> {
        // The stored type chooses the variant (an unknown one fails here, typed).
        // With this module's error type, so `unknown_variant` comes back as `UnknownType`.
        let identifier: StrDeserializer<'_, DecodeError> = self.event_type.into_deserializer();
        let variant = seed.deserialize(identifier)?;
        let Tagged { tag, content } = json(self.payload, |de| Tagged::deserialize(de))?;
        if tag != self.event_type {
            return Err(DecodeError::Tagged(tag));
        }
        Ok((variant, Content(content)))
    }
}

/// An externally tagged payload: `"Tag"`, or `{"Tag": content}` with one key.
struct Tagged<'a> {
    tag: String,
    content: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Tagged<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TaggedVisitor;
        impl<'de> Visitor<'de> for TaggedVisitor {
            type Value = Tagged<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event tagged with its type: \"Type\" or {\"Type\": ...}")
            }

            fn visit_str<E: de::Error>(self, tag: &str) -> Result<Tagged<'de>, E> {
                Ok(Tagged {
                    tag: tag.to_owned(),
                    content: None,
                })
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tagged<'de>, A::Error> {
                let Some((tag, content)) = map.next_entry::<String, &'de RawValue>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(2, &self));
                }
                Ok(Tagged {
                    tag,
                    content: Some(content),
                })
            }
        }
        deserializer.deserialize_any(TaggedVisitor)
    }
}

/// A variant's content (none for a payload that is only the tag).
pub(crate) struct Content<'a>(Option<&'a RawValue>);

impl<'a> Content<'a> {
    fn need(self) -> Result<&'a str, DecodeError> {
        self.0
            .map(RawValue::get)
            .ok_or_else(|| DecodeError::Invalid("the payload has the tag but no content".into()))
    }
}

impl<'a> VariantAccess<'a> for Content<'a> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        // `"Closed"`, or `{"Closed": null}` as serde_json also accepts.
        self.0
            .map_or(Ok(()), |c| json(c.get(), |de| <()>::deserialize(de)))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        json(self.need()?, |de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        json(self.need()?, |de| de.deserialize_seq(visitor))
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        json(self.need()?, |de| {
            de.deserialize_struct("", fields, visitor)
        })
    }
}

/// Decodes `event` (already upcast) as an `E` of its stored type and schema version.
///
/// # Errors
///
/// [`Error::UnknownEventType`] when `E` has no variant of the stored type,
/// [`Error::Mismatch`] when the payload is of another type or schema version than the one
/// stored with it, [`Error::Corrupt`] when it is not a valid `E` at all.
pub(crate) fn decode_event<E: DomainEvent>(event: &RecordedEvent) -> Result<E, Error> {
    let mismatch = |found: String| Error::Mismatch {
        stream: event.stream_id.clone(),
        version: event.version,
        position: event.position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        found,
    };
    let decoded = E::deserialize(ByType {
        event_type: &event.event_type,
        payload: event.payload.get(),
    })
    .map_err(|e| match e {
        DecodeError::UnknownType => Error::UnknownEventType {
            stream: event.stream_id.clone(),
            version: event.version,
            position: event.position,
            event_type: event.event_type.clone(),
        },
        DecodeError::Tagged(tag) => mismatch(format!("a payload tagged {tag:?}")),
        DecodeError::Invalid(why) => event.corrupt(why),
    })?;
    // Whatever the representation: the decoded event must be what was stored.
    if decoded.event_type() != event.event_type {
        return Err(mismatch(format!(
            "an event of type {:?}",
            decoded.event_type()
        )));
    }
    if decoded.schema_version() != event.schema_version {
        return Err(mismatch(format!(
            "the reader's schema version {}",
            decoded.schema_version()
        )));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::json;

    use super::*;
    use crate::GlobalPosition;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Closed,
        Renamed(String),
        Moved(i32, i32),
        Paid { cents: u64 },
    }

    impl DomainEvent for Ev {
        fn event_type(&self) -> &'static str {
            match self {
                Self::Closed => "Closed",
                Self::Renamed(_) => "Renamed",
                Self::Moved(..) => "Moved",
                Self::Paid { .. } => "Paid",
            }
        }
    }

    fn stored(event_type: &str, payload: &serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            stream_id: "s".into(),
            version: 4,
            position: GlobalPosition::new(0, 9),
            id: uuid::Uuid::nil(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::value::to_raw_value(payload).unwrap(),
            metadata: crate::Metadata::default(),
        }
    }

    fn decode<E: DomainEvent>(event_type: &str, payload: &serde_json::Value) -> Result<E, Error> {
        stored(event_type, payload).decode_event()
    }

    #[test]
    fn every_kind_of_variant_round_trips() {
        for ev in [
            Ev::Closed,
            Ev::Renamed("x".into()),
            Ev::Moved(1, -2),
            Ev::Paid { cents: u64::MAX },
        ] {
            let payload = serde_json::to_value(&ev).unwrap();
            assert_eq!(decode::<Ev>(ev.event_type(), &payload).unwrap(), ev);
        }
        // serde_json's other spelling of a unit variant.
        assert_eq!(
            decode::<Ev>("Closed", &json!({ "Closed": null })).unwrap(),
            Ev::Closed
        );
    }

    #[test]
    fn the_stored_type_decides_and_the_payload_must_agree() {
        let err = decode::<Ev>("Frozen", &json!({ "Paid": { "cents": 1 } })).unwrap_err();
        assert!(
            matches!(err, Error::UnknownEventType { ref stream, version: 4, position, ref event_type }
                if stream == "s" && position == GlobalPosition::new(0, 9) && event_type == "Frozen"),
            "{err:?}"
        );
        for (event_type, payload) in [
            ("Paid", json!({ "Renamed": "x" })),
            ("Closed", json!("Paid")),
            ("Renamed", json!({ "Moved": [1, 2] })),
        ] {
            let err = decode::<Ev>(event_type, &payload).unwrap_err();
            assert!(
                matches!(err, Error::Mismatch { version: 4, position, ref event_type, schema_version: 1, ref found, .. }
                    if position == GlobalPosition::new(0, 9) && event_type != found && found.starts_with("a payload tagged")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn payloads_that_are_not_one_tag_are_corrupt() {
        for (event_type, payload) in [
            ("Paid", json!({ "Paid": { "cents": 1 }, "Closed": null })),
            ("Paid", json!({})),
            ("Paid", json!(["Paid"])),
            ("Paid", json!("Paid")),
            ("Paid", json!({ "Paid": { "cents": "1" } })),
            ("Renamed", json!("Renamed")),
            ("Moved", json!("Moved")),
            ("Closed", json!({ "Closed": 3 })),
        ] {
            let err = decode::<Ev>(event_type, &payload).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { version: 4, .. }),
                "{event_type} {payload}: {err:?}"
            );
        }
    }

    #[test]
    fn corrupt_payloads_say_what_was_expected() {
        let err = decode::<Ev>("Paid", &json!(["Paid"])).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { ref reason, .. }
                if reason.contains("expected an event tagged with its type: \"Type\" or {\"Type\": ...}")),
            "{err:?}"
        );
    }

    /// A struct event is decoded by its shape, then checked against the stored type.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pinged {
        n: u32,
    }

    impl DomainEvent for Pinged {
        fn event_type(&self) -> &'static str {
            "Pinged"
        }
        fn schema_version(&self) -> u32 {
            2
        }
    }

    #[test]
    fn other_representations_are_checked_after_decoding() {
        let mut ok = stored("Pinged", &json!({ "n": 3 }));
        ok.schema_version = 2;
        assert_eq!(ok.decode_event::<Pinged>().unwrap(), Pinged { n: 3 });
        let mut other = stored("Ponged", &json!({ "n": 3 }));
        other.schema_version = 2;
        assert!(
            matches!(other.decode_event::<Pinged>(), Err(Error::Mismatch { ref found, .. }) if found.contains("\"Pinged\"")),
        );
        let old = stored("Pinged", &json!({ "n": 3 }));
        assert!(
            matches!(old.decode_event::<Pinged>(), Err(Error::Mismatch { schema_version: 1, ref found, .. }) if found.contains("schema version 2")),
        );
        let mut bad = stored("Pinged", &json!({ "n": -1 }));
        bad.schema_version = 2;
        assert!(matches!(
            bad.decode_event::<Pinged>(),
            Err(Error::Corrupt { .. })
        ));
        // Plain values go through the same deserializer.
        let n: u8 = serde::Deserialize::deserialize(ByType {
            event_type: "n",
            payload: "7",
        })
        .unwrap();
        assert_eq!(n, 7);
        let trailing: Result<u8, _> = serde::Deserialize::deserialize(ByType {
            event_type: "n",
            payload: "7 8",
        });
        assert!(matches!(trailing, Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn errors_say_what_they_are() {
        assert_eq!(DecodeError::UnknownType.to_string(), "unknown event type");
        assert_eq!(
            DecodeError::Tagged("X".into()).to_string(),
            "the payload is tagged \"X\""
        );
        assert_eq!(DecodeError::Invalid("why".into()).to_string(), "why");
        let err = decode::<Ev>("Paid", &json!({ "Closed": null })).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event in stream \"s\" at version 4 (position 9) is stored as \"Paid\" schema version 1, but is a payload tagged \"Closed\""
        );
        let err = decode::<Ev>("Frozen", &json!({ "Closed": null })).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown event type \"Frozen\" in stream \"s\" at version 4 (position 9)"
        );
    }
}
