//! A worker built from a different version of the Echo schema (build.rs
//! derives it from `proto/echo.proto` with `EchoRequest.delay_ms` widened to
//! 64 bits), for the schema-mismatch test.

use workerbus::{Context, Incoming, Status, StreamSender};

#[allow(missing_docs, dead_code, unreachable_pub)]
mod v2 {
    pub mod common {
        include!(concat!(env!("OUT_DIR"), "/v2/common.rs"));
    }
    pub mod echo {
        include!(concat!(env!("OUT_DIR"), "/v2/echo.rs"));
    }
}

use v2::common::Page;
use v2::echo::*;

struct Unchanged;

fn not_here() -> Status {
    Status::unimplemented("echo-worker-v2 answers nothing")
}

impl EchoHandler for Unchanged {
    async fn echo(&self, _: EchoRequest, _: &Context) -> Result<EchoReply, Status> {
        Err(not_here())
    }
    async fn fail(&self, _: FailRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn sleep(&self, _: SleepRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn observe(&self, _: ObserveRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn panic(&self, _: PanicRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn flaky(&self, _: FlakyRequest, _: &Context) -> Result<FlakyReply, Status> {
        Err(not_here())
    }
    async fn now(&self, _: (), _: &Context) -> Result<prost_types::Timestamp, Status> {
        Err(not_here())
    }
    async fn page(&self, _: Page, _: &Context) -> Result<Page, Status> {
        Err(not_here())
    }
    async fn stats(&self, _: (), _: &Context) -> Result<StatsReply, Status> {
        Err(not_here())
    }
    async fn exit(&self, _: ExitRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn headers(&self, _: HeadersRequest, _: &Context) -> Result<HeadersReply, Status> {
        Err(not_here())
    }

    async fn trace(&self, _: (), _: &Context) -> Result<TraceReply, Status> {
        Err(not_here())
    }
    async fn count(
        &self,
        _: CountRequest,
        _: StreamSender<CountReply>,
        _: &Context,
    ) -> Result<(), Status> {
        Err(not_here())
    }
    async fn progress(&self, _: ProgressRequest, _: &Context) -> Result<ProgressReply, Status> {
        Err(not_here())
    }
    async fn sum(&self, _: Incoming<SumRequest>, _: &Context) -> Result<SumReply, Status> {
        Err(not_here())
    }
    async fn note(&self, _: NoteRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn announce(&self, _: AnnounceRequest, _: &Context) -> Result<AnnounceReply, Status> {
        Err(not_here())
    }
    async fn chat(
        &self,
        _: Incoming<EchoRequest>,
        _: StreamSender<EchoReply>,
        _: &Context,
    ) -> Result<(), Status> {
        Err(not_here())
    }
    async fn hand_off(&self, _: HandOffRequest, _: &Context) -> Result<(), Status> {
        Err(not_here())
    }
    async fn hand_off_stream(
        &self,
        _: HandOffRequest,
        _: StreamSender<CountReply>,
        _: &Context,
    ) -> Result<(), Status> {
        Err(not_here())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    workerbus::serve(EchoServer::new(Unchanged)).await
}
