//! The executor hyper spawns its per-call tasks on: Tokio's, with each
//! future boxed first. hyper's futures are large (a request's body pipe, a
//! server stream with its handler's future inside), and Tokio moves an
//! unboxed future into its task more than once; boxed, it moves a pointer.

use std::future::Future;

/// Spawns on the current Tokio runtime, boxed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}
