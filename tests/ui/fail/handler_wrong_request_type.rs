//! A handler method whose request type is not the schema's.

use workerbus::{Context, Status};
use workerbus_tests::pb::echo::MissingHandler;

struct Wrong;

impl MissingHandler for Wrong {
    async fn nothing(&self, _request: String, _cx: &Context) -> Result<(), Status> {
        Ok(())
    }
}

fn main() {}
