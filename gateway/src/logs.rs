//! The gateway's log: one JSON object per line on stdout, written by a thread of its own.
//!
//! Every request writes one decision line (target `rustronaut::decision`, fields in
//! docs/gateway.md), so the log sits on the hot path; measured in issue 19, writing it cost
//! the gateway 15-45 % of its small-request throughput. Two costs, two changes:
//!
//! - **The write**: one `write(2)` on stdout per line, made by the worker thread that served
//!   the request. Now request threads append lines to a buffer that the `rustronaut-log`
//!   thread writes in batches ([`writer`]: why a shared buffer and not a channel, how long a
//!   line waits). Nothing is shed: past [`QUEUE_BYTES`] pending ([`QUEUE_BYTES_ONE_THREAD`]
//!   with one worker thread), the request thread waits for room, as it waited for the write
//!   before, so the audit trail stays complete. A process that stops normally writes what is
//!   pending ([`Guard`], held by `main`).
//! - **The formatting**: tracing-subscriber's JSON formatter gathers an event's fields into
//!   a map of `serde_json::Value`s before writing them, an allocation or two per field (16
//!   fields on a decision line). [`JsonLines`] writes the same line straight into the
//!   subscriber's reused buffer: the keys and their order are the ones the formatter wrote
//!   (`timestamp`, `level`, the event's fields, `target`), values as it wrote them (strings
//!   escaped as JSON, numbers and booleans bare, `Debug`/`Display` values as strings).
//! - **The event itself**, for the one line every HTTP request writes: even formatted in
//!   place, a 16-field event goes through tracing's value set, a visitor call per field
//!   through `dyn` writers and the subscriber's buffer. [`request`] writes the same bytes
//!   from a typed [`RequestLine`] into a per-thread buffer and hands it to the log thread;
//!   `RUST_LOG` still decides whether it is written (`tracing::enabled!` on the same target
//!   and level). Measured in issue 19 (docs/benchmarks.md).

use rustronaut_contract::policy::PolicyRef;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

pub mod writer;

/// Bytes of lines pending for the log thread before request threads wait for it: about
/// 16,000 decision lines, half a second of a busy gateway's lines, for stdout to stall.
pub const QUEUE_BYTES: usize = 8 << 20;

/// The same for a gateway with one worker thread (`--threads 1`, as the webhook injects the
/// sidecar): 1 MiB, about two seconds of a sidecar's decision lines at 1,000 req/s.
///
/// Why smaller: a sidecar's memory counts once per pod. Pending lines are the only memory
/// the log holds (nothing is allocated up front, [`writer`]), so this bounds what a stalled
/// stdout can cost; a full buffer sheds nothing, it only makes requests wait.
pub const QUEUE_BYTES_ONE_THREAD: usize = 1 << 20;

/// The pending-bytes limit for a gateway with `threads` worker threads per listener.
pub fn queue_bytes(threads: usize) -> usize {
    if threads <= 1 {
        QUEUE_BYTES_ONE_THREAD
    } else {
        QUEUE_BYTES
    }
}

/// Keeps the log thread alive; dropping it writes what is pending. Hold it until `main`
/// returns.
pub type Guard = writer::Guard;

/// Installs the JSON log on stdout for the process, filtered by `RUST_LOG` (default `info`),
/// request threads waiting past `queue_bytes` pending (see [`queue_bytes`]).
///
/// # Errors
/// The log thread could not be started.
pub fn init(queue_bytes: usize) -> std::io::Result<Guard> {
    // Stdout locked once by the log thread: each batch is one write of whole lines.
    let (writer, guard) = writer::spawn(std::io::stdout(), queue_bytes, "rustronaut-log")?;
    // The first init wins, as `tracing_subscriber`'s global default does.
    let _ = SINK.set(writer.clone());
    tracing_subscriber::fmt()
        .event_format(JsonLines)
        .with_writer(writer)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    Ok(guard)
}

