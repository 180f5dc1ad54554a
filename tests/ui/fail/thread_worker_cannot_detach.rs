//! Detaching and reconnecting exist only on workers whose driver can do
//! them; a thread worker is not one.

use workerbus::ThreadWorker;

fn detach(worker: &ThreadWorker) {
    worker.detach();
}

fn reconnect(worker: &ThreadWorker) {
    worker.reconnect();
}

fn main() {}
