//! The lines the library writes to stderr (the frame log, a process
//! worker's watchdog, a host's copy of its workers' stderr), written by a
//! thread of their own, so that a stderr that is closed, full or never read
//! can neither panic nor block the code that writes them.
//!
//! `eprintln!` panics when the write fails (a pipe whose reader is gone:
//! `EPIPE`), and a write to a full pipe waits until someone reads it. Here a
//! caller hands its line to the writer thread instead:
//!
//! | the writer                          | the caller                                  |
//! | ----------------------------------- | ------------------------------------------- |
//! | keeps up                            | waits until its line is written (microseconds), so lines come out in order with what the program writes itself, and none is lost if the process ends just after |
//! | has taken more than [`KEEP_UP`] over a line | does not wait: its line is queued, until the writer has caught up |
//! | has [`MAX_QUEUED`] bytes waiting    | its line is dropped and counted; the count is written once the writer catches up |
//! | could not be started                | its line is dropped and counted             |
//!
//! Write errors are ignored: there is nowhere else to report them.
//!
//! There is one writer per process, as there is one stderr.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a caller waits for its line while the writer keeps up.
pub(crate) const KEEP_UP: Duration = Duration::from_millis(50);

/// How many bytes of lines may wait for the writer; more are dropped.
pub(crate) const MAX_QUEUED: usize = 1 << 20;

/// Writes `line` and a newline to the process's stderr, without panicking
/// or blocking for more than [`KEEP_UP`].
pub(crate) fn line(line: impl Into<String>) {
    process().line(line.into());
}

/// Waits until every line handed over so far is written, or `within` has
/// passed; says whether they were.
#[cfg(feature = "process")]
pub(crate) fn flush(within: Duration) -> bool {
    process().flush(within)
}

fn process() -> &'static LineWriter {
    static STDERR: OnceLock<LineWriter> = OnceLock::new();
    STDERR.get_or_init(|| LineWriter::new(Box::new(std::io::stderr())))
}

/// Lines for one sink, written by a thread started with the first line.
pub(crate) struct LineWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Notified when a line is queued and when one is written.
    changed: Condvar,
}

struct State {
    queue: VecDeque<Vec<u8>>,
    /// Bytes in `queue`.
    queued: usize,
    /// Lines queued since the start, and of those, lines written.
    pushed: u64,
    written: u64,
    /// Lines dropped and not yet reported.
    dropped: u64,
    /// Set when a caller gave up waiting for its line; cleared when the
    /// writer has caught up.
    stalled: bool,
    writer: Writer,
}

enum Writer {
    /// Not started: no line was written yet.
    Idle(Box<dyn Write + Send>),
    Running,
    /// The thread could not be started: every line is dropped.
    Failed,
}