/// Where [`request`] hands its lines: the log thread of [`init`].
static SINK: OnceLock<writer::BatchWriter> = OnceLock::new();

/// Target of the decision lines, which `RUST_LOG` filters by.
pub const DECISION_TARGET: &str = "rustronaut::decision";

/// One HTTP request's decision line: the fields docs/gateway.md lists, in its order.
#[derive(Clone, Copy)]
pub struct RequestLine<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// `namespace/name` of the Resource, `-` when none was routed.
    pub resource: &'a str,
    /// Resource rule, `-` when none.
    pub section: &'a str,
    /// Caller summary.
    pub identity: &'a str,
    /// Client address; empty when unknown.
    pub client_ip: Option<IpAddr>,
    /// `client_ip` as text, when the caller has it already (the connection's own, see
    /// [`crate::proxy::PeerValue`]): written instead of formatting the address again.
    pub client_ip_text: Option<&'a str>,
    /// `Allow`, `Deny` or `-`: a name of the gateway's own, written as it is.
    pub decision: &'static str,
    /// Why: a name of the gateway's own, written as it is.
    pub reason: &'static str,
    /// Deciding policy, written `namespace/name`; `-` when none.
    pub policy: Option<&'a PolicyRef>,
    /// Deciding policy rule, `-` when none.
    pub rule: &'a str,
    /// Decision id.
    pub decision_id: &'a str,
    /// Status sent, 0 when none.
    pub status: u16,
    /// The upstream tried last; `-` when none.
    pub upstream: Option<Upstream<'a>>,
    /// Human detail, empty when none.
    pub detail: &'a str,
    /// What the DryRun policies would have decided, `-` when none.
    pub dry_run: &'a str,
    /// The error that ended the request; empty when none.
    pub error: Option<&'a dyn fmt::Display>,
    /// `resource`, `section`, `policy` and `rule` are names of a snapshot whose names were
    /// all checked to need no escaping when it was compiled
    /// ([`crate::state::Compiled::plain_names`]), so they are copied without a check;
    /// `false`: each is checked here, as every other field is.
    pub plain_names: bool,
}

impl fmt::Debug for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLine")
            .field("decision_id", &self.decision_id)
            .finish_non_exhaustive()
    }
}

