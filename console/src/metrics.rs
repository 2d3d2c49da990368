//! Prometheus metrics of the console, served on their own port.
//!
//! Labels never hold a person's name or an object's name: routes are the matched templates.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label sets: `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// The console's counters and request durations.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Vec<(String, String)>, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    logins: Family<Vec<(String, String)>, Counter>,
    writes: Family<Vec<(String, String)>, Counter>,
    csrf: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rustronaut_console");
        let requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let durations: Family<_, _, fn() -> Histogram> = Family::new_with_constructor(|| {
            // 1 ms to about 4 s: a page is one to four API calls and the rendering.
            Histogram::new(exponential_buckets(0.001, 2.0, 13))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival until its response starts (the API calls made as the person and the rendering; a live-update stream counts until it opens), by method and route template",
            durations.clone(),
        );
        let logins = Family::default();
        registry.register(
            "logins",
            "Completed OIDC callbacks by result",
            logins.clone(),
        );
        let writes = Family::default();
        registry.register(
            "writes",
            "Creates, updates and deletes by verb and result (ok or the API server's status code)",
            writes.clone(),
        );
        let csrf = Counter::default();
        registry.register(
            "csrf_refused",
            "State-changing requests refused by the CSRF or Origin check",
            csrf.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            logins,
            writes,
            csrf,
        }
    }
}

impl Metrics {
    /// Counts one HTTP request.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
    }

    /// Observes how long one request took to answer, in seconds.
    pub fn duration(&self, method: &str, route: &str, seconds: f64) {
        self.durations
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
            ])
            .observe(seconds);
    }

    /// Counts one login callback.
    pub fn login(&self, result: &str) {
        self.logins
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Counts one write.
    pub fn write(&self, verb: &str, result: &str) {
        self.writes
            .get_or_create(&vec![
                ("verb".into(), verb.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    /// Counts one CSRF refusal.
    pub fn csrf_refused(&self) {
        self.csrf.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_their_labels() {
        let m = Metrics::default();
        m.request("GET", "/k/{kind}", 200);
        m.login("ok");
        m.write("update", "403");
        m.csrf_refused();
        m.duration("GET", "/", 0.003);
        let text = m.render();
        for line in [
            r#"rustronaut_console_http_requests_total{method="GET",route="/k/{kind}",status="200"} 1"#,
            r#"rustronaut_console_logins_total{result="ok"} 1"#,
            r#"rustronaut_console_writes_total{verb="update",result="403"} 1"#,
            "rustronaut_console_csrf_refused_total 1",
            r#"rustronaut_console_http_request_duration_seconds_count{method="GET",route="/"} 1"#,
            r#"rustronaut_console_http_request_duration_seconds_bucket{le="0.004",method="GET",route="/"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
