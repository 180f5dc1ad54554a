//! Flow-control windows, in messages and in bytes: how much a stream's
//! sender may still send, and when its receiver grants more.
//!
//! Every stream of a call (the host's request stream, the worker's response
//! stream) and every connection's events have a window, held by the
//! receiver. The sender starts with [`Window::DEFAULT`] (the protocol's
//! implicit grant, `PROTOCOL.md` 5.10), sends while it has a message's credit
//! and any byte credit left, and waits otherwise; the receiver grants more
//! with `CREDIT` frames as its application takes messages. A message larger
//! than the byte credit left may still go (a message is never split), so a
//! receiver holds at most its window's bytes plus one message:
//!
//! ```text
//!  sender credit  ──ITEM (n bytes)──▶  receiver holds   ──taken──▶ application
//!   messages - 1                        messages + 1
//!   bytes - n (may go below 0)          bytes + n
//!        ◀────────── CREDIT {count, bytes} ─── once half a window is free
//! ```

use std::fmt;

/// How much a receiver lets its sender send ahead: messages and bytes not
/// yet taken by the receiving application.
///
/// The default is 32 messages ([`STREAM_WINDOW`](crate::STREAM_WINDOW)) and
/// 4 MiB ([`STREAM_WINDOW_BYTES`]). A receiver holds at most its window of
/// unread messages per stream, and in bytes its window plus one message
/// (a message larger than the byte credit left is still sent, whole).
///
/// ```
/// use workerbus::{ChannelOptions, Window};
///
/// // Room for 8 messages or 64 MiB of a stream, whichever is reached first.
/// let options = ChannelOptions::new().window(Window::new(8, 64 << 20));
/// # let _ = options;
/// assert_eq!(Window::DEFAULT.messages(), 32);
/// assert_eq!(Window::DEFAULT.bytes(), 4 << 20);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Window {
    messages: u32,
    bytes: u32,
}

/// The bytes of a default window ([`Window::DEFAULT`]): 4 MiB.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

impl Window {
    /// The window every sender starts with: 32 messages and 4 MiB.
    pub const DEFAULT: Window = Window {
        messages: crate::frame::STREAM_WINDOW,
        bytes: STREAM_WINDOW_BYTES,
    };

    /// A window of `messages` messages and `bytes` bytes (each at least 1).
    ///
    /// A window smaller than the default takes effect once the sender has
    /// spent its initial grant: until then a receiver holds up to the
    /// default. A larger one takes effect once the receiving application
    /// has taken its first message.
    pub const fn new(messages: u32, bytes: u32) -> Window {
        Window {
            messages: if messages == 0 { 1 } else { messages },
            bytes: if bytes == 0 { 1 } else { bytes },
        }
    }

    /// Messages a sender may send ahead.
    pub const fn messages(&self) -> u32 {
        self.messages
    }

    /// Bytes a sender may send ahead (plus one message).
    pub const fn bytes(&self) -> u32 {
        self.bytes
    }
}

impl Default for Window {
    fn default() -> Window {
        Window::DEFAULT
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Window({} messages, {} bytes)",
            self.messages, self.bytes
        )
    }
}

/// The sender's side: the credit it has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendCredit {
    messages: u32,
    /// Below zero after a message larger than what was left.
    bytes: i64,
}

impl SendCredit {
    /// The credit every sender starts with.
    pub(crate) fn new() -> SendCredit {
        SendCredit {
            messages: Window::DEFAULT.messages,
            bytes: i64::from(Window::DEFAULT.bytes),
        }
    }

    /// Whether a message may be sent now, whatever its size.
    pub(crate) fn ready(&self) -> bool {
        self.messages > 0 && self.bytes > 0
    }

    /// Spends the credit of a message of `size` bytes (after [`ready`]).
    ///
    /// [`ready`]: SendCredit::ready
    pub(crate) fn spend(&mut self, size: usize) {
        self.messages -= 1;
        self.bytes -= i64::try_from(size).unwrap_or(i64::MAX);
    }

    /// Adds what a `CREDIT` frame grants; both add up, saturating.
    pub(crate) fn grant(&mut self, messages: u32, bytes: u32) {
        self.messages = self.messages.saturating_add(messages);
        self.bytes = self
            .bytes
            .saturating_add(i64::from(bytes))
            .min(i64::from(u32::MAX));
    }
}

impl Default for SendCredit {
    fn default() -> SendCredit {
        SendCredit::new()
    }
}

/// Why a receiver refused a message: the sender had no credit for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overrun {
    Messages,
    Bytes,
}

impl Overrun {
    /// What was overrun, for an error: `what` (e.g. "items"), or the bytes
    /// of them.
    pub(crate) fn of(self, what: &str) -> String {
        match self {
            Overrun::Messages => what.to_owned(),
            Overrun::Bytes => format!("bytes of {what}"),
        }
    }
}

/// The receiver's side: what it granted, what it holds, and when to grant
/// more.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReceiveWindow {
    window: Window,
    /// The sender's credit, as the receiver counts it: granted minus
    /// received.
    credit_messages: i64,
    credit_bytes: i64,
    /// Received and not yet taken by the application.
    held_messages: i64,
    held_bytes: i64,
}

impl ReceiveWindow {
    /// A receiver that keeps its sender to `window`, starting from the
    /// protocol's implicit grant.
    pub(crate) fn new(window: Window) -> ReceiveWindow {
        ReceiveWindow {
            window,
            credit_messages: i64::from(Window::DEFAULT.messages),
            credit_bytes: i64::from(Window::DEFAULT.bytes),
            held_messages: 0,
            held_bytes: 0,
        }
    }

