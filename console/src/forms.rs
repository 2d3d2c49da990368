//! Forms generated from a CRD's OpenAPI schema, and form submissions applied back onto an
//! object. Pure: schema and object in, fields out; fields in, object out.
//!
//! Every scalar leaf under `spec` becomes one input named by its JSON path in the API
//! server's own notation (`spec.rules[0].to[0].methods`), so the field a dry run's error
//! names is the input the message is shown next to. Lists of scalars are one textarea, a
//! line per item; lists of objects show their items plus one blank item to add another;
//! maps and free-form values are left to the YAML editor (a form cannot describe them).

use serde_json::{Map, Value};

/// Deepest nesting a form descends into (the YAML editor covers the rest).
const MAX_DEPTH: usize = 8;
/// Most fields one form shows.
const MAX_FIELDS: usize = 400;

/// What input a field is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Free text.
    Text,
    /// A whole number.
    Integer,
    /// A number.
    Number,
    /// A checkbox (submitted as a select of true/false/unset so "unset" stays possible).
    Bool,
    /// One of the values.
    Enum(Vec<String>),
    /// A list of scalars, one per line.
    Lines,
}

/// One input of a generated form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// JSON path, in the API server's notation.
    pub path: String,
    /// The input.
    pub input: Input,
    /// Whether the schema requires it (within its parent).
    pub required: bool,
    /// The schema's description.
    pub help: String,
    /// The current value, as the input shows it.
    pub value: String,
}

/// A submitted value the schema cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FormError {
    /// The field.
    pub path: String,
    /// Why.
    pub message: String,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if key.is_empty() {
            return None;
        }
        steps.push(Step::Key(key.to_string()));
        let mut rest = rest;
        while !rest.is_empty() {
            let (n, after) = rest.split_once(']')?;
            steps.push(Step::Index(n.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
            if !after.is_empty() && !after.starts_with('[') {
                return None;
            }
        }
    }
    Some(steps)
}

fn kind_of(schema: &Value) -> &str {
    schema["type"].as_str().unwrap_or_default()
}

fn is_scalar(schema: &Value) -> bool {
    matches!(kind_of(schema), "string" | "integer" | "number" | "boolean")
        || schema["x-kubernetes-int-or-string"] == Value::Bool(true)
}

fn input_for(schema: &Value) -> Input {
    if let Some(e) = schema["enum"].as_array() {
        return Input::Enum(
            e.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        );
    }
    match kind_of(schema) {
        "integer" => Input::Integer,
        "number" => Input::Number,
        "boolean" => Input::Bool,
        _ => Input::Text,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fields of `schema` (a kind's `openAPIV3Schema`) for `object`'s current values:
/// `metadata.name` and, for namespaced kinds, `metadata.namespace`, then `spec`.
pub fn fields(schema: &Value, object: &Value, namespaced: bool) -> Vec<Field> {
    let mut out = vec![Field {
        path: "metadata.name".into(),
        input: Input::Text,
        required: true,
        help: "Name of the object; cannot be changed later.".into(),
        value: show(&object["metadata"]["name"]),
    }];
    if namespaced {
        out.push(Field {
            path: "metadata.namespace".into(),
            input: Input::Text,
            required: true,
            help: "Namespace of the object; cannot be changed later.".into(),
            value: show(&object["metadata"]["namespace"]),
        });
    }
    let spec = &schema["properties"]["spec"];
    let required = schema["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|v| v == "spec"));
    walk(spec, &object["spec"], "spec", required, 0, &mut out);
    out
}

fn walk(
    schema: &Value,
    value: &Value,
    path: &str,
    required: bool,
    depth: usize,
    out: &mut Vec<Field>,
) {
    if depth > MAX_DEPTH || out.len() >= MAX_FIELDS {
        return;
    }
    let help = schema["description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if is_scalar(schema) {
        out.push(Field {
            path: path.to_string(),
            input: input_for(schema),
            required,
            help,
            value: show(value),
        });
        return;
    }
    match kind_of(schema) {
        "object" => {
            let Some(props) = schema["properties"].as_object() else {
                return; // a map or free-form object: YAML only
            };
            let req: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, sub) in props {
                walk(
                    sub,
                    &value[name],
                    &format!("{path}.{name}"),
                    req.contains(&name.as_str()),
                    depth + 1,
                    out,
                );
            }
        }
        "array" => {
            let items = &schema["items"];
            if is_scalar(items) {
                let lines: Vec<String> = value
                    .as_array()
                    .map(|a| a.iter().map(show).collect())
                    .unwrap_or_default();
                out.push(Field {
                    path: path.to_string(),
                    input: Input::Lines,
                    required,
                    help,
                    value: lines.join("\n"),
                });
            } else if kind_of(items) == "object" && items["properties"].is_object() {
                let n = value.as_array().map_or(0, Vec::len);
                // The existing items, then one blank one to add another.
                for i in 0..=n {
                    walk(
                        items,
                        &value[i],
                        &format!("{path}[{i}]"),
                        false,
                        depth + 1,
                        out,
                    );
                }
            }
        }
        _ => {}
    }
}

/// The schema node at `steps` under `schema`.
fn schema_at<'a>(schema: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut s = schema;
    for step in steps {
        s = match step {
            Step::Key(k) => s["properties"].get(k)?,
            Step::Index(_) => s.get("items")?,
        };
    }
    Some(s)
}

fn parse_scalar(schema: &Value, raw: &str, path: &str) -> Result<Value, FormError> {
    let err = |message: String| FormError {
        path: path.to_string(),
        message,
    };
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return Ok(raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(raw)));
    }
    match kind_of(schema) {
        "integer" => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| err(format!("{raw:?} is not a whole number"))),
        "number" => raw
            .parse::<f64>()
            .ok()
            .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
            .ok_or_else(|| err(format!("{raw:?} is not a number"))),
        "boolean" => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(err(format!("{raw:?} is not true or false"))),
        },
        _ => Ok(Value::from(raw)),
    }
}

