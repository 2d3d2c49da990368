//! The operator's small HTTP server: `/metrics` (Prometheus text), `/healthz` (the process
//! runs), `/readyz` (the caches are filled).
//!
//! Hand-written on Tokio rather than a web framework: three GET routes need no router, and
//! it keeps the operator's dependency tree (and its lock file) what the controllers need.
//! Requests are read up to [`MAX_REQUEST`] bytes with a timeout, answered, and the connection
//! is closed, which is all a Prometheus scraper and a kubelet probe do.

use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the listener fails; each connection on its own task.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, ready: Arc<AtomicBool>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let registry = registry.clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &registry, &ready).await {
                        tracing::debug!(error = %e, "metrics connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(());
    }
    read.unwrap_or(Ok(()))?;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") if ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ok\n".into())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "caches not filled yet\n".into(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe("Gateway", Duration::from_millis(3), Some("Apply"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(listener, Arc::new(registry), ready.clone()));

        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(
            m.contains(
                r#"rustronaut_operator_reconcile_errors_total{kind="Gateway",reason="Apply"} 1"#
            ),
            "{m}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}

/// `rustronaut-operator --probe URL`: GET `http://host:port/path` and succeed on a 2xx
/// answer. What the chart's `helm test` pod runs (the image has no shell and no curl).
pub async fn probe(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let attempt = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending to {authority}: {e}"))?;
        let mut head = Vec::new();
        stream
            .take(MAX_REQUEST as u64)
            .read_to_end(&mut head)
            .await
            .map_err(|e| format!("reading from {authority}: {e}"))?;
        let text = String::from_utf8_lossy(&head);
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!(
                "{url} answered {:?}",
                text.lines().next().unwrap_or("nothing")
            ))
        }
    };
    tokio::time::timeout(READ_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{url}: no answer within {READ_TIMEOUT:?}"))?
}

/// [`probe`] again every second until it succeeds or `patience` has passed; each failed
/// attempt is reported through `on_failure`. Why: the `helm test` pod starts seconds after
/// `helm install --wait`, when the cluster's DNS, the Service's endpoints or the node's
/// NetworkPolicy rules for the new pod may still be settling; one refused connection then
/// says nothing about the operator. The last attempt's error is returned.
pub async fn probe_until(
    url: &str,
    patience: Duration,
    mut on_failure: impl FnMut(&str),
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match probe(url).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline || e.contains("only http://") => {
                return Err(e);
            }
            Err(e) => on_failure(&e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_succeeds_on_ready_and_says_why_otherwise() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(
            listener,
            Arc::new(Registry::default()),
            ready.clone(),
        ));
        let url = format!("http://{addr}/readyz");
        let e = probe(&url).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        ready.store(true, Ordering::Relaxed);
        probe(&url).await.unwrap();
        probe(&format!("http://{addr}/healthz")).await.unwrap();
        assert!(
            probe("https://x/")
                .await
                .unwrap_err()
                .contains("only http://")
        );
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            probe(&format!("http://{closed}/"))
                .await
                .unwrap_err()
                .contains("connecting")
        );
    }

    #[tokio::test]
    async fn the_probe_waits_for_a_late_operator_and_gives_up_after_its_patience() {
        // Nothing listens yet: the first attempts fail, then the operator comes up.
        let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = reserved.local_addr().unwrap();
        drop(reserved);
        let url = format!("http://{addr}/readyz");
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let listener = TcpListener::bind(addr).await.unwrap();
            serve(
                listener,
                Arc::new(Registry::default()),
                Arc::new(AtomicBool::new(true)),
            )
            .await
        });
        let mut failures = Vec::new();
        probe_until(&url, Duration::from_secs(30), |e| {
            failures.push(e.to_string())
        })
        .await
        .unwrap();
        assert!(!failures.is_empty(), "the first attempt must have failed");
        assert!(failures[0].contains("connecting"), "{failures:?}");
        server.abort();
        // A never-ready operator: the last error comes back once the patience is spent.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = probe_until(&format!("http://{closed}/"), Duration::ZERO, |_| {})
            .await
            .unwrap_err();
        assert!(e.contains("connecting"), "{e}");
    }
}
