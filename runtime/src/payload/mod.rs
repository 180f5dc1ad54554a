//! [`Payload`]: a message as a frame carries it, either encoded or as the
//! typed value itself, encoded only at an edge that needs bytes.
//!
//! Between two threads of one process (the thread driver, a
//! [`MemoryTransport`](crate::MemoryTransport)) a request and its response
//! travel as values: the generated client hands its request over as it is,
//! the generated server takes it back by its type, and the same for the
//! response. Nothing is encoded or decoded. Where bytes are needed (the
//! process driver's socket, the gRPC bridge, a middleware that asks) the
//! value is encoded there, straight into the buffer that carries it.

mod cell;
#[cfg(feature = "process")]
mod split;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use self::cell::Cell;
#[cfg(feature = "process")]
pub(crate) use self::split::SplitEncoder;

/// A message as a frame carries it: encoded, or the message itself.
///
/// A message whose struct takes at most 128 bytes (most do: a few strings,
/// byte fields, lists and numbers; what they hold is on the heap anyway) is
/// kept in a block of memory from a pool the process shares, so a payload
/// made from it takes no allocation of its own once the pool has blocks; a
/// larger one is boxed. Cloning a payload clones a message kept in a block,
/// whatever it holds (a list of a million strings is copied), and shares a
/// boxed one; [`into_shared`](Payload::into_shared) makes later clones
/// share it (a call that may be retried keeps a clone so);
/// whoever takes it back ([`Payload::decode`]) moves it out if nothing else
/// holds it, and clones it otherwise. Its encoded length is worked out
/// once, when it is made, and is what size limits count.
///
/// ```
/// use bytes::Bytes;
/// use workerbus::Payload;
///
/// // A message as a value: nothing is encoded yet.
/// let payload = Payload::message(String::from("hello"));
/// assert!(!payload.is_encoded());
/// assert_eq!(payload.len(), 7); // a protobuf string field: tag, length, bytes
///
/// // Its bytes, for an edge that needs them.
/// let bytes: Bytes = payload.to_bytes();
/// assert_eq!(&bytes[..], b"\x0a\x05hello");
///
/// // Taken back as its type: moved out, never decoded.
/// assert_eq!(payload.decode::<String>().unwrap(), "hello");
///
/// // Bytes are a payload too, and decode as any message.
/// let payload = Payload::from(bytes);
/// assert!(payload.is_encoded());
/// assert_eq!(payload.decode::<String>().unwrap(), "hello");
/// ```
#[derive(Clone, Default)]
pub struct Payload {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Encoded(Bytes),
    Value { len: usize, value: Held },
}

/// Where a payload holds its message.
#[derive(Clone)]
enum Held {
    /// A small message, in a cell from the pool.
    Cell(Cell),
    /// A larger message, boxed and shared by clones.
    Shared(Arc<dyn Value>),
}

impl Held {
    fn get(&self) -> &dyn Value {
        match self {
            Held::Cell(value) => value.get(),
            Held::Shared(value) => &**value,
        }
    }
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Encoded(Bytes::new())
    }
}

/// A message behind a payload, with what encoding it needs: the object-safe
/// face of `prost::Message`.
trait Value: Any + Send + Sync {
    /// Appends the message's encoding to `dst`.
    fn encode_into(&self, dst: &mut BytesMut);
    /// Appends the message's encoding to any buffer.
    fn encode_dyn(&self, dst: &mut dyn BufMut);
    /// Appends the message's encoding to a write buffer, its large `bytes`
    /// fields cut out.
    #[cfg(feature = "process")]
    fn encode_split(&self, dst: &mut SplitEncoder<'_>);
    /// The message's encoding, in a buffer of its own (a pooled one if it
    /// is large).
    fn to_bytes(&self) -> Bytes;
    fn type_name(&self) -> &'static str;
    /// A copy of the message in a cell of its own (only called on one that
    /// is in a cell).
    fn clone_cell(&self) -> Cell;
}

impl<M: Message + Clone + 'static> Value for M {
    fn encode_into(&self, dst: &mut BytesMut) {
        self.encode_raw(dst);
    }

