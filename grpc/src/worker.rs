//! `workerbus.v1.Worker` (`grpc/proto/workerbus/v1/worker.proto`): what a
//! server answers besides the services it serves: what it serves
//! (`Describe`), the workers' events (`Subscribe`) and their health
//! (`Health`). Its messages are written in code, like the core's control
//! messages, so that the crate needs no build step.

use bytes::Bytes;

/// The service's path prefix.
pub(crate) const PREFIX: &str = "/workerbus.v1.Worker/";
/// What the server serves, with fingerprints.
pub(crate) const DESCRIBE: &str = "/workerbus.v1.Worker/Describe";
/// The events of one events service, as a stream.
pub(crate) const SUBSCRIBE: &str = "/workerbus.v1.Worker/Subscribe";
/// The health report of the worker serving a service.
pub(crate) const HEALTH: &str = "/workerbus.v1.Worker/Health";

/// The message name of the core's health report, which a channel's
/// `health()` sends and the client answers with [`HEALTH`].
pub(crate) const CORE_HEALTH: &str = "$workerbus.health";

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub(crate) service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Event {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) payload: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthRequest {
    #[prost(string, tag = "1")]
    pub(crate) service: String,
}

/// The core's health report: the same fields, with the same tags, as the
/// answer to its `$workerbus.health`, so the client passes it on as it is.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthReport {
    #[prost(uint64, tag = "1")]
    pub(crate) memory_bytes: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) processed: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) uptime_ms: u64,
    #[prost(uint32, tag = "4")]
    pub(crate) running: u32,
    #[prost(uint32, tag = "5")]
    pub(crate) stalled: u32,
}

impl From<workerbus::HealthReport> for HealthReport {
    fn from(report: workerbus::HealthReport) -> HealthReport {
        HealthReport {
            memory_bytes: report.memory_bytes,
            processed: report.processed,
            uptime_ms: u64::try_from(report.uptime.as_millis()).unwrap_or(u64::MAX),
            running: report.running,
            stalled: report.stalled,
        }
    }
}