impl RequestLine<'_> {
    /// The line, newline included, exactly as [`JsonLines`] writes the equivalent
    /// `tracing::info!(target: "rustronaut::decision", listener = ..., "request")` event
    /// (tested: `request_lines_are_the_events_lines`).
    fn write(&self, w: &mut String, now: SystemTime) -> fmt::Result {
        /// `,"key":"value"`, the value escaped; `open` is `,"key":"`, so the constant part
        /// is one copy (issue 19: three calls per field instead of six, ~900 instructions per
        /// line, callgrind).
        fn field(w: &mut String, open: &str, value: &str) -> fmt::Result {
            w.push_str(open);
            push_escaped(w, value)?;
            w.push('"');
            Ok(())
        }
        /// `,"key":"`: the constant part of a field.
        macro_rules! open {
            ($key:literal) => {
                concat!(",\"", $key, "\":\"")
            };
        }
        // `field` for a name of the snapshot: copied without a check when its names
        // were checked at compile time (issue 19: four of a line's ten checks).
        let name = |w: &mut String, open: &str, value: &str| {
            if self.plain_names {
                w.push_str(open);
                w.push_str(value);
                w.push('"');
                Ok(())
            } else {
                field(w, open, value)
            }
        };
        /// `,"key":"value"` for one of the gateway's own names (static text, never a
        /// client's).
        fn own(w: &mut String, open: &str, value: &'static str) {
            debug_assert!(!needs_escaping(value), "{value}");
            w.push_str(open);
            w.push_str(value);
            w.push('"');
        }
        w.push_str("{\"timestamp\":\"");
        write_timestamp(w, now)?;
        w.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
        field(w, open!("listener"), self.listener)?;
        name(w, open!("resource"), self.resource)?;
        name(w, open!("section"), self.section)?;
        field(w, open!("identity"), self.identity)?;
        w.push_str(open!("client_ip"));
        match (self.client_ip_text, self.client_ip) {
            (Some(text), Some(_)) => w.push_str(text),
            (_, Some(IpAddr::V4(ip))) => push_ipv4(w, ip),
            (_, Some(ip)) => write!(w, "{ip}")?,
            (_, None) => {}
        }
        w.push('"');
        own(w, open!("decision"), self.decision);
        own(w, open!("reason"), self.reason);
        w.push_str(",\"policy\":");
        match self.policy {
            Some(p) if self.plain_names => {
                w.push('"');
                w.push_str(&p.namespace);
                w.push('/');
                w.push_str(&p.name);
                w.push('"');
            }
            Some(p) => write_strs(w, &[&p.namespace, "/", &p.name])?,
            None => w.push_str("\"-\""),
        }
        name(w, open!("rule"), self.rule)?;
        field(w, open!("decision_id"), self.decision_id)?;
        w.push_str(",\"status\":");
        push_u32(w, self.status.into());
        w.push_str(",\"upstream\":");
        match self.upstream {
            Some(Upstream::Site(site)) => write_str(w, site)?,
            // An IPv4 address's digits placed here, not through `Display` (issue 19).
            Some(Upstream::Addr(std::net::SocketAddr::V4(a))) => {
                w.push('"');
                push_ipv4(w, *a.ip());
                w.push(':');
                push_u32(w, a.port().into());
                w.push('"');
            }
            Some(Upstream::Addr(a)) => write!(w, "\"{a}\"")?,
            None => w.push_str("\"-\""),
        }
        field(w, open!("detail"), self.detail)?;
        field(w, open!("dry_run"), self.dry_run)?;
        w.push_str(",\"error\":\"");
        if let Some(e) = self.error {
            write!(Escaped(w), "{e}")?;
        }
        w.push_str("\",\"target\":\"rustronaut::decision\"}\n");
        Ok(())
    }
}

/// Writes one HTTP request's decision line, when `RUST_LOG` enables the decision target at
/// `info` (as it would the `tracing::info!` event this replaces, see the module docs): to the
/// log thread of [`init`], or straight to stdout in a process that installed its own
/// subscriber instead. `now` is the line's timestamp: the caller has the time already.
pub fn request(line: &RequestLine<'_>, now: SystemTime) {
    if !tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO) {
        return;
    }
    thread_local! {
        static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    }
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        if line.write(buf, now).is_err() {
            return;
        }
        match SINK.get() {
            Some(sink) => sink.append(buf.as_bytes()),
            None => {
                let _ = std::io::stdout().lock().write_all(buf.as_bytes());
            }
        }
        // A line with a long detail does not keep its buffer for the thread's life.
        buf.shrink_to(1024);
    });
}

/// Formats an event as one JSON object (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_line(&mut w, SystemTime::now(), event)
    }
}

fn write_line(w: &mut dyn fmt::Write, now: SystemTime, event: &Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    w.write_str("{\"timestamp\":\"")?;
    write_timestamp(w, now)?;
    write!(w, "\",\"level\":\"{}\"", meta.level())?;
    let mut fields = Fields { w, result: Ok(()) };
    event.record(&mut fields);
    fields.result?;
    w.write_str(",\"target\":")?;
    write_str(w, meta.target())?;
    w.write_str("}\n")
}

/// `2026-12-03T14:27:38.123456Z`: UTC, microseconds, as tracing-subscriber writes it.
///
/// The text up to the second changes once a second, so each thread keeps it and only the
/// microseconds are placed per line (issue 19: the calendar arithmetic and a UTF-8 check of
/// the 27 bytes on every request, about 300 instructions, callgrind).
fn write_timestamp<W: fmt::Write + ?Sized>(w: &mut W, now: SystemTime) -> fmt::Result {
    thread_local! {
        /// The second of the last line this thread wrote, and its text up to the `.`.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            text.clear();
            write_second(text, secs)?;
            *at = secs;
        }
        w.write_str(text)
    })?;
    let micros = d.subsec_micros();
    w.write_str(pair(micros / 10_000))?;
    w.write_str(pair(micros / 100 % 100))?;
    w.write_str(pair(micros % 100))?;
    w.write_str("Z")
}

