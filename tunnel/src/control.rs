//! The control channel: how a connector learns its allow list from the hub, inside the tunnel.
//!
//! ```text
//!  connector                                   hub (control port on its tunnel address)
//!     ── hello {version} ──────────────────────▶
//!     ◀───────────────── targets {generation, targets}   (at once, and on every change)
//!     ── ping ─────────────────────────────────▶          (every control interval)
//!     ◀──────────────────────────────────── pong
//! ```
//!
//! The connector opens the channel (it knows when its tunnel comes up) and keeps it open; the
//! hub pushes a fresh list the moment its configuration changes, so a revoked target stops
//! working within one round trip rather than one polling period. Pings double as the hub's
//! proof of life for the connector's dead-peer detection. The channel runs over a tunnel TCP
//! connection, so it is authenticated and encrypted by WireGuard: whoever can reach the hub's
//! control port through a site's tunnel *is* that site, and learns only that site's list.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::allow::Target;
use crate::proto::{self, ControlMessage, ProtoError};

/// How long the hub waits for `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub closes a control channel silent for this long (connectors ping far more often).
const HUB_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A message could not be decoded.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The stream failed.
    #[error("control channel I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The other side closed the channel.
    #[error("the other side closed the control channel")]
    Closed,
    /// No message in time.
    #[error("no control message within {0:?}")]
    Timeout(Duration),
    /// A message that makes no sense at this point.
    #[error("unexpected control message {0}")]
    Unexpected(&'static str),
    /// A protocol version we do not speak.
    #[error("unsupported control protocol version {0}")]
    Version(u8),
}

/// A site's allow list as the hub publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSet {
    /// Bumped on every change.
    pub generation: u64,
    /// The targets.
    pub targets: Vec<Target>,
    /// The site's networks: where a target name may resolve to (see the connector).
    pub advertised_cidrs: Vec<String>,
}

/// Reads length-prefixed control messages; cancel-safe (bytes read stay buffered).
pub struct ControlReader<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> ControlReader<R> {
    /// Wraps a reader.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
        }
    }

    /// The next message.
    pub async fn next(&mut self) -> Result<ControlMessage, ControlError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((msg, used)) = proto::decode_control(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                return Err(ControlError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &ControlMessage) -> Result<(), ControlError> {
    let mut out = Vec::new();
    proto::encode_control(msg, &mut out);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

fn targets_message(set: &TargetSet) -> ControlMessage {
    ControlMessage::Targets {
        generation: set.generation,
        targets: set.targets.clone(),
        advertised_cidrs: set.advertised_cidrs.clone(),
    }
}

/// The hub's side of one control channel: answers pings and pushes `targets` on change.
pub async fn serve<S>(
    stream: S,
    mut targets: watch::Receiver<TargetSet>,
) -> Result<(), ControlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = ControlReader::new(r);
    match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Err(_) => return Err(ControlError::Timeout(HELLO_TIMEOUT)),
        Ok(Ok(ControlMessage::Hello { version })) if version == proto::VERSION => {}
        Ok(Ok(ControlMessage::Hello { version })) => return Err(ControlError::Version(version)),
        Ok(Ok(_)) => return Err(ControlError::Unexpected("before hello")),
        Ok(Err(e)) => return Err(e),
    }
    let first = targets_message(&targets.borrow_and_update());
    send(&mut w, &first).await?;
    loop {
        tokio::select! {
            msg = tokio::time::timeout(HUB_IDLE_TIMEOUT, reader.next()) => match msg {
                Err(_) => return Err(ControlError::Timeout(HUB_IDLE_TIMEOUT)),
                Ok(Ok(ControlMessage::Ping)) => send(&mut w, &ControlMessage::Pong).await?,
                Ok(Ok(ControlMessage::Hello { .. })) => return Err(ControlError::Unexpected("second hello")),
                Ok(Ok(_)) => return Err(ControlError::Unexpected("hub-only message from a connector")),
                Ok(Err(ControlError::Closed)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
            },
            changed = targets.changed() => {
                if changed.is_err() {
                    // The site was removed from the hub's configuration.
                    return Ok(());
                }
                let msg = targets_message(&targets.borrow_and_update());
                send(&mut w, &msg).await?;
            }
        }
    }
}

/// The connector's side of one control channel. Calls `apply` with every list received;
/// returns when the channel fails (the caller reconnects).
pub async fn run_client<S>(
    stream: S,
    interval: Duration,
    mut apply: impl FnMut(TargetSet),
) -> Result<(), ControlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = ControlReader::new(r);
    send(
        &mut w,
        &ControlMessage::Hello {
            version: proto::VERSION,
        },
    )
    .await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let silence = interval * 3;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = reader.next() => {
                last_heard = tokio::time::Instant::now();
                match msg? {
                    ControlMessage::Targets { generation, targets, advertised_cidrs } => {
                        apply(TargetSet { generation, targets, advertised_cidrs })
                    }
                    ControlMessage::Pong => {}
                    _ => return Err(ControlError::Unexpected("connector-only message from the hub")),
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > silence {
                    return Err(ControlError::Timeout(silence));
                }
                send(&mut w, &ControlMessage::Ping).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allow::{PortRange, Protocol};

    fn set(generation: u64) -> TargetSet {
        TargetSet {
            generation,
            targets: vec![Target {
                cidr: Some("10.0.0.0/8".into()),
                host: None,
                ports: vec![PortRange::single(22)],
                protocol: Protocol::Tcp,
            }],
            advertised_cidrs: vec!["10.0.0.0/8".into()],
        }
    }

    #[tokio::test]
    async fn client_receives_initial_and_pushed_lists_and_pings() {
        let (a, b) = tokio::io::duplex(4096);
        let (tx, rx) = watch::channel(set(1));
        let server = tokio::spawn(serve(a, rx));
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let client = tokio::spawn(run_client(b, Duration::from_millis(50), move |s| {
            let _ = seen_tx.send(s);
        }));
        assert_eq!(seen.recv().await.unwrap(), set(1));
        tx.send(set(2)).unwrap();
        assert_eq!(seen.recv().await.unwrap(), set(2));
        // Several ping intervals pass without the client timing out: pongs arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!client.is_finished());
        // Removing the site ends the server, and the client notices.
        drop(tx);
        server.await.unwrap().unwrap();
        assert!(client.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn server_requires_hello_first() {
        let (a, mut b) = tokio::io::duplex(4096);
        let (_tx, rx) = watch::channel(set(1));
        let server = tokio::spawn(serve(a, rx));
        let mut out = Vec::new();
        proto::encode_control(&ControlMessage::Ping, &mut out);
        b.write_all(&out).await.unwrap();
        assert!(matches!(
            server.await.unwrap(),
            Err(ControlError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn client_times_out_on_a_silent_hub() {
        let (_a, b) = tokio::io::duplex(4096);
        let r = run_client(b, Duration::from_millis(20), |_| {}).await;
        assert!(matches!(r, Err(ControlError::Timeout(_))));
    }
}
