//! Helpers the integration tests share: killing a worker process outright
//! (now, or when a test ends however it ends), and waiting for a
//! supervisor's event.

use std::process::Command;
use std::time::Duration;

use tokio::sync::broadcast;
use workerbus::{Secret, SupervisorEvent};

/// Sends SIGKILL to `pid`, failing the test if `kill` fails.
pub fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// Kills a detached worker when dropped, so that a failing test leaves no
/// worker behind (a detached worker outlives its host).
#[derive(Debug)]
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A worker's secret as the bytes a greeting carries (from its hex form,
/// the only one the API shows).
pub fn secret_bytes(secret: &Secret) -> Vec<u8> {
    let hex = secret.to_hex();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
        .collect()
}

/// Waits for the first event `pick` accepts, failing the test after 20 s.
pub async fn expect<T>(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    what: &str,
    mut pick: impl FnMut(&SupervisorEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let event = events.recv().await.expect("the supervisor's events");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} event within 20 s"))
}
