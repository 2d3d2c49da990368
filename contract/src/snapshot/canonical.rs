//! Canonical JSON for content hashing.
//!
//! serde_json's `Map` is a `BTreeMap` unless some crate in the build enables its
//! `preserve_order` feature, and Cargo unifies features across a workspace: so key order is
//! never left to the map type. The writer below sorts object keys itself, and serde_json
//! prints strings and numbers deterministically, so the bytes depend only on the content.

use super::Snapshot;
use serde_json::Value;

/// Top-level lists of a snapshot whose order carries no meaning.
const UNORDERED_TOP_LEVEL: &[&str] = &["listeners", "tenants", "resources", "policies"];

pub(super) fn canonical_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut value = serde_json::to_value(snapshot).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for key in UNORDERED_TOP_LEVEL {
            if let Some(Value::Array(items)) = map.get_mut(*key) {
                sort_by_canonical(items);
            }
        }
        if let Some(Value::Object(tunnel)) = map.get_mut("tunnel")
            && let Some(Value::Array(sites)) = tunnel.get_mut("sites")
        {
            sort_by_canonical(sites);
        }
    }
    let mut out = Vec::new();
    write_canonical(&value, &mut out);
    out
}

fn sort_by_canonical(items: &mut [Value]) {
    let mut keyed: Vec<(Vec<u8>, Value)> = items
        .iter_mut()
        .map(|v| {
            let mut buf = Vec::new();
            write_canonical(v, &mut buf);
            (buf, v.take())
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    for (slot, (_, v)) in items.iter_mut().zip(keyed) {
        *slot = v;
    }
}

/// Writes `value` as canonical JSON.
pub(crate) fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Scalars serialise infallibly.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"é"}}"#).unwrap();
        let mut out = Vec::new();
        write_canonical(&a, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":"é","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}