/// `2026-12-03T14:27:38.` for `secs` since the epoch.
fn write_second(w: &mut String, secs: u64) -> fmt::Result {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    // Below 86,400: the casts are exact.
    let (hh, mm, ss) = (
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    );
    match u32::try_from(y) {
        Ok(year @ 0..=9999) => {
            for (part, sep) in [
                (pair(year / 100), ""),
                (pair(year % 100), "-"),
                (pair(m), "-"),
                (pair(day), "T"),
                (pair(hh), ":"),
                (pair(mm), ":"),
                (pair(ss), "."),
            ] {
                w.push_str(part);
                w.push_str(sep);
            }
            Ok(())
        }
        _ => write!(w, "{y:04}-{m:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}."),
    }
}

/// `N` decimal numbers of `W` digits each, zero-padded, back to back: `000001002…` for
/// `W = 3`. Built at compile time, so a number's text is a slice of a `&'static str`
/// rather than digits placed and checked as UTF-8 on every line (issue 19).
const fn digit_table<const N: usize, const W: usize>() -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N / W {
        let (mut n, mut k) = (i, W);
        while k > 0 {
            k -= 1;
            t[i * W + k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        i += 1;
    }
    t
}

static PAIR_DIGITS: [u8; 200] = digit_table::<200, 2>();
static TRIPLE_DIGITS: [u8; 3000] = digit_table::<3000, 3>();
/// `00` to `99`.
static PAIRS: &str = match std::str::from_utf8(&PAIR_DIGITS) {
    Ok(s) => s,
    Err(_) => panic!("digits are ASCII"),
};
/// `000` to `999`.
static TRIPLES: &str = match std::str::from_utf8(&TRIPLE_DIGITS) {
    Ok(s) => s,
    Err(_) => panic!("digits are ASCII"),
};

/// `n % 100` as two digits.
fn pair(n: u32) -> &'static str {
    let i = (n % 100) as usize * 2;
    &PAIRS[i..i + 2]
}

/// `n % 1000` in decimal: three digits when `padded`, else without leading zeros.
fn triple(n: u32, padded: bool) -> &'static str {
    let n = n % 1000;
    let at = n as usize * 3;
    let skip = match n {
        _ if padded => 0,
        100.. => 0,
        10.. => 1,
        _ => 2,
    };
    &TRIPLES[at + skip..at + 3]
}

/// Appends an IPv4 address in dotted decimal: `Display` for addresses goes through the
/// formatting machinery per octet, a visible cost when every request writes two
/// addresses (issue 19).
pub(crate) fn push_ipv4(w: &mut String, ip: std::net::Ipv4Addr) {
    w.reserve(15);
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            w.push('.');
        }
        w.push_str(triple(o.into(), false));
    }
}