    fn encode_dyn(&self, mut dst: &mut dyn BufMut) {
        self.encode_raw(&mut dst);
    }

    #[cfg(feature = "process")]
    fn encode_split(&self, dst: &mut SplitEncoder<'_>) {
        self.encode_raw(dst);
    }

    fn to_bytes(&self) -> Bytes {
        crate::buffers::encode(self)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<M>()
    }

    fn clone_cell(&self) -> Cell {
        Cell::new(self.clone()).unwrap_or_else(|_| unreachable!("a message in a cell fits one"))
    }
}

impl Payload {
    /// An empty payload: the encoding of a message whose fields all have
    /// their default values.
    pub const fn new() -> Payload {
        Payload {
            repr: Repr::Encoded(Bytes::new()),
        }
    }

    /// A message as a value, encoded only where bytes are needed: in a
    /// pooled cell if it is small, boxed otherwise.
    pub fn message<M: Message + Clone + 'static>(message: M) -> Payload {
        let len = message.encoded_len();
        let value = match Cell::new(message) {
            Ok(value) => Held::Cell(value),
            Err(message) => Held::Shared(Arc::new(message)),
        };
        Payload {
            repr: Repr::Value { len, value },
        }
    }

    /// The same payload, its message (if it is a small one, in a cell) boxed
    /// so that its clones share it rather than copy it: for a payload that
    /// is cloned more than once, such as a request that may be sent again.
    ///
    /// ```
    /// use workerbus::Payload;
    ///
    /// let payload = Payload::message(vec![7u8; 4096]).into_shared();
    /// let kept = payload.clone(); // shares the 4 KiB, copies nothing
    /// assert_eq!(payload.decode::<Vec<u8>>().unwrap(), vec![7u8; 4096]);
    /// assert_eq!(kept.len(), 4096 + 3);
    /// ```
    pub fn into_shared(self) -> Payload {
        match self.repr {
            Repr::Value {
                len,
                value: Held::Cell(cell),
            } => Payload {
                repr: Repr::Value {
                    len,
                    value: Held::Shared(cell.into_shared()),
                },
            },
            repr => Payload { repr },
        }
    }

    /// The length of the message's encoding, in bytes: what size limits and
    /// flow control count.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Encoded(bytes) => bytes.len(),
            Repr::Value { len, .. } => *len,
        }
    }

    /// Whether the encoding is empty (a message of default values).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is bytes (received from a peer, or given as bytes)
    /// rather than a message value.
    pub fn is_encoded(&self) -> bool {
        matches!(self.repr, Repr::Encoded(_))
    }

    /// The Rust type of the message value, or `None` for bytes.
    pub fn message_type(&self) -> Option<&'static str> {
        match &self.repr {
            Repr::Encoded(_) => None,
            Repr::Value { value, .. } => Some(value.get().type_name()),
        }
    }

    /// The encoding: the bytes themselves (a cheap clone), or the value
    /// encoded into a buffer of its own.
    pub fn to_bytes(&self) -> Bytes {
        match &self.repr {
            Repr::Encoded(bytes) => bytes.clone(),
            Repr::Value { value, .. } => value.get().to_bytes(),
        }
    }

    /// The encoding, as [`to_bytes`](Payload::to_bytes) but without a clone
    /// of bytes.
    pub fn into_bytes(self) -> Bytes {
        match self.repr {
            Repr::Encoded(bytes) => bytes,
            Repr::Value { value, .. } => value.get().to_bytes(),
        }
    }

    /// Appends the encoding to `dst` (e.g. an encoder's buffer), with no
    /// buffer of its own in between.
    pub fn encode_to(&self, dst: &mut impl BufMut) {
        match &self.repr {
            Repr::Encoded(bytes) => dst.put_slice(bytes),
            Repr::Value { value, .. } => value.get().encode_dyn(dst),
        }
    }

    /// Appends the encoding to `dst`: [`encode_to`](Payload::encode_to)
    /// without its indirection, for the runtime's own write buffers.
    pub(crate) fn encode_into(&self, dst: &mut BytesMut) {
        match &self.repr {
            Repr::Encoded(bytes) => dst.extend_from_slice(bytes),
            Repr::Value { value, .. } => value.get().encode_into(dst),
        }
    }

    /// Appends the encoding to a connection's write buffer, except for a
    /// message value's large `bytes` fields, which `dst` notes to be
    /// written from their own buffers.
    #[cfg(feature = "process")]
    pub(crate) fn encode_split(&self, dst: &mut SplitEncoder<'_>) {
        match &self.repr {
            Repr::Encoded(bytes) => dst.put_slice(bytes),
            Repr::Value { value, .. } => value.get().encode_split(dst),
        }
    }

    /// The bytes, if this is bytes.
    #[cfg(feature = "process")]
    pub(crate) fn as_encoded(&self) -> Option<&Bytes> {
        match &self.repr {
            Repr::Encoded(bytes) => Some(bytes),
            Repr::Value { .. } => None,
        }
    }

    /// The message as an `M`: a value of that type moved out (cloned if a
    /// clone of this payload still holds it), bytes decoded. A value of
    /// another type is encoded and its bytes decoded, as a peer would.
    pub fn decode<M: Message + Default + Clone + 'static>(self) -> Result<M, prost::DecodeError> {
        match self.repr {
            Repr::Encoded(bytes) => M::decode(bytes),
            Repr::Value {
                value: Held::Cell(value),
                ..
            } => match value.take::<M>() {
                Ok(message) => Ok(message),
                Err(value) => M::decode(value.get().to_bytes()),
            },
            Repr::Value {
                value: Held::Shared(value),
                ..
            } => {
                if !(&*value as &dyn Any).is::<M>() {
                    return M::decode(value.to_bytes());
                }
                let any: Arc<dyn Any + Send + Sync> = value;
                let shared = any.downcast::<M>().expect("the value's type was checked");
                Ok(Arc::try_unwrap(shared).unwrap_or_else(|shared| M::clone(&shared)))
            }
        }
    }
}

