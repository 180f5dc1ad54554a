//! [`StartupData`]: what a process worker learns from its host at birth,
//! through one environment variable.
//!
//! The host starts the worker with its end of a connected socket already at
//! file descriptor 3 and `WORKERBUS_WORKER` set to `1;<fd>;<host pid>;<name>`.
//! Nothing secret travels this way: the host proves itself in the handshake,
//! over the socket.

use std::fmt;

/// The environment variable that marks a process as a workerbus worker.
pub const STARTUP_ENV: &str = "WORKERBUS_WORKER";

/// The environment variable naming the directory in which a worker makes
/// its named socket (in a directory of its own, `<name>-<pid>`), instead of
/// `$XDG_RUNTIME_DIR/workerbus` or `<temporary directory>/workerbus-<uid>`
/// (`docs/PROTOCOL.md` 9.4). The directory must be the worker's user's,
/// with mode 0700; it is made so if it does not exist.
/// [`ProcessDriver::socket_dir`](crate::ProcessDriver::socket_dir) sets it.
pub const SOCKET_DIR_ENV: &str = "WORKERBUS_SOCKET_DIR";

/// The file descriptor at which a worker finds its connected socket.
pub(crate) const SOCKET_FD: i32 = 3;

/// The version of the startup format.
const STARTUP_VERSION: u32 = 1;

/// What a worker process was told by the host that started it.
///
/// ```no_run
/// // One binary that is both a command-line tool and a worker:
/// # async fn cli() {}
/// # async fn serve_worker() {}
/// # #[tokio::main] async fn main() {
/// match workerbus::startup_data() {
///     Some(_) => serve_worker().await, // started by a host: serve
///     None => cli().await,             // started by a person: be a CLI
/// }
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StartupData {
    fd: i32,
    host_pid: u32,
    name: String,
}

impl StartupData {
    pub(crate) fn new(fd: i32, host_pid: u32, name: String) -> StartupData {
        StartupData { fd, host_pid, name }
    }

    /// The worker's name, as the host gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the host.
    pub fn host_pid(&self) -> u32 {
        self.host_pid
    }

    /// The file descriptor of the connected socket.
    pub(crate) fn fd(&self) -> i32 {
        self.fd
    }

    /// The value of [`STARTUP_ENV`] that carries this data.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{STARTUP_VERSION};{};{};{}",
            self.fd, self.host_pid, self.name
        )
    }

    /// Parses the value of [`STARTUP_ENV`].
    pub(crate) fn decode(value: &str) -> Result<StartupData, String> {
        let mut parts = value.splitn(4, ';');
        let mut next = |what: &str| {
            parts
                .next()
                .ok_or_else(|| format!("{STARTUP_ENV}={value:?} lacks the {what}"))
        };
        let version = next("version")?;
        if version != STARTUP_VERSION.to_string() {
            return Err(format!(
                "{STARTUP_ENV}={value:?} has startup format version {version}, this program reads version {STARTUP_VERSION}"
            ));
        }
        let fd = next("socket descriptor")?
            .parse()
            .map_err(|_| format!("{STARTUP_ENV}={value:?} has an invalid socket descriptor"))?;
        let host_pid = next("host pid")?
            .parse()
            .map_err(|_| format!("{STARTUP_ENV}={value:?} has an invalid host pid"))?;
        let name = next("name")?.to_owned();
        Ok(StartupData { fd, host_pid, name })
    }

    /// The startup data of this process, if it was started by a host (and
    /// not merely by a descendant of a worker, which inherits the variable
    /// but not the socket).
    pub(crate) fn from_env() -> Result<Option<StartupData>, String> {
        let Some(value) = std::env::var_os(STARTUP_ENV) else {
            return Ok(None);
        };
        let value = value
            .into_string()
            .map_err(|_| format!("{STARTUP_ENV} is not valid UTF-8"))?;
        let data = StartupData::decode(&value)?;
        if data.host_pid != std::os::unix::process::parent_id() {
            return Ok(None);
        }
        Ok(Some(data))
    }
}

impl fmt::Debug for StartupData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupData")
            .field("name", &self.name)
            .field("host_pid", &self.host_pid)
            .finish_non_exhaustive()
    }
}

/// The startup data of this process, or `None` if it was not started as a
/// worker by a workerbus host: so one binary can be both a command-line tool
/// and a worker.
///
/// A malformed `WORKERBUS_WORKER` also gives `None` here;
/// [`serve`](crate::serve) reports it as an error.
pub fn startup_data() -> Option<StartupData> {
    StartupData::from_env().ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_data_round_trips_and_names_may_hold_separators() {
        let data = StartupData::new(3, 4242, "embedder;v2 (gpu)".into());
        assert_eq!(StartupData::decode(&data.encode()), Ok(data));
    }

    #[test]
    fn malformed_startup_data_says_what_is_wrong() {
        assert_eq!(
            StartupData::decode("2;3;1;x").unwrap_err(),
            "WORKERBUS_WORKER=\"2;3;1;x\" has startup format version 2, this program reads version 1"
        );
        assert_eq!(
            StartupData::decode("1;three;1;x").unwrap_err(),
            "WORKERBUS_WORKER=\"1;three;1;x\" has an invalid socket descriptor"
        );
        assert_eq!(
            StartupData::decode("1;3").unwrap_err(),
            "WORKERBUS_WORKER=\"1;3\" lacks the host pid"
        );
    }
}
