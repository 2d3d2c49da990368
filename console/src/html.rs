//! HTML rendering: escaping, the page frame, forms. Server-rendered, no templates engine:
//! every dynamic string goes through [`esc`], and the Content-Security-Policy forbids inline
//! scripts and styles, so the only script is `/static/console.js`.

use crate::forms::{Field, Input};
use crate::problems::Problem;
use crate::session::Session;
use std::fmt::Write as _;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or path component.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The whole page: navigation, the person, sign-out (a POST with the CSRF token), `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            r#"<nav aria-label="main"><a href="/">Overview</a> <a href="/k/tenants">Tenants</a> <a href="/k/gateways">Gateways</a> <a href="/k/resources">Resources</a> <a href="/k/policies">Policies</a> <a href="/explain">Explain</a>
<form method="post" action="/logout" class="inline"><input type="hidden" name="_csrf" value="{csrf}"><span class="who">{user}</span> <button type="submit">Sign out</button></form></nav>"#,
            csrf = esc(&s.csrf),
            user = esc(&s.user)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · Rustronaut console</title><link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
<body><header><strong>Rustronaut console</strong>{nav}</header><main id="main"><h1>{t}</h1>
{body}</main></body></html>"#,
        t = esc(title)
    )
}

/// A notice box (`role=alert` for errors so screen readers announce it).
pub fn notice(class: &str, text: &str) -> String {
    let role = if class == "error" { "alert" } else { "status" };
    format!(
        r#"<div class="notice {class}" role="{role}">{}</div>"#,
        esc(text)
    )
}

fn id_of(path: &str) -> String {
    path.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The index of the input a problem is shown next to: the field it names, or, for an
/// object or list item (a CEL rule on `spec.rules[0]`), its first input.
fn place(fields: &[Field], problem: &Problem) -> Option<usize> {
    let f = problem.field.as_deref()?;
    fields.iter().position(|x| x.path == f).or_else(|| {
        fields.iter().position(|x| {
            x.path
                .strip_prefix(f)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    })
}

/// The generated form: one labelled input per field, each problem next to its field,
/// problems naming a field the form has no input for listed at the top.
pub fn form(
    action: &str,
    csrf: &str,
    fields: &[Field],
    problems: &[Problem],
    submit: &str,
) -> String {
    let mut out = String::new();
    let placed: Vec<Option<usize>> = problems.iter().map(|p| place(fields, p)).collect();
    let others: Vec<&Problem> = problems
        .iter()
        .zip(&placed)
        .filter(|(_, at)| at.is_none())
        .map(|(p, _)| p)
        .collect();
    let _ = write!(
        out,
        r#"<form method="post" action="{}" class="schema-form" novalidate><input type="hidden" name="_csrf" value="{}"><input type="hidden" name="_mode" value="form">"#,
        esc(action),
        esc(csrf)
    );
    if !others.is_empty() {
        out.push_str(r#"<ul class="problems" role="alert">"#);
        for p in others {
            let _ = write!(
                out,
                "<li>{}{}</li>",
                p.field
                    .as_deref()
                    .map(|f| format!("<code>{}</code>: ", esc(f)))
                    .unwrap_or_default(),
                esc(&p.message)
            );
        }
        out.push_str("</ul>");
    }
    for (i, f) in fields.iter().enumerate() {
        let id = format!("f-{}", id_of(&f.path));
        let mine: Vec<&Problem> = problems
            .iter()
            .zip(&placed)
            .filter(|(_, at)| **at == Some(i))
            .map(|(p, _)| p)
            .collect();
        let err_id = format!("{id}-err");
        let invalid = if mine.is_empty() {
            String::new()
        } else {
            format!(r#" aria-invalid="true" aria-describedby="{err_id}""#)
        };
        let req = if f.required {
            " <span class=\"req\" aria-label=\"required\">*</span>"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<div class="field{}"><label for="{id}"><code>{}</code>{req}</label>"#,
            if mine.is_empty() { "" } else { " has-error" },
            esc(&f.path)
        );
        let name = esc(&f.path);
        let value = esc(&f.value);
        match &f.input {
            Input::Enum(options) => {
                let _ = write!(
                    out,
                    r#"<select id="{id}" name="{name}"{invalid}><option value="">(unset)</option>"#
                );
                for o in options {
                    let sel = if *o == f.value { " selected" } else { "" };
                    let _ = write!(out, r#"<option{sel}>{}</option>"#, esc(o));
                }
                out.push_str("</select>");
            }
            Input::Bool => {
                let _ = write!(
                    out,
                    r#"<select id="{id}" name="{name}"{invalid}><option value="">(unset)</option>"#
                );
                for o in ["true", "false"] {
                    let sel = if o == f.value { " selected" } else { "" };
                    let _ = write!(out, r#"<option{sel}>{o}</option>"#);
                }
                out.push_str("</select>");
            }
            Input::Lines => {
                let _ = write!(
                    out,
                    r#"<textarea id="{id}" name="{name}" rows="2"{invalid}>{value}</textarea>"#
                );
            }
            Input::Integer | Input::Number => {
                let _ = write!(
                    out,
                    r#"<input id="{id}" name="{name}" value="{value}" inputmode="decimal"{invalid}>"#
                );
            }
            Input::Text => {
                let _ = write!(
                    out,
                    r#"<input id="{id}" name="{name}" value="{value}"{invalid}>"#
                );
            }
        }
        for p in &mine {
            let whose = match p.field.as_deref() {
                Some(pf) if pf != f.path => format!("<code>{}</code>: ", esc(pf)),
                _ => String::new(),
            };
            let _ = write!(
                out,
                r#"<p class="field-error" id="{err_id}">{whose}{}</p>"#,
                esc(&p.message)
            );
        }
        if !f.help.is_empty() {
            let _ = write!(out, r#"<p class="help">{}</p>"#, esc(&f.help));
        }
        out.push_str("</div>");
    }
    let _ = write!(
        out,
        r#"<button type="submit">{}</button></form>"#,
        esc(submit)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_problem_is_shown_next_to_its_field_and_unmatched_ones_on_top() {
        let field = |path: &str| Field {
            path: path.into(),
            input: Input::Enum(vec!["Allow".into()]),
            required: true,
            help: "h".into(),
            value: "Allow".into(),
        };
        let fields = vec![field("spec.action"), field("spec.rules[0].name")];
        let problems = vec![
            Problem {
                field: Some("spec.action".into()),
                message: "bad <action>".into(),
            },
            Problem {
                field: Some("spec.rules[0]".into()),
                message: "rule needs from".into(),
            },
            Problem {
                field: Some("spec.other".into()),
                message: "elsewhere".into(),
            },
        ];
        let html = form("/k/policies/new", "tok", &fields, &problems, "Save");
        let field = html
            .split(r#"<div class="field has-error">"#)
            .nth(1)
            .expect("field marked");
        assert!(field.contains(r#"aria-invalid="true""#));
        assert!(
            field.contains(
                r#"<p class="field-error" id="f-spec-action-err">bad &lt;action&gt;</p>"#
            )
        );
        let rule = html
            .split(r#"<label for="f-spec-rules-0--name">"#)
            .nth(1)
            .unwrap();
        assert!(
            rule.contains("<code>spec.rules[0]</code>: rule needs from"),
            "{rule}"
        );
        let top = html
            .split("<ul class=\"problems\"")
            .nth(1)
            .unwrap()
            .split("</ul>")
            .next()
            .unwrap();
        assert!(top.contains("<code>spec.other</code>: elsewhere"));
        assert!(!top.contains("rule needs from"));
        assert!(html.contains(r#"name="_csrf" value="tok""#));
    }
}
