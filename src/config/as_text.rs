//! Settings written as text (`sampled:8`, `cuda:1`, `jsd:0.5`, `2:pooled,4:hidden`): parsed
//! once, into their types, by clap from a flag and by serde from a pipeline file, so a
//! malformed value is refused where it was read and names the flag or key. Written back the
//! same way (`Display`), which the flag-over-file merge and the manifest's record of the
//! settings as given rely on.
//!
//! Use on an `Option<T>` field: `#[serde(default, with = "super::as_text")]`.

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr,
    T::Err: Display,
    D: Deserializer<'de>,
{
    Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}
