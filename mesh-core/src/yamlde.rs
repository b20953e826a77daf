//! A `serde` deserializer reading saphyr's [`MarkedYaml`] nodes directly.
//!
//! Kubernetes converts YAML to JSON before decoding; doing the same here (YAML → JSON value
//! → typed struct) cost a third of load time on large configurations. This deserializer
//! reads the parsed nodes in place, with JSON's data model: mappings become structs and
//! maps (keys as strings, or as integers where the target wants integers, e.g.
//! `portLevelMtls: {8080: …}`), tags are ignored, aliases are refused.

use std::fmt;

use saphyr::{MarkedYaml, Scalar, YamlData};

use crate::error::Segment;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// A deserialisation error: the message, and where it happened.
///
/// The path is collected as the error travels up (each sequence adds its index, each
/// mapping the key whose value failed), so it costs nothing unless there is an error, and
/// every `Deserialize` impl is compiled once (a path-tracking wrapper such as
/// `serde_path_to_error` compiles them all a second time: 0.65 MB of text, most of the
/// proxy's idle memory being its touched text). As with `serde_path_to_error`, an unknown
/// field's path ends with its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub(crate) msg: String,
    /// Innermost segment first.
    rev_path: Vec<Segment>,
}

impl Error {
    fn new(msg: impl Into<String>) -> Self {
        Error {
            msg: msg.into(),
            rev_path: Vec::new(),
        }
    }

    #[cold]
    fn at(mut self, seg: Segment) -> Self {
        self.rev_path.push(seg);
        self
    }

    /// The error, under the mapping key `k` (cold: only errors pay for the key's text).
    #[cold]
    fn at_key(self, k: &MarkedYaml<'_>) -> Self {
        self.at(Segment::Key(key_text(k).unwrap_or_default()))
    }

    /// The path from the node deserialised to where the error happened, outermost first.
    pub(crate) fn path(&self) -> impl Iterator<Item = &Segment> {
        self.rev_path.iter().rev()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }
}

/// Deserialises from one node.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a, 'input>(pub(crate) &'a MarkedYaml<'input>);

pub(crate) fn resolve<'a, 'input>(mut n: &'a MarkedYaml<'input>) -> &'a MarkedYaml<'input> {
    while let YamlData::Tagged(_, inner) = &n.data {
        n = inner;
    }
    n
}

/// The text of a scalar key, as JSON would have it.
pub(crate) fn key_text(n: &MarkedYaml<'_>) -> Option<String> {
    match &resolve(n).data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Null) => Some("null".to_string()),
        YamlData::Representation(s, _, _) => Some(s.to_string()),
        _ => None,
    }
}

impl<'de> de::Deserializer<'de> for Node<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = resolve(self.0);
        match &n.data {
            YamlData::Value(Scalar::Null) => v.visit_unit(),
            YamlData::Value(Scalar::Boolean(b)) => v.visit_bool(*b),
            YamlData::Value(Scalar::Integer(i)) => v.visit_i64(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => v.visit_f64(f.into_inner()),
            YamlData::Value(Scalar::String(s)) => v.visit_str(s),
            YamlData::Representation(s, _, _) => v.visit_str(s),
            YamlData::Sequence(items) => v.visit_seq(Seq {
                items: items.iter(),
                index: 0,
            }),
            YamlData::Mapping(m) => v.visit_map(Map {
                entries: m.iter(),
                entry: None,
            }),
            YamlData::Alias(_) => Err(Error::new("YAML aliases are not supported")),
            YamlData::Tagged(..) | YamlData::BadValue => Err(Error::new("invalid YAML value")),
        }
    }

    /// A boolean field also takes YAML 1.1's spellings (`yes`, `on`, `y`, `off`…), as
    /// `kubectl` does: it converts YAML with go-yaml v2, a YAML 1.1 parser. Elsewhere they
    /// stay strings (a header value `on` is the text "on").
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if let YamlData::Value(Scalar::String(s)) = &resolve(self.0).data
            && let Some(b) = yaml11_bool(s)
        {
            return v.visit_bool(b);
        }
        self.deserialize_any(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &resolve(self.0).data {
            YamlData::Value(Scalar::Null) => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match &resolve(self.0).data {
            YamlData::Value(Scalar::String(s)) => v.visit_enum(s.as_ref().into_deserializer()),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// go-yaml v2's boolean spellings (YAML 1.1 `bool` type), beyond YAML 1.2's `true`/`false`.
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "True" | "TRUE" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

struct Seq<'a, 'input> {
    items: std::slice::Iter<'a, MarkedYaml<'input>>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(n) => {
                let i = self.index;
                self.index += 1;
                seed.deserialize(Node(n))
                    .map(Some)
                    .map_err(|e| e.at(Segment::Index(i)))
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'a, 'input, I> {
    entries: I,
    /// The key and value of the entry whose key was just read.
    entry: Option<(&'a MarkedYaml<'input>, &'a MarkedYaml<'input>)>,
}

impl<'de, 'a, 'input: 'a, I> MapAccess<'de> for Map<'a, 'input, I>
where
    I: Iterator<Item = (&'a MarkedYaml<'input>, &'a MarkedYaml<'input>)>,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((k, v)) => {
                self.entry = Some((k, v));
                let text = key_text(k).ok_or_else(|| Error::new("mapping keys must be scalars"))?;
                seed.deserialize(Key(text))
                    .map(Some)
                    .map_err(|e| e.at_key(k))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.entry.take() {
            Some((k, v)) => seed.deserialize(Node(v)).map_err(|e| e.at_key(k)),
            None => Err(Error::new("value without a key")),
        }
    }
}

/// A mapping key: a string, parsed as a number when the target is numeric (as JSON keys).
struct Key(String);

macro_rules! key_int {
    ($($m:ident $t:ty => $visit:ident),*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            match self.0.parse::<$t>() {
                Ok(n) => v.$visit(n),
                Err(_) => v.visit_string(self.0),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Key {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.0)
    }

    key_int! {
        deserialize_i8 i8 => visit_i8, deserialize_i16 i16 => visit_i16, deserialize_i32 i32 => visit_i32,
        deserialize_i64 i64 => visit_i64, deserialize_u8 u8 => visit_u8, deserialize_u16 u16 => visit_u16,
        deserialize_u32 u32 => visit_u32, deserialize_u64 u64 => visit_u64
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        bool i128 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}