// A payload crosses threads, in frames and between tasks.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Payload>();
};

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Payload {
        Payload {
            repr: Repr::Encoded(bytes),
        }
    }
}

impl From<&'static [u8]> for Payload {
    fn from(bytes: &'static [u8]) -> Payload {
        Payload::from(Bytes::from_static(bytes))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::from(Bytes::from(bytes))
    }
}

/// Payloads are equal when their encodings are: a value is encoded to be
/// compared (meant for tests).
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::Encoded(a), Repr::Encoded(b)) => a == b,
            _ => self.len() == other.len() && self.to_bytes() == other.to_bytes(),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Encoded(bytes) => fmt::Debug::fmt(bytes, f),
            Repr::Value { len, value } => f
                .debug_struct("Payload")
                .field("message", &value.get().type_name())
                .field("len", len)
                .finish(),
        }
    }
}

/// Implements `prost::Message` for a test's message type, whose fields
/// are what the test watches rather than what travels: it encodes as an
/// empty message (running `encode` first, if given) and decodes by skipping
/// every field.
#[cfg(test)]
macro_rules! test_message {
    ($ty:ty) => {
        $crate::payload::test_message!($ty, |_message| {});
    };
    ($ty:ty, |$message:ident| $encode:block) => {
        impl prost::Message for $ty {
            fn encode_raw(&self, _: &mut impl bytes::BufMut) {
                let $message = self;
                $encode
            }
            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: prost::encoding::WireType,
                buf: &mut impl bytes::Buf,
                ctx: prost::encoding::DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                prost::encoding::skip_field(wire_type, tag, buf, ctx)
            }
            fn encoded_len(&self) -> usize {
                0
            }
            fn clear(&mut self) {}
        }
    };
}
#[cfg(test)]
pub(crate) use test_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_taken_back_as_it_was_sent_and_copied_only_if_shared() {
        let data = vec![1u8; 4096];
        let at = data.as_ptr();
        let taken: Vec<u8> = Payload::message(data).decode().unwrap();
        assert_eq!(taken.as_ptr(), at, "an unshared value is moved out");

        // A small message is copied by a clone, and each is moved out.
        let payload = Payload::message(taken);
        let kept = payload.clone();
        let original: Vec<u8> = payload.decode().unwrap();
        assert_eq!(original.as_ptr(), at, "the original is moved out");
        let copy: Vec<u8> = kept.decode().unwrap();
        assert_ne!(copy.as_ptr(), at, "a clone is a copy");
        assert_eq!(copy, original);

        // Once shared, clones share it: the first taken is copied, the
        // last moved out.
        let payload = Payload::message(original).into_shared();
        assert!(!payload.is_encoded());
        let kept = payload.clone();
        let copy: Vec<u8> = payload.decode().unwrap();
        assert_ne!(copy.as_ptr(), at, "a shared value is copied");
        assert_eq!(copy, vec![1u8; 4096]);
        let original: Vec<u8> = kept.decode().unwrap();
        assert_eq!(original.as_ptr(), at, "the last holder moves it out");
    }

    /// A message whose struct is larger than a cell: six strings.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Large {
        #[prost(string, tag = "1")]
        a: String,
        #[prost(string, tag = "2")]
        b: String,
        #[prost(string, tag = "3")]
        c: String,
        #[prost(string, tag = "4")]
        d: String,
        #[prost(string, tag = "5")]
        e: String,
        #[prost(string, tag = "6")]
        f: String,
    }

    #[test]
    fn a_message_too_large_for_a_cell_is_boxed_and_shared() {
        assert!(size_of::<Large>() > 128);
        let message = Large {
            f: "last".into(),
            ..Large::default()
        };
        let payload = Payload::message(message.clone());
        assert!(matches!(
            payload.repr,
            Repr::Value {
                value: Held::Shared(_),
                ..
            }
        ));
        let kept = payload.clone();
        assert_eq!(kept.to_bytes(), message.encode_to_vec());
        assert_eq!(payload.decode::<Large>().unwrap(), message);
        assert_eq!(kept.decode::<Large>().unwrap(), message);
    }

    #[test]
    fn a_value_of_another_type_decodes_from_its_encoding() {
        // A `string` and a `bytes` field 1 share their encoding.
        let payload = Payload::message(String::from("hello"));
        let bytes: Vec<u8> = payload.decode().unwrap();
        assert_eq!(bytes, b"hello");
        // And one that does not decode says so.
        let payload = Payload::message(vec![0xffu8, 0xfe]);
        assert!(payload.decode::<String>().is_err());
    }

    #[test]
    fn every_way_to_encode_a_value_gives_the_same_bytes_and_its_length() {
        let _turn = crate::sync::lock(&crate::buffers::SERIAL);
        for len in [0, 10, 20 << 10, 200 << 10] {
            let message = vec![3u8; len];
            let expected = Bytes::from(message.encode_to_vec());
            let payload = Payload::message(message);
            assert_eq!(payload.len(), expected.len());
            assert_eq!(payload.is_empty(), expected.is_empty());
            assert_eq!(payload.to_bytes(), expected);
            let mut into = BytesMut::new();
            payload.encode_into(&mut into);
            assert_eq!(into, expected);
            let mut to = Vec::new();
            payload.encode_to(&mut to);
            assert_eq!(to, expected);
            assert_eq!(payload, Payload::from(expected.clone()));
            assert_eq!(payload.message_type(), Some("alloc::vec::Vec<u8>"));
            assert_eq!(payload.into_bytes(), expected);
        }
    }

    #[test]
    fn bytes_are_a_payload_that_decodes_without_a_copy() {
        let bytes = Bytes::from(vec![0x0a, 0x02, b'h', b'i']);
        let payload = Payload::from(bytes.clone());
        assert!(payload.is_encoded());
        assert_eq!(payload.message_type(), None);
        assert_eq!(payload.len(), 4);
        assert_eq!(payload.to_bytes().as_ptr(), bytes.as_ptr());
        let decoded: Bytes = payload.decode().unwrap();
        assert_eq!(decoded, &b"hi"[..]);
        assert_eq!(decoded.as_ptr(), bytes[2..].as_ptr());
        assert_eq!(format!("{:?}", Payload::new()), "b\"\"");
        assert!(format!("{:?}", Payload::message(())).contains("()"));
    }
}