fn set(target: &mut Value, steps: &[Step], v: Option<Value>) {
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut t = target;
    for (i, step) in parents.iter().enumerate() {
        let next_is_index = matches!(steps[i + 1], Step::Index(_));
        let fresh = || {
            if next_is_index {
                Value::Array(vec![])
            } else {
                Value::Object(Map::new())
            }
        };
        t = match step {
            Step::Key(k) => {
                if !t.is_object() {
                    *t = Value::Object(Map::new());
                }
                let m = t.as_object_mut().expect("object");
                if v.is_none() && !m.contains_key(k) {
                    return;
                }
                m.entry(k.clone()).or_insert_with(fresh)
            }
            Step::Index(n) => {
                if !t.is_array() {
                    *t = Value::Array(vec![]);
                }
                let a = t.as_array_mut().expect("array");
                if v.is_none() && *n >= a.len() {
                    return;
                }
                while a.len() <= *n {
                    a.push(Value::Null);
                }
                if a[*n].is_null() {
                    a[*n] = fresh();
                }
                &mut a[*n]
            }
        };
    }
    match (last, v) {
        (Step::Key(k), Some(v)) => {
            if !t.is_object() {
                *t = Value::Object(Map::new());
            }
            t.as_object_mut().expect("object").insert(k.clone(), v);
        }
        (Step::Key(k), None) => {
            if let Some(m) = t.as_object_mut() {
                m.remove(k);
            }
        }
        (Step::Index(_), _) => {} // fields never end in an index
    }
}

/// Drops what clearing fields left empty: `{}` items of lists, then empty lists and
/// objects under `spec` (the API server would keep them and CEL would see them).
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !prune(x));
            m.is_empty()
        }
        Value::Array(a) => {
            a.retain_mut(|x| !prune(x));
            a.is_empty()
        }
        Value::Null => true,
        _ => false,
    }
}

