//! A minimal OTLP/HTTP trace receiver for tests of the binaries' exports (gateway, operator).
//!
//! Why not the OpenTelemetry Collector: it is not built here; the payload is checked for the
//! strings and ids a span must carry, which protobuf keeps verbatim, and the exporters are
//! the OpenTelemetry SDK's own.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// A minimal OTLP/HTTP collector: keeps the body of every `POST /v1/traces` (protobuf) and
/// answers 200. Plain std sockets, one thread per connection, keep-alive honoured.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every body received.
    pub bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    /// Listens on a free loopback port.
    pub fn start() -> Self {
        use std::io::{BufRead, BufReader, Read};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let store = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path_ok = line.starts_with("POST /v1/traces ");
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let status = if path_ok {
                            store.lock().unwrap().push(body);
                            "200 OK"
                        } else {
                            "404 Not Found"
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                        );
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, bodies }
    }

    /// Every body received so far, concatenated (protobuf keeps strings and ids verbatim).
    pub fn received(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().concat()
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