    /// Counts a message of `size` bytes received; refused if the sender had
    /// no credit for it.
    pub(crate) fn receive(&mut self, size: usize) -> Result<(), Overrun> {
        if self.credit_messages < 1 {
            return Err(Overrun::Messages);
        }
        if self.credit_bytes < 1 {
            return Err(Overrun::Bytes);
        }
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.credit_messages -= 1;
        self.credit_bytes = self.credit_bytes.saturating_sub(size);
        self.held_messages += 1;
        self.held_bytes = self.held_bytes.saturating_add(size);
        Ok(())
    }

    /// Counts a message of `size` bytes taken by the application; returns
    /// the credit to grant, `(messages, bytes)`, once half a window of
    /// either is free.
    pub(crate) fn take(&mut self, size: usize) -> Option<(u32, u32)> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.held_messages -= 1;
        self.held_bytes = self.held_bytes.saturating_sub(size);
        // What the sender could still send, on top of what is held, is
        // kept at the window.
        let messages = i64::from(self.window.messages) - self.held_messages - self.credit_messages;
        let bytes = i64::from(self.window.bytes) - self.held_bytes - self.credit_bytes;
        let half = |of: u32| i64::from(of.div_ceil(2));
        if messages < half(self.window.messages) && bytes < half(self.window.bytes) {
            return None;
        }
        let messages = u32::try_from(messages.max(0)).unwrap_or(u32::MAX);
        let bytes = u32::try_from(bytes.max(0)).unwrap_or(u32::MAX);
        self.credit_messages += i64::from(messages);
        self.credit_bytes += i64::from(bytes);
        Some((messages, bytes))
    }

    /// Messages held (received and not taken).
    #[cfg(test)]
    fn held(&self) -> (i64, i64) {
        (self.held_messages, self.held_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A receiver and a sender that follow the rules, with the messages in
    /// flight between them.
    struct Pair {
        send: SendCredit,
        receive: ReceiveWindow,
    }

    impl Pair {
        fn new(window: Window) -> Pair {
            Pair {
                send: SendCredit::new(),
                receive: ReceiveWindow::new(window),
            }
        }

        /// Sends messages of `size` while the sender may; returns how many.
        fn send_all(&mut self, size: usize) -> usize {
            let mut sent = 0;
            while self.send.ready() {
                self.send.spend(size);
                self.receive.receive(size).unwrap();
                sent += 1;
            }
            sent
        }

        fn take(&mut self, size: usize) {
            if let Some((messages, bytes)) = self.receive.take(size) {
                self.send.grant(messages, bytes);
            }
        }
    }

    #[test]
    fn small_messages_are_bounded_by_count_and_credited_half_a_window_at_a_time() {
        let mut pair = Pair::new(Window::DEFAULT);
        assert_eq!(pair.send_all(64), 32);
        for _ in 0..15 {
            pair.take(64);
            assert!(!pair.send.ready());
        }
        pair.take(64);
        assert_eq!(pair.send_all(64), 16);
        assert_eq!(pair.receive.held().0, 32);
    }

    #[test]
    fn large_messages_are_bounded_by_bytes_plus_one_message() {
        let mut pair = Pair::new(Window::DEFAULT);
        // 4 MiB of credit: four of 1 MiB, then the sender waits.
        assert_eq!(pair.send_all(MIB), 4);
        // A 16 MiB message goes alone, and nothing after it.
        let mut pair = Pair::new(Window::DEFAULT);
        assert_eq!(pair.send_all(16 * MIB), 1);
        assert_eq!(pair.receive.held(), (1, 16 * MIB as i64));
        // Once taken, the receiver is back to its window.
        pair.take(16 * MIB);
        assert_eq!(pair.send_all(16 * MIB), 1);
        for _ in 0..100 {
            pair.take(16 * MIB);
            assert_eq!(pair.send_all(16 * MIB), 1);
            let (_, held) = pair.receive.held();
            assert!(held <= 4 * MIB as i64 + 16 * MIB as i64);
        }
    }

    #[test]
    fn a_message_past_the_credit_is_an_overrun() {
        let mut receive = ReceiveWindow::new(Window::DEFAULT);
        receive.receive(4 * MIB).unwrap();
        assert_eq!(receive.receive(1), Err(Overrun::Bytes));
        let mut receive = ReceiveWindow::new(Window::DEFAULT);
        for _ in 0..32 {
            receive.receive(0).unwrap();
        }
        assert_eq!(receive.receive(0), Err(Overrun::Messages));
    }

    #[test]
    fn a_larger_window_is_granted_once_the_first_message_is_taken() {
        let mut pair = Pair::new(Window::new(64, 64 * MIB as u32));
        assert_eq!(pair.send_all(MIB), 4);
        pair.take(MIB);
        // 64 MiB less the three still held.
        assert_eq!(pair.send_all(MIB), 61);
        assert_eq!(pair.receive.held(), (64, 64 * MIB as i64));
    }

    #[test]
    fn a_smaller_window_holds_once_the_initial_grant_is_spent() {
        let mut pair = Pair::new(Window::new(4, MIB as u32));
        assert_eq!(pair.send_all(1024), 32);
        for _ in 0..32 {
            pair.take(1024);
        }
        // Credited back only up to the smaller window.
        assert_eq!(pair.send_all(1024), 4);
        for _ in 0..10 {
            pair.take(1024);
            pair.take(1024);
            assert_eq!(pair.send_all(1024), 2);
            assert!(pair.receive.held().0 <= 4);
        }
    }

    #[test]
    fn grants_saturate() {
        let mut send = SendCredit::new();
        send.grant(u32::MAX, u32::MAX);
        send.grant(u32::MAX, u32::MAX);
        assert!(send.ready());
        send.spend(usize::MAX);
        assert!(!send.ready());
    }
}
