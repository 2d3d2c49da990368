//! The hand-off of log lines to the `rustronaut-log` thread, in batches.
//!
//! Why not a channel (what this replaced, `tracing-appender`'s non-blocking writer): a
//! channel wakes its receiver for almost every line when the receiver keeps up, and on the
//! one-worker benchmark the wake-ups (a futex call from the request thread, a context
//! switch, `sched_yield` in the channel) cost what the `write(2)` per line they replaced had
//! cost (issue 19, profile in docs/benchmarks.md). Here a request thread appends its line to
//! one shared buffer under a mutex and wakes the log thread only if that thread is parked.
//! The log thread takes the whole buffer, writes it in one call, then pauses [`PAUSE`]
//! before looking again, so under load lines gather for a batch while nobody wakes anybody;
//! when it finds the buffer empty it parks until the next line. A line waits at most about
//! [`PAUSE`] plus one write before it is on stdout.
//!
//! Why 20 ms and not 1: every pause ends in a timer wake-up and a context switch, which on
//! the two-core benchmark machine cost the one-worker gateway about 3 µs per request at
//! 23,000 req/s with a 1 ms pause (CPU per request 43.7 -> 40.2 µs with 20 ms, medians of
//! five alternating rounds, docs/benchmarks.md). An audit line 20 ms late on stdout changes
//! nothing for a log collector; what is pending meanwhile (about 200 KB at that rate) stays
//! far under the limit at which request threads would wait.
//!
//! Nothing is shed: past `limit` bytes pending (stdout slower than the requests), request
//! threads wait for the log thread to take the buffer, as they waited for their own write
//! before there was a log thread, so the audit trail stays complete. Memory is only what is
//! pending: nothing is allocated up front (a sidecar's log costs nothing until it logs).
//!
//! Why the buffers keep the size the last batch needed (up to [`MAX_KEEP_BYTES`]): the two
//! buffers trade places every batch, so the one request threads append to next is the one
//! just written. Cut back to a fixed 64 KiB after each write (as before), a busy gateway's
//! buffer grew again during every batch (64 -> 128 -> 256 KiB at 40,000 lines a second),
//! each growth a copy on a request thread, a stall of up to ~25 µs for the requests behind
//! it (no CPU difference the benchmarks resolve: issue 19, docs/benchmarks.md). Sized to
//! twice the last batch, a steady load appends without a growth; when the load ends, the
//! next batch is small and both buffers shrink back to [`KEEP_BYTES`] (the one left pending
//! when the log thread parks is given back whole).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// How long the log thread waits after a write before it takes the next batch.
pub const PAUSE: Duration = Duration::from_millis(20);

/// Buffer capacity the log thread keeps between batches at least (when it has any).
pub const KEEP_BYTES: usize = 64 * 1024;

/// Buffer capacity kept between batches at most: twice a batch of 20 ms at about 40,000
/// decision lines a second. A larger batch's buffer is cut back to this after its write.
pub const MAX_KEEP_BYTES: usize = 512 * 1024;

/// The capacity to keep for the next batches after writing one of `written` bytes.
fn keep_after(written: usize) -> usize {
    written.saturating_mul(2).clamp(KEEP_BYTES, MAX_KEEP_BYTES)
}

/// The state the request threads and the log thread share.
struct Shared {
    /// Lines not yet taken by the log thread, whole lines only.
    pending: Mutex<Vec<u8>>,
    /// Signalled when the log thread takes a buffer that had reached `limit`.
    room: Condvar,
    /// Bytes pending at which a request thread waits before appending.
    limit: usize,
    /// The log thread found nothing pending and parked (or is about to); the next line
    /// wakes it. Read and written only with `pending` locked, so no line is missed.
    parked: AtomicBool,
    /// Set by [`Guard`] on drop: write what is pending and stop.
    stop: AtomicBool,
    /// The log thread, to unpark; set before any writer exists.
    thread: OnceLock<Thread>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Where `tracing-subscriber` writes formatted lines: the shared buffer. Cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the log thread alive; dropping it writes what is pending and joins the thread.
/// Hold it until `main` returns.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// Starts the log thread (named `name`) writing to `out`, request threads waiting past
/// `limit` pending bytes.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    limit: usize,
    name: &str,
) -> io::Result<(BatchWriter, Guard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::new()),
        room: Condvar::new(),
        limit: limit.max(1),
        parked: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        thread: OnceLock::new(),
    });
    let run_shared = Arc::clone(&shared);
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(&run_shared, out))?;
    let _ = shared.thread.set(handle.thread().clone());
    Ok((
        BatchWriter {
            shared: Arc::clone(&shared),
        },
        Guard {
            shared,
            thread: Some(handle),
        },
    ))
}