/// Appends `n` in decimal.
fn push_u32(w: &mut String, n: u32) {
    if n >= 1000 {
        push_u32(w, n / 1000);
        w.push_str(triple(n, true));
    } else {
        w.push_str(triple(n, false));
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Writes the concatenation of `parts` as one JSON string, quotes included.
fn write_strs(w: &mut dyn fmt::Write, parts: &[&str]) -> fmt::Result {
    w.write_char('"')?;
    for s in parts {
        if needs_escaping(s) {
            Escaped(&mut *w).write_str(s)?;
        } else {
            w.write_str(s)?;
        }
    }
    w.write_char('"')
}

/// Appends `s` escaped for the inside of a JSON string: copied as it is when nothing needs
/// escaping (the usual case), written through [`Escaped`] otherwise.
fn push_escaped(w: &mut String, s: &str) -> fmt::Result {
    if needs_escaping(s) {
        Escaped(w).write_str(s)
    } else {
        w.push_str(s);
        Ok(())
    }
}

/// Writes `s` as a JSON string, quotes included.
fn write_str(w: &mut dyn fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    if needs_escaping(s) {
        Escaped(w).write_str(s)?;
    } else {
        w.write_str(s)?;
    }
    w.write_char('"')
}

/// A byte JSON cannot hold as is inside a string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `s` [`needs_escape`] (so `false`: `s` goes into a JSON string as
/// it is), eight bytes at a time: every value of every
/// decision line goes through this, a byte-by-byte test cost about ten instructions a byte
/// (issue 19, callgrind). The word tests are exact for "some byte is": a byte below 0x20
/// sets its high bit in `x - 0x20…` while its own high bit is clear, and a byte equal to
/// `c` is a zero byte of `x ^ c…` (the usual "has zero byte" test); a byte of 0x80 or
/// above (UTF-8) never matches.
pub(crate) fn needs_escaping(s: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut words = s.as_bytes().chunks_exact(8);
    for w in &mut words {
        let mut b = [0; 8];
        b.copy_from_slice(w);
        let x = u64::from_ne_bytes(b);
        if x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words.remainder().iter().copied().any(needs_escape)
}

/// A writer that escapes what goes through it for the inside of a JSON string.
struct Escaped<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if esc.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(esc)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a> {
    w: &'a mut dyn fmt::Write,
    result: fmt::Result,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.w.write_char(',')?;
        // Raw identifiers (`r#type`) are logged without their prefix.
        let name = field.name();
        write_str(self.w, name.strip_prefix("r#").unwrap_or(name))?;
        self.w.write_char(':')
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |w| write_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes them as null too.
        self.record(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value}")?;
            w.write_char('"')
        });
    }
}

/// `Display` of an optional value, `-` when there is none: a decision-log field without a
/// `String` made for it.
#[derive(Debug, Clone, Copy)]
pub struct OrDash<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `Display` of an optional value, empty when there is none.
#[derive(Debug, Clone, Copy)]
pub struct OrEmpty<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// The upstream a request went to, as its decision line names it.
#[derive(Debug, Clone, Copy)]
pub enum Upstream<'a> {
    /// A site target through the tunnel (`site:name/host:port`).
    Site(&'a str),
    /// A Service address.
    Addr(std::net::SocketAddr),
}