impl LineWriter {
    pub(crate) fn new(sink: Box<dyn Write + Send>) -> LineWriter {
        LineWriter {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    queued: 0,
                    pushed: 0,
                    written: 0,
                    dropped: 0,
                    stalled: false,
                    writer: Writer::Idle(sink),
                }),
                changed: Condvar::new(),
            }),
        }
    }

    pub(crate) fn line(&self, line: String) {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        let mut state = self.shared.lock();
        if let Writer::Idle(_) = state.writer {
            self.start(&mut state);
        }
        if matches!(state.writer, Writer::Failed) || state.queued + bytes.len() > MAX_QUEUED {
            state.dropped += 1;
            return;
        }
        state.queued += bytes.len();
        state.queue.push_back(bytes);
        state.pushed += 1;
        let mine = state.pushed;
        self.shared.changed.notify_all();
        if state.stalled {
            return;
        }
        let deadline = Instant::now() + KEEP_UP;
        while state.written < mine {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                state.stalled = true;
                return;
            };
            state = self.shared.wait(state, left);
        }
    }

    #[cfg(any(feature = "process", test))]
    pub(crate) fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut state = self.shared.lock();
        while state.written < state.pushed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self.shared.wait(state, left);
        }
        true
    }

    /// Lines dropped and not yet reported.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    fn start(&self, state: &mut State) {
        let Writer::Idle(sink) = std::mem::replace(&mut state.writer, Writer::Running) else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let started = std::thread::Builder::new()
            .name("workerbus-stderr".into())
            .spawn(move || write_lines(&shared, sink));
        if started.is_err() {
            state.writer = Writer::Failed;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, at_most: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(state, at_most)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// The writer thread: writes each line queued, and, once it has caught up,
/// how many were dropped.
fn write_lines(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut state = shared.lock();
    loop {
        let (bytes, queued) = if let Some(bytes) = state.queue.pop_front() {
            state.queued -= bytes.len();
            (bytes, true)
        } else if state.dropped > 0 {
            let report = format!(
                "workerbus: {} lines for stderr were dropped: it did not take them as fast as they came\n",
                std::mem::take(&mut state.dropped)
            );
            (report.into_bytes(), false)
        } else {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(state);
        // A closed or broken stderr: there is nowhere to say so.
        let _ = sink.write_all(&bytes).and_then(|()| sink.flush());
        state = shared.lock();
        if queued {
            state.written += 1;
        }
        if state.queue.is_empty() {
            state.stalled = false;
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that hands what it is given to the test, and blocks while the
    /// test holds its gate.
    struct Gated {
        gate: Arc<Mutex<()>>,
        out: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _open = crate::sync::lock(&self.gate);
            let _ = self.out.send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose reader is gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    fn gated() -> (LineWriter, Arc<Mutex<()>>, mpsc::Receiver<Vec<u8>>) {
        let gate = Arc::new(Mutex::new(()));
        let (out, written) = mpsc::channel();
        let writer = LineWriter::new(Box::new(Gated {
            gate: Arc::clone(&gate),
            out,
        }));
        (writer, gate, written)
    }

    #[test]
    fn lines_are_written_whole_and_in_order() {
        let (writer, _gate, written) = gated();
        for n in 0..100 {
            writer.line(format!("line {n}"));
        }
        assert!(writer.flush(Duration::from_secs(20)));
        for n in 0..100 {
            assert_eq!(
                written.try_recv().unwrap(),
                format!("line {n}\n").as_bytes()
            );
        }
    }

    #[test]
    fn a_broken_sink_neither_panics_nor_blocks() {
        let writer = LineWriter::new(Box::new(Broken));
        let started = Instant::now();
        for n in 0..1000 {
            writer.line(format!("line {n}"));
        }
        assert!(writer.flush(Duration::from_secs(20)));
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_blocked_sink_costs_one_wait_then_lines_queue_and_overflow_is_dropped() {
        let (writer, gate, written) = gated();
        let closed = gate.lock().unwrap();
        let started = Instant::now();
        writer.line("waits".into());
        let waited = started.elapsed();
        assert!(waited >= KEEP_UP, "{waited:?}");
        // Stalled: the next callers do not wait, however many lines come.
        let line = "x".repeat(1023);
        let started = Instant::now();
        let lines = 2 * MAX_QUEUED / 1024;
        for _ in 0..lines {
            writer.line(line.clone());
        }
        // (Waiting for each would take 100 s.)
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let dropped = writer.dropped();
        assert!(
            dropped >= (lines / 2) as u64 - 1 && dropped < lines as u64,
            "{dropped} of {lines} dropped"
        );
        assert!(!writer.flush(Duration::ZERO));

        // Unblocked, the writer writes what it kept, then the count.
        drop(closed);
        assert!(writer.flush(Duration::from_secs(20)));
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got
            .last()
            .is_none_or(|last| !last.starts_with(b"workerbus: "))
        {
            got.push(
                written
                    .recv_timeout(Duration::from_secs(20))
                    .expect("the drop report"),
            );
        }
        assert_eq!(got[0], b"waits\n");
        assert_eq!(got.len() as u64, lines as u64 - dropped + 2);
        assert_eq!(
            String::from_utf8_lossy(got.last().unwrap()),
            format!(
                "workerbus: {dropped} lines for stderr were dropped: it did not take them as fast as they came\n"
            )
        );
        writer.line("after".into());
        assert_eq!(
            written.recv_timeout(Duration::from_secs(20)).unwrap(),
            b"after\n"
        );
    }
}
