//! [`ExitReason`]: how a worker ended.

use std::fmt;

/// How a worker ended, as carried by [`Error::WorkerExited`](crate::Error::WorkerExited) and a worker's
/// `exited()`.
///
/// It displays as a phrase that follows "the worker": "exited with code 3",
/// "was killed by signal 9 (SIGKILL)".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// A worker process exited with this code.
    Code(i32),
    /// A worker process was killed by this signal number.
    Signal(i32),
    /// A worker thread panicked outside any handler (handler panics are
    /// answered with [`Code::Internal`](crate::Code::Internal) and do not stop the worker).
    Panicked(String),
    /// A worker thread stopped serving: after a shutdown, or because every
    /// handle to it was dropped.
    Stopped,
    /// A worker thread was stopped without finishing its calls: by
    /// `kill()`, or by a shutdown whose grace period ran out.
    Killed,
    /// The worker is gone but how it ended could not be determined.
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exited with code {code}"),
            ExitReason::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
            ExitReason::Panicked(message) => write!(f, "panicked: {message}"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Killed => f.write_str("was killed"),
            ExitReason::Unknown => f.write_str("ended (exit status unknown)"),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_reason_reads_after_the_worker() {
        let named = [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (4, "SIGILL"),
            (6, "SIGABRT"),
            (7, "SIGBUS"),
            (8, "SIGFPE"),
            (9, "SIGKILL"),
            (11, "SIGSEGV"),
            (13, "SIGPIPE"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
        ];
        for (signal, name) in named {
            assert_eq!(
                ExitReason::Signal(signal).to_string(),
                format!("was killed by signal {signal} ({name})")
            );
        }
        for unnamed in [5, 10, 12, 64] {
            assert_eq!(
                ExitReason::Signal(unnamed).to_string(),
                format!("was killed by signal {unnamed}")
            );
        }
        assert_eq!(ExitReason::Code(0).to_string(), "exited with code 0");
        assert_eq!(
            ExitReason::Panicked("index out of bounds".into()).to_string(),
            "panicked: index out of bounds"
        );
        assert_eq!(ExitReason::Stopped.to_string(), "stopped");
        assert_eq!(ExitReason::Killed.to_string(), "was killed");
        assert_eq!(
            ExitReason::Unknown.to_string(),
            "ended (exit status unknown)"
        );
    }
}