/// Applies submitted `(path, value)` pairs onto `object`: an empty value removes the field;
/// a list field takes one item per non-empty line. Paths outside `metadata.name`,
/// `metadata.namespace` and `spec` or unknown to the schema are refused.
pub fn apply(
    schema: &Value,
    object: &mut Value,
    submitted: &[(String, String)],
) -> Result<(), Vec<FormError>> {
    let mut errors = Vec::new();
    for (path, raw) in submitted {
        let err = |message: &str| FormError {
            path: path.clone(),
            message: message.to_string(),
        };
        let allowed = path == "metadata.name"
            || path == "metadata.namespace"
            || path.starts_with("spec.")
            || path == "spec";
        let Some(steps) = parse_path(path).filter(|_| allowed) else {
            errors.push(err("not a field of this form"));
            continue;
        };
        let raw = raw.trim();
        if path.starts_with("metadata.") {
            set(object, &steps, (!raw.is_empty()).then(|| Value::from(raw)));
            continue;
        }
        let Some(node) = schema_at(schema, &steps) else {
            errors.push(err("not a field of this kind"));
            continue;
        };
        let value = if raw.is_empty() {
            Ok(None)
        } else if kind_of(node) == "array" {
            raw.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .enumerate()
                .map(|(i, l)| parse_scalar(&node["items"], l, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(Value::Array(v)))
        } else if is_scalar(node) {
            parse_scalar(node, raw, path).map(Some)
        } else {
            Err(err("edit this field in YAML"))
        };
        match value {
            Ok(v) => set(object, &steps, v),
            Err(e) => errors.push(e),
        }
    }
    if let Some(spec) = object.get_mut("spec") {
        prune(spec);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Kind;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["action"], "properties": {
                "action": {"type": "string", "enum": ["Allow", "Deny"], "description": "What a match does."},
                "priority": {"type": "integer"},
                "enabled": {"type": "boolean"},
                "port": {"x-kubernetes-int-or-string": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "rules": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"},
                    "methods": {"type": "array", "items": {"type": "string"}}
                }}}
            }}
        }})
    }

    fn paths(f: &[Field]) -> Vec<&str> {
        f.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn fields_follow_the_schema_with_one_blank_item_per_list() {
        let obj = json!({"metadata": {"name": "p", "namespace": "ns"},
                         "spec": {"action": "Deny", "rules": [{"name": "r", "methods": ["GET", "HEAD"]}]}});
        let f = fields(&schema(), &obj, true);
        assert_eq!(
            paths(&f),
            [
                "metadata.name",
                "metadata.namespace",
                "spec.action",
                "spec.enabled",
                "spec.port",
                "spec.priority",
                "spec.rules[0].methods",
                "spec.rules[0].name",
                "spec.rules[1].methods",
                "spec.rules[1].name"
            ]
        );
        let action = &f[2];
        assert_eq!(
            action.input,
            Input::Enum(vec!["Allow".into(), "Deny".into()])
        );
        assert!(action.required);
        assert_eq!(action.value, "Deny");
        assert_eq!(action.help, "What a match does.");
        assert_eq!(f[6].input, Input::Lines);
        assert_eq!(f[6].value, "GET\nHEAD");
        assert!(f[7].required && f[9].value.is_empty());
        assert_eq!(f[5].input, Input::Integer);
        assert_eq!(f[3].input, Input::Bool);
        // Cluster-scoped kinds have no namespace field.
        assert!(!paths(&fields(&schema(), &obj, false)).contains(&"metadata.namespace"));
    }

    #[test]
    fn a_submission_builds_the_object_with_typed_values() {
        let mut obj = json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy"});
        let form: Vec<(String, String)> = [
            ("metadata.name", "p1"),
            ("metadata.namespace", "acme"),
            ("spec.action", "Allow"),
            ("spec.priority", "7"),
            ("spec.enabled", "false"),
            ("spec.port", "8080"),
            ("spec.rules[0].name", "r"),
            ("spec.rules[0].methods", "GET\n\n HEAD \n"),
            ("spec.rules[1].name", ""),
            ("spec.rules[1].methods", ""),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        apply(&schema(), &mut obj, &form).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
                   "metadata": {"name": "p1", "namespace": "acme"},
                   "spec": {"action": "Allow", "priority": 7, "enabled": false, "port": 8080,
                            "rules": [{"name": "r", "methods": ["GET", "HEAD"]}]}})
        );
    }

    #[test]
    fn clearing_fields_removes_them_and_keeps_what_the_form_cannot_show() {
        let mut obj = json!({"metadata": {"name": "p"}, "spec": {
            "action": "Deny", "priority": 3, "labels": {"a": "b"},
            "rules": [{"name": "r", "methods": ["GET"]}, {"name": "s"}]}});
        let form = vec![
            ("spec.priority".to_string(), "".to_string()),
            ("spec.rules[0].name".to_string(), "".to_string()),
            ("spec.rules[0].methods".to_string(), "".to_string()),
        ];
        apply(&schema(), &mut obj, &form).unwrap();
        assert_eq!(
            obj["spec"],
            json!({"action": "Deny", "labels": {"a": "b"}, "rules": [{"name": "s"}]})
        );
    }

    #[test]
    fn bad_values_and_unknown_paths_are_refused_per_field() {
        let mut obj = json!({});
        let form: Vec<(String, String)> = [
            ("spec.priority", "seven"),
            ("spec.enabled", "yes"),
            ("spec.nope", "x"),
            ("metadata.labels.x", "y"),
            ("spec.labels", "a"),
            ("spec.rules[x].name", "a"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let errs = apply(&schema(), &mut obj, &form).unwrap_err();
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("spec.priority", "\"seven\" is not a whole number"),
                ("spec.enabled", "\"yes\" is not true or false"),
                ("spec.nope", "not a field of this kind"),
                ("metadata.labels.x", "not a field of this form"),
                ("spec.labels", "edit this field in YAML"),
                ("spec.rules[x].name", "not a field of this form"),
            ]
        );
    }

    #[test]
    fn the_real_policy_schema_gives_a_form_for_a_new_policy() {
        let schema = Kind::Policy.schema();
        let f = fields(&schema, &json!({}), true);
        let p = paths(&f);
        assert!(p.contains(&"spec.action"), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("spec.rules[0].")), "{p:?}");
        let action = f.iter().find(|f| f.path == "spec.action").unwrap();
        assert!(matches!(&action.input, Input::Enum(v) if v.contains(&"Allow".to_string())));
        // Every generated path is accepted back.
        let mut obj = json!({});
        let form: Vec<(String, String)> =
            f.iter().map(|f| (f.path.clone(), String::new())).collect();
        apply(&schema, &mut obj, &form).unwrap();
    }
}
