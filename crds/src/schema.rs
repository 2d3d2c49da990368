//! Schema helpers for fields schemars cannot describe structurally on its own.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object whose fields the API server keeps as given (`x-kubernetes-preserve-unknown-fields`),
/// for free-form overrides such as `Gateway.spec.podTemplate`.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