/// The log thread: take everything pending, write it, pause; park when there is nothing.
fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    let mut failed = false;
    loop {
        {
            let mut pending = shared.pending();
            if pending.is_empty() {
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                shared.parked.store(true, Ordering::Relaxed);
                // Idle: what a busy spell grew is given back, the pending buffer whole (freed
                // after the unlock), this thread's own to the least it keeps.
                let grown =
                    (pending.capacity() > KEEP_BYTES).then(|| std::mem::take(&mut *pending));
                drop(pending);
                drop(grown);
                batch.shrink_to(KEEP_BYTES);
                // A line appended from here on finds `parked` set and unparks us; one
                // appended before was seen above. A spurious return just looks again.
                thread::park();
                continue;
            }
            shared.parked.store(false, Ordering::Relaxed);
            std::mem::swap(&mut *pending, &mut batch);
            // Request threads wait only while `limit` bytes are pending, and only this
            // thread empties the buffer: so if any waits, this batch reached the limit.
            if batch.len() >= shared.limit {
                shared.room.notify_all();
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            // Nowhere left to log to; say so once where an operator may still look, and keep
            // taking lines so that request threads never wait on a dead stdout.
            if !failed {
                failed = true;
                eprintln!("rustronaut-log: writing the log failed, lines are lost: {e}");
            }
        } else {
            failed = false;
        }
        let keep = keep_after(batch.len());
        batch.clear();
        batch.shrink_to(keep);
        if !shared.stop.load(Ordering::Acquire) {
            // Not `sleep`: the guard's unpark at shutdown ends the pause early. Request
            // threads unpark only a parked log thread, so nothing else cuts it short (a
            // stale token only makes one pause shorter).
            thread::park_timeout(PAUSE);
        }
    }
    let _ = out.flush();
}

