//! The webhook's HTTPS endpoint: `POST /inject` with an `admission.k8s.io/v1` AdmissionReview
//! of a Pod, answered with the review's response (a JSONPatch, a warning or a denial).
//!
//! Hand-written HTTP/1.1 on tokio-rustls, like the operator's metrics server: one route, one
//! request per connection (`Connection: close`; the apiserver opens a new one), which keeps
//! the limits obvious: the head is read up to [`MAX_HEAD`] bytes and the body up to
//! [`MAX_BODY`] (a Content-Length is required), all within [`REQUEST_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] are served at once (others are dropped; the apiserver's
//! `failurePolicy: Fail` then refuses the pod rather than admitting it unprotected).
//!
//! | answer | when |
//! |---|---|
//! | 200 + review | a well-formed review (allowed, patched or denied) |
//! | 400 | the body is not an AdmissionReview with a request |
//! | 404 / 405 / 411 / 413 | another path / method, no Content-Length, too large |
//! | 503 | the caches are not filled yet (an answer from half a world could skip a sidecar) |

use super::inject::{self, Verdict};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use rustronaut_crds::Resource as RtnResource;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;

/// The path the MutatingWebhookConfiguration calls.
pub const PATH: &str = "/inject";
/// Longest request head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body: an AdmissionReview of a Pod is well under the apiserver's own 3 MiB limit
/// on a request, plus the review's envelope.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time for the TLS handshake and the whole request (the apiserver gives up after the
/// webhook's `timeoutSeconds`, 5 s, anyway).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// What an admission reads: the caches and the settings.
pub struct State {
    /// Every Resource of the cluster (only sidecar Resources of the pod's namespace count).
    pub resources: Store<RtnResource>,
    /// Namespaces' metadata (their labels opt pods in).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// For a namespace the cache has not seen yet (created a moment ago).
    pub client: kube::Client,
    /// What the injected container looks like.
    pub settings: inject::Settings,
    /// True once both caches are filled.
    pub ready: Arc<AtomicBool>,
    /// Where admissions are counted (`rustronaut_operator_sidecar_admissions_total`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// JSON (200) or text body.
    pub body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            body: format!("{body}\n").into_bytes(),
        }
    }
}

/// Answers one request (no I/O beyond a namespace read the cache cannot answer).
pub async fn answer(state: &State, method: &str, path: &str, body: &[u8]) -> Reply {
    if path != PATH {
        return Reply::text(404, "not found");
    }
    if method != "POST" {
        return Reply::text(405, "POST an AdmissionReview");
    }
    if !state.ready.load(Ordering::Relaxed) {
        return Reply::text(503, "the webhook's caches are not filled yet");
    }
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.admitted("error");
            return Reply::text(400, &format!("not an AdmissionReview of a Pod: {e}"));
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            state.metrics.admitted("error");
            return Reply::text(400, "the AdmissionReview has no request");
        }
    };
    let response = review_pod(state, &request).await;
    Reply {
        status: 200,
        body: serde_json::to_vec(&response.into_review()).expect("a review serializes"),
    }
}

async fn review_pod(state: &State, req: &AdmissionRequest<Pod>) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let (Operation::Create, Some(pod)) = (&req.operation, &req.object) else {
        return response;
    };
    let ns = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let ns_labels = match namespace_labels(state, &ns).await {
        Ok(l) => l,
        Err(e) => {
            // Unknown opt-in: refuse rather than guess (the pod is retried by its controller).
            state.metrics.admitted("denied");
            return response.deny(format!("cannot read namespace {ns}: {e}"));
        }
    };
    let resources = state.resources.state();
    let verdict = inject::admit(
        pod,
        &ns,
        &ns_labels,
        resources.iter().map(|r| &**r),
        &state.settings,
    );
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let outcome = match &verdict {
        Verdict::Patch { .. } => "injected",
        Verdict::Unchanged { warning: None } => "unchanged",
        Verdict::Unchanged { warning: Some(_) } => "warned",
        Verdict::Deny(_) => "denied",
    };
    state.metrics.admitted(outcome);
    match verdict {
        Verdict::Patch { patch, resource } => {
            tracing::info!(namespace = %ns, pod = %pod_name, %resource, "injecting the sidecar");
            match response.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => response.deny(format!("failed to encode the sidecar patch: {e}")),
            }
        }
        Verdict::Unchanged { warning } => {
            let mut response = response;
            if let Some(w) = warning {
                tracing::info!(namespace = %ns, pod = %pod_name, warning = %w, "admitted without a sidecar");
                response.warnings = Some(vec![w]);
            }
            response
        }
        Verdict::Deny(message) => {
            tracing::info!(namespace = %ns, pod = %pod_name, %message, "refused");
            response.deny(message)
        }
    }
}

async fn namespace_labels(state: &State, ns: &str) -> Result<BTreeMap<String, String>, String> {
    if let Some(n) = state.namespaces.get(&ObjectRef::new(ns)) {
        return Ok(n.metadata.labels.clone().unwrap_or_default());
    }
    let api: Api<Namespace> = Api::all(state.client.clone());
    let n = api.get_metadata(ns).await.map_err(|e| e.to_string())?;
    Ok(n.metadata.labels.unwrap_or_default())
}

/// Serves HTTPS on `listener` with the newest configuration `tls` holds (connections wait
/// for none: without a certificate they are closed) until the listener fails.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Option<Arc<ServerConfig>>>,
    state: Arc<State>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many webhook connections; dropping one");
            continue;
        };
        let Some(config) = tls.borrow().clone() else {
            tracing::warn!(%peer, "no serving certificate yet; dropping the connection");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let work = async {
                let mut stream = acceptor.accept(stream).await?;
                handle(&mut stream, &state).await?;
                stream.shutdown().await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webhook connection failed"),
                Err(_) => tracing::debug!(%peer, "webhook request timed out"),
            }
        });
    }
}

/// Reads one request from `stream`, answers it.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    state: &State,
) -> std::io::Result<()> {
    let reply = match read_request(stream).await? {
        Ok((method, path, body)) => answer(state, &method, &path, &body).await,
        Err(reply) => reply,
    };
    let content_type = if reply.status == 200 {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&reply.body).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

type Request = (String, String, Vec<u8>);

/// The method, path and body of one request, or the error answer.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<Request, Reply>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err(Reply::text(431, "request head too large")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => return Ok(Err(Reply::text(400, "bad Content-Length"))),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(Err(Reply::text(411, "send a Content-Length")));
        }
    }
    let length = match (method, length) {
        ("POST", None) => return Ok(Err(Reply::text(411, "send a Content-Length"))),
        (_, n) => n.unwrap_or(0),
    };
    if length > MAX_BODY {
        return Ok(Err(Reply::text(413, "request body too large")));
    }
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Ok((method.to_string(), path, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_read_within_their_limits() {
        let read = |raw: Vec<u8>| async move {
            let mut r = std::io::Cursor::new(raw);
            read_request(&mut r).await.unwrap()
        };
        let ok = read(
            b"POST /inject?timeout=5s HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyEXTRA".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(ok, ("POST".into(), "/inject".into(), b"body".to_vec()));
        let status = |r: Result<Request, Reply>| r.unwrap_err().status;
        assert_eq!(
            status(read(b"POST /inject HTTP/1.1\r\n\r\n".to_vec()).await),
            411
        );
        assert_eq!(
            status(
                read(b"POST /inject HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()).await
            ),
            411
        );
        let big = format!(
            "POST /inject HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(status(read(big.into_bytes()).await), 413);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(vec![b'a'; MAX_HEAD + 10]);
        assert_eq!(status(read(huge).await), 431);
    }
}
