//! A handler that does not implement every method of its service.

use workerbus::{Context, Status};
use workerbus_tests::pb::echo::{EchoHandler, EchoReply, EchoRequest};

struct Partial;

impl EchoHandler for Partial {
    async fn echo(&self, request: EchoRequest, _cx: &Context) -> Result<EchoReply, Status> {
        Ok(EchoReply { text: request.text, data: request.data })
    }
}

fn main() {}
