//! A handler whose future is not `Send`: workers run handlers as tasks.

use std::rc::Rc;

use workerbus::{Context, Status};
use workerbus_tests::pb::echo::MissingHandler;

struct NotSend;

impl MissingHandler for NotSend {
    async fn nothing(&self, _request: (), _cx: &Context) -> Result<(), Status> {
        let shared = Rc::new(1);
        tokio::task::yield_now().await;
        drop(shared);
        Ok(())
    }
}

fn main() {}
