//! Two helpers every part of the runtime uses: a lock that outlives a
//! panic of whoever held it, and a wait on a `Notify` until a condition
//! holds.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Locks `mutex`, whether or not a thread panicked holding it: the
/// runtime's locks guard plain data, which every holder leaves whole.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until `ready` gives a value, asking again each time `notify` wakes
/// its waiters. It listens before it asks, so a change made between the
/// asking and the waiting is not missed.
pub(crate) async fn wait_for<T>(notify: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        changed.await;
    }
}

/// Waits until `done` holds, as [`wait_for`] does.
pub(crate) async fn wait_until(notify: &Notify, mut done: impl FnMut() -> bool) {
    wait_for(notify, || done().then_some(())).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_lock_outlives_a_panic_of_its_holder() {
        let mutex = Arc::new(Mutex::new(1));
        let held = Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(*lock(&mutex), 1);
    }

    #[tokio::test]
    async fn a_wait_sees_a_change_made_before_it_listened() {
        let notify = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        done.store(true, Ordering::SeqCst);
        // Nobody notifies: the condition already holds.
        wait_until(&notify, || done.load(Ordering::SeqCst)).await;

        let flag = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (notify, flag) = (Arc::clone(&notify), Arc::clone(&flag));
            tokio::spawn(async move { wait_until(&notify, || flag.load(Ordering::SeqCst)).await })
        };
        tokio::task::yield_now().await;
        flag.store(true, Ordering::SeqCst);
        notify.notify_waiters();
        waiter.await.unwrap();
    }
}
