//! The gateway's side of the hub's stream endpoint, and a local port forwarder built on it
//! (`rustronaut-tunnel forward`, for debugging and benchmarks).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, copy_bidirectional_with_sizes};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::allow::{Host, Protocol};
use crate::auth::{AuthError, Tokens};
use crate::link::COPY_BUFFER;
use crate::proto::{self, OpenRequest, ProtoError, Response, Status};

/// Errors of opening a stream through the hub.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached.
    #[error("failed to connect to the hub's stream endpoint: {0}")]
    Connect(std::io::Error),
    /// The request could not be encoded.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// Reading the answer failed.
    #[error("no valid answer from the hub: {0}")]
    Read(#[from] proto::io::ReadError),
    /// Writing the request failed.
    #[error("failed to send the request: {0}")]
    Write(std::io::Error),
    /// The hub (or the connector behind it) refused.
    #[error("refused ({status}): {message}")]
    Refused {
        /// Why.
        status: Status,
        /// Detail.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from the hub within {0:?}")]
    Timeout(Duration),
    /// The token file could not be read.
    #[error("failed to read the token file: {0}")]
    Token(std::io::Error),
    /// The token in the file is unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// An open stream: deliver `early` to the reader before anything read from `stream`.
#[derive(Debug)]
pub struct Opened {
    /// The connection to the hub, now carrying the payload.
    pub stream: TcpStream,
    /// Payload bytes that arrived together with the answer.
    pub early: Vec<u8>,
}

/// Asks the hub at `hub` for a stream; returns once the target is connected.
pub async fn open(
    hub: impl ToSocketAddrs,
    request: &OpenRequest,
    timeout: Duration,
) -> Result<Opened, ClientError> {
    let work = async {
        let header = request.encode()?;
        let mut stream = TcpStream::connect(hub)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&header)
            .await
            .map_err(ClientError::Write)?;
        let (resp, early) =
            proto::io::read_message(&mut stream, proto::MAX_RESPONSE, Response::decode).await?;
        if resp.status != Status::Ok {
            return Err(ClientError::Refused {
                status: resp.status,
                message: resp.message,
            });
        }
        Ok(Opened { stream, early })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// Reads the first token of a token file (the format the hub reads).
pub fn read_token(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(ClientError::Token)?;
    Tokens::parse(&text, path)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    Ok(token.to_owned())
}

/// What the local forwarder does.
#[derive(Clone)]
pub struct ForwardSpec {
    /// The hub's stream endpoint.
    pub hub: SocketAddr,
    /// Bearer token.
    pub token: String,
    /// Site.
    pub site: String,
    /// Target host at the site.
    pub host: Host,
    /// Target port.
    pub port: u16,
}

impl std::fmt::Debug for ForwardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardSpec")
            .field("hub", &self.hub)
            .field("site", &self.site)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Accepts local TCP connections and carries each through the hub to the target.
pub async fn forward_tcp(listener: TcpListener, spec: ForwardSpec) {
    let spec = Arc::new(spec);
    loop {
        let Ok((mut local, peer)) = listener.accept().await else {
            continue;
        };
        let _ = local.set_nodelay(true);
        let spec = spec.clone();
        tokio::spawn(async move {
            let req = OpenRequest {
                token: spec.token.clone(),
                site: spec.site.clone(),
                protocol: Protocol::Tcp,
                host: spec.host.clone(),
                port: spec.port,
            };
            match open(spec.hub, &req, Duration::from_secs(30)).await {
                Ok(Opened { mut stream, early }) => {
                    if local.write_all(&early).await.is_ok() {
                        let _ = copy_bidirectional_with_sizes(
                            &mut local,
                            &mut stream,
                            COPY_BUFFER,
                            COPY_BUFFER,
                        )
                        .await;
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e, "stream refused"),
            }
        });
    }
}