impl fmt::Display for Upstream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Site(s) => f.write_str(s),
            Self::Addr(a) => a.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The line of one event, by our formatter and by tracing-subscriber's own JSON one.
    fn both(emit: impl Fn()) -> (serde_json::Value, serde_json::Value) {
        let ours = Buf::default();
        let theirs = Buf::default();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(ours.clone())
            .finish();
        tracing::subscriber::with_default(sub, &emit);
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(sub, &emit);
        let line = |b: &Buf| {
            let bytes = b.0.lock().unwrap().clone();
            let s = String::from_utf8(bytes).unwrap();
            assert_eq!(s.matches('\n').count(), 1, "one line: {s}");
            assert!(s.ends_with('\n'));
            serde_json::from_str::<serde_json::Value>(&s).unwrap()
        };
        (line(&ours), line(&theirs))
    }

    #[test]
    fn lines_read_as_tracing_subscribers_json_did() {
        let ip: Option<std::net::IpAddr> = Some([10, 0, 0, 1].into());
        let none: Option<&str> = None;
        let (mut ours, mut theirs) = both(|| {
            tracing::info!(
                target: "rustronaut::decision",
                listener = %"http",
                resource = "ns/app",
                identity = %"user:okta/alice \"quoted\"\n\t\u{1}",
                client_ip = %OrEmpty(ip),
                upstream = %OrDash(none),
                status = 403u16,
                delta = -3i64,
                ok = true,
                ratio = 0.5f64,
                nan = f64::NAN,
                dbg = ?vec!["a", "b"],
                r#type = "x",
                "request"
            );
        });
        for v in [&mut ours, &mut theirs] {
            let ts = v["timestamp"].as_str().unwrap().to_string();
            assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
            v.as_object_mut().unwrap().remove("timestamp");
        }
        assert_eq!(ours, theirs);
        assert_eq!(ours["identity"], "user:okta/alice \"quoted\"\n\t\u{1}");
        assert_eq!(ours["client_ip"], "10.0.0.1");
        assert_eq!(ours["upstream"], "-");
        assert_eq!(ours["status"], 403);
        assert_eq!(ours["message"], "request");
        assert_eq!(ours["target"], "rustronaut::decision");
    }

    /// The event `proxy.rs` wrote before [`request`] replaced it, through [`JsonLines`].
    fn event_line(l: &RequestLine<'_>) -> String {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                target: "rustronaut::decision",
                listener = l.listener,
                resource = l.resource,
                section = l.section,
                identity = l.identity,
                client_ip = %OrEmpty(l.client_ip),
                decision = l.decision,
                reason = l.reason,
                policy = %OrDash(l.policy),
                rule = l.rule,
                decision_id = l.decision_id,
                status = l.status,
                upstream = %OrDash(l.upstream),
                detail = l.detail,
                dry_run = l.dry_run,
                error = %OrEmpty(l.error),
                "request"
            );
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// Everything after the timestamp, which the event takes from the clock.
    fn after_timestamp(line: &str) -> &str {
        &line[line.find("\",\"level\"").unwrap()..]
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        // The epoch, a leap day, padded micros, the last four-digit year and the next.
        for (micros, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_007, "2000-02-29T00:00:00.000007Z"),
            (1_796_306_858_123_456, "2026-12-03T14:07:38.123456Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
            (253_402_300_800_000_000, "10000-01-01T00:00:00.000000Z"),
            // The thread keeps the text of the last second: the same second again (other
            // microseconds), and a second earlier than the last, are each their own.
            (1_796_306_858_000_001, "2026-12-03T14:07:38.000001Z"),
            (1_796_306_858_999_999, "2026-12-03T14:07:38.999999Z"),
            (1_796_306_857_999_999, "2026-12-03T14:07:37.999999Z"),
            (1_796_306_859_000_000, "2026-12-03T14:07:39.000000Z"),
        ] {
            let mut s = String::new();
            write_timestamp(&mut s, UNIX_EPOCH + Duration::from_micros(micros)).unwrap();
            assert_eq!(s, want);
        }
    }

    #[test]
    fn request_lines_are_the_events_lines() {
        let addr: std::net::SocketAddr = "10.0.0.9:8080".parse().unwrap();
        let err = "upstream said \"no\"\n\u{7}";
        let policy = PolicyRef {
            namespace: "ns".into(),
            name: "p\"q".into(),
        };
        let full = RequestLine {
            listener: "https",
            resource: "ns/app",
            section: "all",
            identity: "user:okta/alice \"quoted\"\\ \u{1f}é",
            client_ip: Some("2001:db8::1".parse().unwrap()),
            client_ip_text: None,
            decision: "Allow",
            reason: "AllowedBy",
            policy: Some(&policy),
            rule: "r\tule",
            decision_id: "0cad2bbff63d9740-0",
            status: 200,
            upstream: Some(Upstream::Addr(addr)),
            detail: "a\r\nb",
            dry_run: "Deny DeniedBy ns/q -",
            error: Some(&err),
            plain_names: false,
        };
        // Names a snapshot checked when it was compiled: copied as they are.
        let checked = PolicyRef {
            namespace: "ns".into(),
            name: "p".into(),
        };
        let plain = RequestLine {
            policy: Some(&checked),
            rule: "rule",
            plain_names: true,
            ..full
        };
        let bare = RequestLine {
            listener: "http",
            resource: "-",
            section: "-",
            identity: "anonymous",
            client_ip: None,
            client_ip_text: None,
            decision: "-",
            reason: "NoRoute",
            policy: None,
            rule: "-",
            decision_id: "x-1",
            status: 0,
            upstream: None,
            detail: "",
            dry_run: "-",
            error: None,
            plain_names: true,
        };
        let v4 = RequestLine {
            client_ip: Some("10.0.0.255".parse().unwrap()),
            status: 503,
            ..bare
        };
        let zeros = RequestLine {
            client_ip: Some("0.0.0.0".parse().unwrap()),
            status: 9,
            ..bare
        };
        let v4_upstream = RequestLine {
            upstream: Some(Upstream::Addr("192.168.100.255:65535".parse().unwrap())),
            ..v4
        };
        let v6_upstream = RequestLine {
            upstream: Some(Upstream::Addr("[2001:db8::9]:443".parse().unwrap())),
            ..bare
        };
        let site = RequestLine {
            upstream: Some(Upstream::Site("site:office/db \"1\":5432")),
            ..bare
        };
        // The connection's text of the address, where the caller has it.
        let v4_text = RequestLine {
            client_ip_text: Some("10.0.0.255"),
            ..v4
        };
        let v6_text = RequestLine {
            client_ip_text: Some("2001:db8::1"),
            ..full
        };
        let t = UNIX_EPOCH + Duration::from_micros(1_796_306_858_123_456);
        for l in [
            full,
            plain,
            bare,
            v4,
            zeros,
            v4_upstream,
            v6_upstream,
            site,
            v4_text,
            v6_text,
        ] {
            let mut ours = String::new();
            l.write(&mut ours, t).unwrap();
            assert!(ours.starts_with("{\"timestamp\":\"2026-12-03T14:07:38.123456Z\""));
            let theirs = event_line(&l);
            assert_eq!(after_timestamp(&ours), after_timestamp(&theirs));
            let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(v["identity"], l.identity);
            assert_eq!(v["status"], l.status);
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for n in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            101,
            200,
            404,
            999,
            1000,
            1001,
            8080,
            10_009,
            65_535,
            100_000,
            1_000_000,
            4_294_967_295,
        ] {
            let mut s = String::from("x");
            push_u32(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn the_escape_test_finds_every_byte_to_escape_at_every_place() {
        for b in 0u8..=0x7f {
            for len in [1, 7, 8, 9, 16, 23, 24, 40] {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    let s = std::str::from_utf8(&v).unwrap();
                    assert_eq!(
                        needs_escaping(s),
                        needs_escape(b),
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // Multi-byte UTF-8 (bytes of 0x80 and above) never needs escaping, next to a byte
        // that does or not.
        for s in ["é", "ééééééé", "éééé\"", "\u{1f}éééééé", "日本語のテキスト"]
        {
            assert_eq!(needs_escaping(s), s.bytes().any(needs_escape), "{s}");
        }
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.100.1",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut s = String::from("x");
            push_ipv4(&mut s, ip);
            assert_eq!(s, format!("x{ip}"));
        }
    }

    #[test]
    fn every_control_character_is_escaped() {
        let all: String = (0u8..0x20).map(char::from).collect::<String>() + "\"\\é";
        let mut s = String::new();
        write_str(&mut s, &all).unwrap();
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, all);
        assert!(!s.bytes().any(|b| b < 0x20), "{s}");
        // One byte to escape at every place of a value, and none: written as JSON that
        // reads back the same.
        for len in [1, 15, 16, 17, 40] {
            for at in 0..=len {
                for special in ["", "\"", "\\", "\n", "\u{1f}"] {
                    let value = "a".repeat(at) + special + &"b".repeat(len - at);
                    let mut s = String::new();
                    write_str(&mut s, &value).unwrap();
                    let back: String = serde_json::from_str(&s).unwrap();
                    assert_eq!(back, value);
                    assert_eq!(s.len() == value.len() + 2, special.is_empty(), "{s}");
                }
            }
        }
    }
}
