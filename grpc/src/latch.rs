//! [`Latch`]: a value set once, that tasks wait for (a call's refusal,
//! reported by its request stream, awaited beside the call).

use tokio::sync::watch;

pub(crate) struct Latch<T>(watch::Sender<Option<T>>);

impl<T: Clone> Latch<T> {
    pub(crate) fn new() -> Latch<T> {
        Latch(watch::channel(None).0)
    }

    /// Sets the value (the last one set wins) and wakes the waiters.
    pub(crate) fn set(&self, value: T) {
        self.0.send_replace(Some(value));
    }

    /// The value, once it is set.
    pub(crate) async fn wait(&self) -> T {
        let mut receiver = self.0.subscribe();
        // The latch holds the sender, so the wait ends only with a value.
        if let Ok(value) = receiver.wait_for(Option::is_some).await
            && let Some(value) = value.clone()
        {
            return value;
        }
        std::future::pending().await
    }
}
