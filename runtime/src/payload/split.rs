//! [`SplitEncoder`]: a message encoded into a connection's write buffer,
//! except for its large `bytes` fields, which are cut out to be written
//! from their own buffers.
//!
//! prost writes a `bytes` field held as [`Bytes`] with `BufMut::put`,
//! handing over a clone of it: an encoder that takes that clone rather
//! than copying its contents saves a copy of every large field (a 1 MiB
//! echo's data, an embedding batch's vectors kept as `bytes`) on its way
//! to the socket, which then writes it straight from where the message
//! holds it, in the same vectored write as the bytes around it.

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A `BufMut` over a write buffer that leaves out large `Bytes`, noting
/// each with where it goes.
pub(crate) struct SplitEncoder<'a> {
    out: &'a mut BytesMut,
    /// Each field cut out, with the length `out` had when it was: it goes
    /// between `out`'s bytes before that and after it.
    cuts: &'a mut Vec<(usize, Bytes)>,
    /// The least a field must hold to be cut out: below it, a copy costs
    /// less than a buffer of its own to write.
    min: usize,
}

impl<'a> SplitEncoder<'a> {
    /// An encoder appending to `out`, noting fields of `min` bytes or more
    /// in `cuts`.
    pub(crate) fn new(
        out: &'a mut BytesMut,
        cuts: &'a mut Vec<(usize, Bytes)>,
        min: usize,
    ) -> SplitEncoder<'a> {
        SplitEncoder { out, cuts, min }
    }
}

/// Whether `T` is `Bytes`, whose `copy_to_bytes` takes no copy. Told by
/// its name, as `T` need not be `'static`: a type of the same name from
/// another version of the crate would only be copied once, as it is
/// otherwise.
fn is_bytes<T>() -> bool {
    std::any::type_name::<T>() == std::any::type_name::<Bytes>()
}

/// Forwards `BufMut` methods that write a fixed-width value to `out`'s own:
/// prost writes a packed field a value at a time, and the defaults would
/// go through `put_slice` for each.
macro_rules! forward_put {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            #[inline]
            fn $method(&mut self, n: $ty) {
                self.out.$method(n);
            }
        )*
    };
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `BytesMut`'s, which keeps the trait's
// contract; `put` only appends through its safe methods.
unsafe impl BufMut for SplitEncoder<'_> {
    #[inline]
    fn remaining_mut(&self) -> usize {
        self.out.remaining_mut()
    }

    #[allow(unsafe_code)]
    #[inline]
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller keeps `advance_mut`'s contract, which `out`'s
        // own has.
        unsafe { self.out.advance_mut(cnt) }
    }

    #[inline]
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.out.chunk_mut()
    }

    #[inline]
    fn put_slice(&mut self, src: &[u8]) {
        self.out.extend_from_slice(src);
    }

    forward_put!(
        put_u8(u8),
        put_u32_le(u32),
        put_u64_le(u64),
        put_i32_le(i32),
        put_i64_le(i64),
        put_f32_le(f32),
        put_f64_le(f64),
    );

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        if src.remaining() >= self.min && is_bytes::<T>() {
            let len = src.remaining();
            self.cuts.push((self.out.len(), src.copy_to_bytes(len)));
        } else {
            self.out.put(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct Batch {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(bytes = "bytes", tag = "2")]
        first: Bytes,
        #[prost(bytes = "vec", tag = "3")]
        copied: Vec<u8>,
        #[prost(bytes = "bytes", tag = "4")]
        second: Bytes,
        #[prost(bytes = "bytes", tag = "5")]
        small: Bytes,
    }

    /// `out` with each cut put back where it was taken from.
    fn joined(out: &[u8], cuts: &[(usize, Bytes)]) -> Vec<u8> {
        let mut whole = Vec::new();
        let mut at = 0;
        for (cut_at, bytes) in cuts {
            whole.extend_from_slice(&out[at..*cut_at]);
            whole.extend_from_slice(bytes);
            at = *cut_at;
        }
        whole.extend_from_slice(&out[at..]);
        whole
    }

    #[test]
    fn large_bytes_fields_are_cut_out_uncopied_and_the_rest_is_encoded_around_them() {
        let batch = Batch {
            name: "vectors".into(),
            first: Bytes::from(vec![1u8; 20_000]),
            copied: vec![2u8; 20_000],
            second: Bytes::from(vec![3u8; 16_384]),
            small: Bytes::from(vec![4u8; 100]),
        };
        let mut out = BytesMut::from(&b"head"[..]);
        let mut cuts = Vec::new();
        batch.encode_raw(&mut SplitEncoder::new(&mut out, &mut cuts, 16_384));

        assert_eq!(cuts.len(), 2, "the two large `Bytes` fields");
        assert_eq!(cuts[0].1.as_ptr(), batch.first.as_ptr(), "not copied");
        assert_eq!(cuts[1].1.as_ptr(), batch.second.as_ptr(), "not copied");
        // What stayed in the buffer: the head, the name, the `Vec` field
        // (a slice, copied as before), the small field, and every key and
        // length.
        assert!(
            out.len() < 20_000 + 300,
            "{} bytes in the buffer",
            out.len()
        );
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&batch.encode_to_vec());
        assert_eq!(joined(&out, &cuts), expected);
    }

    #[test]
    fn without_a_large_field_a_message_is_encoded_whole() {
        let batch = Batch {
            name: "small".into(),
            first: Bytes::from_static(b"a few bytes"),
            ..Batch::default()
        };
        let mut out = BytesMut::new();
        let mut cuts = Vec::new();
        batch.encode_raw(&mut SplitEncoder::new(&mut out, &mut cuts, 16_384));
        assert!(cuts.is_empty());
        assert_eq!(out, batch.encode_to_vec());
    }
}
