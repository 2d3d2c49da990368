//! What the API server said, in words for the person: errors of a (dry-run) write mapped to
//! the form fields they name, RBAC refusals as a clear message.

use kube::core::Status;

/// One message for the person, attached to a field when the API server named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field in the API server's notation (`spec.rules[0].name`), if any.
    pub field: Option<String>,
    /// The message (for CEL rules, the rule's message).
    pub message: String,
}

/// What a failed call means for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status (403 for RBAC, 422 for validation, 409 for conflicts...).
    pub code: u16,
    /// A sentence for the top of the page.
    pub summary: String,
    /// The per-field problems.
    pub problems: Vec<Problem>,
}

/// Strips the API server's `spec.x: Invalid value: "object": ` preamble from a cause message
/// when the field is already shown beside it.
fn cause_message(field: &str, message: &str) -> String {
    let m = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    match m.strip_prefix("Invalid value: ") {
        Some(rest) => match rest.split_once("\": ").or_else(|| rest.split_once(": ")) {
            Some((_, msg)) => msg.to_string(),
            None => m.to_string(),
        },
        None => m.to_string(),
    }
}

/// The refusal a Kubernetes error stands for.
pub fn refusal(err: &kube::Error) -> Refusal {
    match err {
        kube::Error::Api(status) => from_status(status),
        other => Refusal {
            code: 502,
            summary: format!("The API server could not be reached: {other}"),
            problems: vec![],
        },
    }
}

/// The refusal a `Status` stands for.
pub fn from_status(s: &Status) -> Refusal {
    let causes = s
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    let problems = causes
        .iter()
        .map(|c| Problem {
            field: (!c.field.is_empty()).then(|| c.field.clone()),
            message: if c.field.is_empty() {
                c.message.clone()
            } else {
                cause_message(&c.field, &c.message)
            },
        })
        .collect();
    let summary = match s.code {
        403 => format!(
            "Kubernetes refused this for your account (403 Forbidden): {}",
            s.message
        ),
        401 => "Kubernetes did not accept the console's credentials (401).".to_string(),
        404 => format!("Not found: {}", s.message),
        409 => format!("Conflict: {} Reload and try again.", s.message),
        422 => {
            "The API server rejected the object; see the messages next to the fields.".to_string()
        }
        _ => format!("The API server refused ({}): {}", s.code, s.message),
    };
    Refusal {
        code: s.code,
        summary,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> Status {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cel_and_schema_causes_become_field_messages() {
        // As the API server answers a CRD's CEL rule and an enum violation.
        let s = status(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "Policy.rustronaut.io \"p\" is invalid: [...]",
            "details": {"name": "p", "group": "rustronaut.io", "kind": "Policy", "causes": [
                {"reason": "FieldValueInvalid", "field": "spec.rules[0]",
                 "message": "Invalid value: \"object\": a rule needs at least one of from, to or when"},
                {"reason": "FieldValueNotSupported", "field": "spec.action",
                 "message": "Unsupported value: \"Maybe\": supported values: \"Allow\", \"Deny\""},
                {"reason": "FieldValueRequired", "field": "", "message": "something general"}
            ]}
        }));
        let r = from_status(&s);
        assert_eq!(r.code, 422);
        assert_eq!(
            r.problems,
            vec![
                Problem {
                    field: Some("spec.rules[0]".into()),
                    message: "a rule needs at least one of from, to or when".into()
                },
                Problem {
                    field: Some("spec.action".into()),
                    message: "Unsupported value: \"Maybe\": supported values: \"Allow\", \"Deny\""
                        .into()
                },
                Problem {
                    field: None,
                    message: "something general".into()
                },
            ]
        );
    }

    #[test]
    fn rbac_refusals_say_so() {
        let s = status(json!({"code": 403, "reason": "Forbidden",
            "message": "policies.rustronaut.io \"p\" is forbidden: User \"bob\" cannot update resource"}));
        let r = from_status(&s);
        assert_eq!(r.code, 403);
        assert!(
            r.summary
                .starts_with("Kubernetes refused this for your account (403 Forbidden): policies"),
            "{}",
            r.summary
        );
        assert!(r.problems.is_empty());
    }
}