impl BatchWriter {
    /// Appends whole lines for the log thread, waiting while `limit` bytes are pending.
    pub fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut pending = shared.pending();
        while pending.len() >= shared.limit {
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        pending.extend_from_slice(line);
        let wake = shared.parked.load(Ordering::Relaxed);
        if wake {
            shared.parked.store(false, Ordering::Relaxed);
        }
        drop(pending);
        if wake {
            shared.unpark();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A sink that records what it got and how many writes it took; it can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Sink {
        fn shut(&self) {
            *self.gate.0.lock().unwrap() = true;
        }
        fn open(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.got.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (shut, cv) = &*self.gate;
            let mut g = shut.lock().unwrap();
            while *g {
                g = cv.wait(g).unwrap();
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_per_thread_and_drop_flushes() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone(), 4096, "test-log").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                thread::spawn(move || {
                    for i in 0..5000 {
                        w.write_all(
                            format!("t{t} line {i:05} {}\n", "x".repeat(i % 97)).as_bytes(),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let lines = sink.lines();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let prefix = format!("t{t} ");
            let mine: Vec<_> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
            assert_eq!(mine.len(), 5000);
            for (i, l) in mine.iter().enumerate() {
                assert_eq!(**l, format!("t{t} line {i:05} {}", "x".repeat(i % 97)));
            }
        }
    }

    #[test]
    fn lines_written_in_a_burst_go_out_in_batches() {
        let sink = Sink::default();
        let (mut writer, guard) = spawn(sink.clone(), 1 << 20, "test-log").unwrap();
        for i in 0..10_000 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        assert_eq!(sink.lines().len(), 10_000);
        let writes = sink.writes.load(Ordering::SeqCst);
        // One write per line is what a channel's receiver did when it kept up.
        assert!(writes < 1_000, "{writes} writes for 10,000 lines");
    }

    #[test]
    fn a_stalled_stdout_makes_writers_wait_and_loses_nothing() {
        let sink = Sink::default();
        sink.shut();
        let (writer, guard) = spawn(sink.clone(), 1000, "test-log").unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        let producer = {
            let (mut w, written) = (writer.clone(), Arc::clone(&written));
            thread::spawn(move || {
                for i in 0..1000 {
                    w.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
                    written.fetch_add(1, Ordering::SeqCst);
                }
                done_tx.send(()).unwrap();
            })
        };
        // 10 bytes a line: the log thread holds one batch in its blocked write, then about
        // 1,000 bytes pend before the producer has to wait.
        thread::sleep(Duration::from_millis(300));
        assert!(done_rx.try_recv().is_err(), "the producer waits for room");
        let stuck = written.load(Ordering::SeqCst);
        assert!(stuck < 300, "{stuck} lines taken while stdout was shut");
        sink.open();
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the producer finishes once stdout drains");
        producer.join().unwrap();
        drop(guard);
        let lines = sink.lines();
        assert_eq!(lines.len(), 1000);
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i:04}"))
        );
    }

    #[test]
    fn the_buffers_keep_twice_the_last_batch_within_bounds() {
        assert_eq!(keep_after(0), KEEP_BYTES);
        assert_eq!(keep_after(KEEP_BYTES / 2), KEEP_BYTES);
        assert_eq!(keep_after(100_000), 200_000);
        assert_eq!(keep_after(MAX_KEEP_BYTES / 2), MAX_KEEP_BYTES);
        assert_eq!(keep_after(MAX_KEEP_BYTES), MAX_KEEP_BYTES);
        assert_eq!(keep_after(usize::MAX), MAX_KEEP_BYTES);
    }

    /// A burst grows the buffers; once the log thread is idle again, the buffer left for the
    /// next lines is back to at most [`KEEP_BYTES`].
    #[test]
    fn a_buffer_grown_by_a_burst_is_given_back_when_the_log_thread_parks() {
        let sink = Sink::default();
        sink.shut();
        let (mut writer, _guard) = spawn(sink.clone(), 8 << 20, "test-log").unwrap();
        writer.write_all(b"first\n").unwrap();
        // The log thread took "first" and is held in its write: the burst piles up.
        wait_until("the first line to be taken", || {
            writer.shared.pending().is_empty()
        });
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..3_000 {
            writer.write_all(line.as_bytes()).unwrap();
        }
        assert!(writer.shared.pending().capacity() >= 300_000);
        let written = |n: usize| {
            let got = Arc::clone(&sink.got);
            move || got.lock().unwrap().len() == n
        };
        sink.open();
        wait_until("the burst to be written", written(6 + 300_000));
        // The next batch trades the burst's buffer in as the pending one.
        writer.write_all(b"tail\n").unwrap();
        wait_until("the tail to be written", written(6 + 300_000 + 5));
        wait_until("the log thread to park", || {
            writer.shared.parked.load(Ordering::Relaxed)
        });
        let kept = writer.shared.pending().capacity();
        assert!(kept <= KEEP_BYTES, "{kept} bytes kept pending while idle");
        assert_eq!(sink.lines().len(), 3_002);
    }

    #[test]
    fn an_idle_log_thread_parks_and_the_next_line_wakes_it() {
        let sink = Sink::default();
        let (mut writer, _guard) = spawn(sink.clone(), 1 << 20, "test-log").unwrap();
        for round in 0..3 {
            wait_until("the log thread to park", || {
                writer.shared.parked.load(Ordering::Relaxed)
            });
            writer
                .write_all(format!("after idle {round}\n").as_bytes())
                .unwrap();
            wait_until("the line to be written", || sink.lines().len() == round + 1);
        }
    }

    #[test]
    fn a_failing_stdout_does_not_hold_up_the_writers() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // Past the 100-byte limit each line waits for the log thread's next take, one per
        // PAUSE: 1,000 lines of ~9 bytes are ~90 takes, about 2 s (10,000 took 20).
        let (mut writer, guard) = spawn(Broken, 100, "test-log").unwrap();
        for i in 0..1_000 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
    }
}
