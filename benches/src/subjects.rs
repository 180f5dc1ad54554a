//! workerbus as a subject of a comparison: the Echo test service on each
//! driver.

use bytes::Bytes;
use workerbus::{Channel, Error, ProcessDriver, ProcessWorker, ThreadDriver, ThreadWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

use crate::Echo;

/// A workerbus client of the Echo test service.
#[derive(Clone, Debug)]
pub struct WorkerbusEcho {
    client: EchoClient,
}

impl WorkerbusEcho {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> WorkerbusEcho {
        WorkerbusEcho {
            client: EchoClient::new(channel),
        }
    }
}

impl Echo for WorkerbusEcho {
    async fn echo(&self, payload: Bytes) -> Bytes {
        let request = EchoRequest {
            data: payload,
            ..EchoRequest::default()
        };
        match self.client.echo(request).await {
            Ok(reply) => reply.data,
            Err(error) => panic!("{error}"),
        }
    }
}

/// The Echo service on a worker thread.
pub async fn thread_worker() -> Result<ThreadWorker, Error> {
    ThreadDriver::new()
        .name("bench-echo")
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
}

/// The Echo service in a worker process: this binary, which serves it when
/// [`serve_if_worker`] finds it was started as a worker.
pub async fn process_worker() -> Result<ProcessWorker, Error> {
    let program = std::env::current_exe().expect("the benchmark's path");
    ProcessDriver::new(program)
        .name("bench-echo")
        .serves(EchoClient::SCHEMA)
        .spawn()
        .await
}

/// Serves the Echo service and returns true if this process was started as
/// a workerbus worker; returns false at once otherwise.
pub fn serve_if_worker() -> bool {
    if workerbus::startup_data().is_none() {
        return false;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime
        .block_on(workerbus::serve(EchoServer::new(EchoWorker::in_process())))
        .expect("serving the benchmark's worker");
    true
}
