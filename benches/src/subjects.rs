//! workerbus as a subject of a comparison: the Echo test service on each
//! driver, and the Vectors service of the fresh-message scenario.

use bytes::Bytes;
use workerbus::{
    Channel, ChannelOptions, Context, Error, ProcessDriver, ProcessWorker, ServeOptions, Status,
    ThreadDriver, ThreadWorker,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer};

use self::pb::{MakeReply, MakeRequest, VectorsClient, VectorsHandler, VectorsServer};
use crate::{Echo, MakeVectors, fresh_vectors};

/// The Vectors service (`benches/proto/vectors.proto`).
#[allow(missing_docs)]
pub mod pb {
    workerbus::include_proto!("bench");
}

/// The environment variable that makes a worker process of this binary
/// serve the Vectors service rather than Echo.
const SERVE_ENV: &str = "WORKERBUS_BENCH_SERVE";

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

/// A workerbus client of the Vectors service.
#[derive(Clone, Debug)]
pub struct WorkerbusVectors {
    client: VectorsClient,
}

impl WorkerbusVectors {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> WorkerbusVectors {
        WorkerbusVectors {
            client: VectorsClient::new(channel),
        }
    }
}

impl MakeVectors for WorkerbusVectors {
    async fn make(&self, count: u32) -> Vec<f32> {
        match self.client.make(MakeRequest { count }).await {
            Ok(reply) => reply.values,
            Err(error) => panic!("{error}"),
        }
    }
}

/// The Vectors service's handler: a fresh batch for every call.
#[derive(Clone, Copy, Debug)]
pub struct VectorsWorker;

impl VectorsHandler for VectorsWorker {
    async fn make(&self, request: MakeRequest, _cx: &Context) -> Result<MakeReply, Status> {
        Ok(MakeReply {
            values: fresh_vectors(request.count),
        })
    }
}

/// The Vectors service on a worker thread.
pub async fn vectors_thread_worker() -> Result<ThreadWorker, Error> {
    ThreadDriver::new()
        .name("bench-vectors")
        .spawn(VectorsServer::new(VectorsWorker))
        .await
}

/// The Vectors service in a worker process (this binary).
pub async fn vectors_process_worker() -> Result<ProcessWorker, Error> {
    let program = std::env::current_exe().expect("the benchmark's path");
    ProcessDriver::new(program)
        .name("bench-vectors")
        .env(SERVE_ENV, "vectors")
        .serves(VectorsClient::SCHEMA)
        .spawn()
        .await
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

/// The payload size from which [`process_worker_shared_memory`]'s
/// payloads cross in sealed memory files.
pub const SHARED_MEMORY_FROM: usize = 256 * 1024;

/// As [`process_worker`], but with payloads of [`SHARED_MEMORY_FROM`] bytes
/// or more in sealed memory files, both ways.
pub async fn process_worker_shared_memory() -> Result<ProcessWorker, Error> {
    let program = std::env::current_exe().expect("the benchmark's path");
    ProcessDriver::new(program)
        .name("bench-echo-shared")
        .env(SERVE_ENV, "echo-shared-memory")
        .serves(EchoClient::SCHEMA)
        .channel_options(ChannelOptions::new().shared_memory_from(Some(SHARED_MEMORY_FROM)))
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
    let serve = std::env::var(SERVE_ENV).unwrap_or_default();
    let served = match serve.as_str() {
        "vectors" => runtime.block_on(workerbus::serve(VectorsServer::new(VectorsWorker))),
        "echo-shared-memory" => runtime.block_on(workerbus::serve_with_options(
            EchoServer::new(EchoWorker::in_process()),
            ServeOptions::new().shared_memory_from(Some(SHARED_MEMORY_FROM)),
        )),
        _ => runtime.block_on(workerbus::serve(EchoServer::new(EchoWorker::in_process()))),
    };
    served.expect("serving the benchmark's worker");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baselines::MpscEcho;

    #[tokio::test]
    async fn a_thread_worker_and_mpsc_make_the_floats_asked_for() {
        let worker = vectors_thread_worker().await.unwrap();
        let vectors = WorkerbusVectors::new(worker.channel());
        assert_eq!(vectors.make(16_384).await, fresh_vectors(16_384));
        assert!(vectors.make(0).await.is_empty());
        worker.shutdown().await;
        let mpsc = MpscEcho::start();
        assert_eq!(mpsc.make(16_384).await, fresh_vectors(16_384));
    }
}
