//! Runnable workerbus examples: see the `[[example]]` targets.
