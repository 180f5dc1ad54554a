//! Per-call metadata: [`Metadata`], the key/value pairs a call carries beside
//! its message, and [`ResponseMetadata`], where a caller finds what the
//! handler answered with.
//!
//! Keys and values follow gRPC's rules, so that metadata crosses to gRPC as
//! it is: a key is 1 or more of `0-9 a-z - _ .`, and does not start with
//! `grpc-` (reserved for gRPC itself); a key ending in `-bin` takes any
//! bytes, any other key printable ASCII (space to `~`). A key may appear more
//! than once; entries keep their order. A call's metadata is at most
//! [`MAX_METADATA_LEN`] bytes.
//!
//! A `Metadata` is kept as it travels (`docs/PROTOCOL.md`, section 4): one
//! buffer, cloned by reference count and read where it arrived, so that a
//! call without metadata costs nothing and one with it costs one buffer.

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::name::MethodName;
use crate::sync::lock;

/// The most bytes of metadata one call may carry each way: the sum over its
/// entries of 4 bytes plus the key's and the value's lengths (what they
/// take on the wire). A call whose metadata is larger fails with
/// [`Error::TooLarge`] naming the key that passed the limit.
pub const MAX_METADATA_LEN: usize = 8 * 1024;

/// What each entry takes besides its key and value: their two `u16` lengths.
const ENTRY_OVERHEAD: usize = 4;

/// Key/value pairs sent with a call (request metadata), or with its answer
/// (response metadata).
///
/// ```
/// use workerbus::Metadata;
///
/// let mut metadata = Metadata::new();
/// metadata.insert("tenant", "acme")?;
/// metadata.insert("token-bin", [0xde, 0xad])?;
/// assert_eq!(metadata.get_str("tenant"), Some("acme"));
/// assert_eq!(metadata.get("token-bin"), Some(&[0xde, 0xad][..]));
///
/// // gRPC's rules: lowercase keys, `grpc-` reserved, text values printable.
/// assert!(metadata.insert("Tenant", "acme").is_err());
/// assert!(metadata.insert("grpc-timeout", "1S").is_err());
/// assert!(metadata.insert("note", "line\nbreak").is_err());
/// # Ok::<(), workerbus::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// The entries as they travel: `key_len: u16`, key, `value_len: u16`,
    /// value, each. Always well formed and valid, and never empty: no
    /// entries are `None`, so that a call without metadata carries one
    /// word for it.
    block: Option<Arc<Bytes>>,
}

impl Metadata {
    /// No entries.
    pub const fn new() -> Metadata {
        Metadata { block: None }
    }

    /// Adds an entry (after any with the same key), checking the key and
    /// the value against gRPC's rules; fails with
    /// [`Error::InvalidMetadata`] naming the key and what is wrong with it.
    /// (The size of a call's metadata is checked when the call is made:
    /// past [`MAX_METADATA_LEN`] it fails with [`Error::TooLarge`].)
    pub fn insert(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let value = value.as_ref();
        check_entry(key.as_bytes(), value).map_err(|reason| Error::InvalidMetadata {
            key: key.to_owned(),
            reason,
        })?;
        let held = self.block();
        let mut block =
            BytesMut::with_capacity(held.len() + ENTRY_OVERHEAD + key.len() + value.len());
        block.put_slice(held);
        put_entry(&mut block, key.as_bytes(), value);
        self.block = Some(Arc::new(block.freeze()));
        Ok(())
    }

    /// This metadata with an entry added, as [`insert`](Metadata::insert).
    ///
    /// ```
    /// use workerbus::{CallOptions, Metadata};
    ///
    /// let options = CallOptions::new().metadata(Metadata::new().with("tenant", "acme")?);
    /// assert_eq!(options.get_metadata().get_str("tenant"), Some("acme"));
    /// # Ok::<(), workerbus::Error>(())
    /// ```
    pub fn with(mut self, key: &str, value: impl AsRef<[u8]>) -> Result<Metadata, Error> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// The value of the first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// The value of the first entry with `key`, if it is text (any value of
    /// a key that does not end in `-bin` is).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The values of every entry with `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        Entries {
            block: self.block(),
        }
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.block.is_none()
    }

    /// The bytes the entries take on the wire (what [`MAX_METADATA_LEN`]
    /// bounds).
    pub fn encoded_len(&self) -> usize {
        self.block().len()
    }

    /// The entries as they travel.
    pub(crate) fn block(&self) -> &[u8] {
        self.block.as_deref().map_or(&[], |block| &block[..])
    }

    /// Metadata from a block received, checked entry by entry; `Err` says
    /// what is wrong. No copy: the metadata is a slice of the frame.
    pub(crate) fn from_block(block: Bytes) -> Result<Metadata, String> {
        if block.len() > MAX_METADATA_LEN {
            return Err(format!(
                "metadata of {} bytes (at most {MAX_METADATA_LEN})",
                block.len()
            ));
        }
        let mut rest = &block[..];
        while !rest.is_empty() {
            let key = take(&mut rest).ok_or("truncated metadata key")?;
            let value = take(&mut rest).ok_or("truncated metadata value")?;
            check_entry(key, value).map_err(|reason| {
                format!("metadata key {:?}: {reason}", String::from_utf8_lossy(key))
            })?;
        }
        Ok(Metadata {
            block: (!block.is_empty()).then(|| Arc::new(block)),
        })
    }

    /// These entries followed by `more`'s.
    #[inline]
    pub(crate) fn joined(&self, more: &Metadata) -> Metadata {
        match (&self.block, &more.block) {
            (None, None) => Metadata::new(),
            (_, None) => self.clone(),
            (None, _) => more.clone(),
            (Some(_), Some(_)) => self.concat(more),
        }
    }

    fn concat(&self, more: &Metadata) -> Metadata {
        let (first, then) = (self.block(), more.block());
        let mut block = BytesMut::with_capacity(first.len() + then.len());
        block.put_slice(first);
        block.put_slice(then);
        Metadata {
            block: Some(Arc::new(block.freeze())),
        }
    }

    /// Refuses metadata past [`MAX_METADATA_LEN`] for a call of `method`,
    /// naming the key of the entry that passes it.
    #[inline]
    pub(crate) fn check_len(&self, method: &MethodName) -> Result<(), Error> {
        let size = self.encoded_len();
        if size <= MAX_METADATA_LEN {
            return Ok(());
        }
        self.too_large(method, size)
    }

    #[cold]
    fn too_large(&self, method: &MethodName, size: usize) -> Result<(), Error> {
        let mut total = 0;
        let key = self
            .iter()
            .find(|(key, value)| {
                total += ENTRY_OVERHEAD + key.len() + value.len();
                total > MAX_METADATA_LEN
            })
            .map_or("", |(key, _)| key);
        Err(Error::TooLarge {
            method: method.clone(),
            what: "metadata",
            size,
            max: MAX_METADATA_LEN,
            key: Some(key.to_owned()),
        })
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.iter() {
            match std::str::from_utf8(value) {
                Ok(text) if !key.ends_with("-bin") => map.entry(&key, &text),
                _ => map.entry(&key, &Bytes::copy_from_slice(value)),
            };
        }
        map.finish()
    }
}

/// Why an entry breaks gRPC's rules, if it does.
fn check_entry(key: &[u8], value: &[u8]) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key has at least one byte");
    }
    if !key
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'-' | b'_' | b'.'))
    {
        return Err("a key has only the characters 0-9 a-z - _ .");
    }
    if key.starts_with(b"grpc-") {
        return Err("keys starting with grpc- are reserved for gRPC");
    }
    if !key.ends_with(b"-bin") && !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err("the value of a key not ending in -bin is printable ASCII");
    }
    if key.len() > usize::from(u16::MAX) || value.len() > usize::from(u16::MAX) {
        return Err("a key or value has at most 65,535 bytes");
    }
    Ok(())
}

fn put_entry(block: &mut BytesMut, key: &[u8], value: &[u8]) {
    // Both lengths were checked to fit in a u16.
    block.put_u16(key.len() as u16);
    block.put_slice(key);
    block.put_u16(value.len() as u16);
    block.put_slice(value);
}

/// A `u16` length and the bytes it announces, from the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rest.len() < 2 {
        return None;
    }
    let len = usize::from(rest.get_u16());
    if rest.len() < len {
        return None;
    }
    let (taken, after) = rest.split_at(len);
    *rest = after;
    Some(taken)
}

/// The entries of a block known to be valid.
struct Entries<'a> {
    block: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let key = take(&mut self.block)?;
        let value = take(&mut self.block)?;
        // Keys were checked to be ASCII when the block was made.
        Some((std::str::from_utf8(key).unwrap_or_default(), value))
    }
}

/// Where a caller finds the metadata a handler answered with: give it to
/// [`CallOptions::response_metadata`](crate::CallOptions::response_metadata),
/// and read it once the call has ended (whether it succeeded or failed).
///
/// ```
/// use workerbus::{CallOptions, ResponseMetadata};
///
/// let answered = ResponseMetadata::new();
/// let options = CallOptions::new().response_metadata(&answered);
/// // ... make the call with `options` ...
/// # let _ = options;
/// assert!(answered.get().is_empty()); // nothing answered yet
/// ```
#[derive(Clone, Default)]
pub struct ResponseMetadata {
    received: Arc<Mutex<Metadata>>,
}

impl ResponseMetadata {
    /// An empty place for a call's response metadata.
    pub fn new() -> ResponseMetadata {
        ResponseMetadata::default()
    }

    /// The metadata the handler answered with (empty until an answer with
    /// metadata arrives, and if it set none).
    pub fn get(&self) -> Metadata {
        lock(&self.received).clone()
    }

    pub(crate) fn set(&self, metadata: Metadata) {
        *lock(&self.received) = metadata;
    }
}

impl PartialEq for ResponseMetadata {
    fn eq(&self, other: &ResponseMetadata) -> bool {
        Arc::ptr_eq(&self.received, &other.received)
    }
}

impl fmt::Debug for ResponseMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResponseMetadata")
            .field(&self.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_grpcs_rules() {
        let mut metadata = Metadata::new();
        for key in ["a", "x-user", "trace_id", "v1.2", "0"] {
            metadata.insert(key, "ok").unwrap();
        }
        for (key, reason) in [
            ("", "at least one byte"),
            ("X-User", "only the characters"),
            ("x user", "only the characters"),
            ("ключ", "only the characters"),
            ("grpc-status", "reserved for gRPC"),
        ] {
            match metadata.insert(key, "v") {
                Err(Error::InvalidMetadata {
                    key: named,
                    reason: why,
                }) => {
                    assert_eq!(named, key);
                    assert!(why.contains(reason), "{key:?}: {why}");
                }
                other => panic!("{key:?} was accepted: {other:?}"),
            }
        }
        assert_eq!(metadata.len(), 5);
    }

    #[test]
    fn text_values_are_printable_ascii_and_binary_ones_anything() {
        let mut metadata = Metadata::new();
        metadata.insert("note", " ~printable~ ").unwrap();
        assert!(metadata.insert("note", "tab\there").is_err());
        assert!(metadata.insert("note", "é").is_err());
        metadata.insert("blob-bin", [0u8, 0xff, b'\n']).unwrap();
        assert_eq!(metadata.get("blob-bin"), Some(&[0u8, 0xff, b'\n'][..]));
        assert_eq!(metadata.get_str("note"), Some(" ~printable~ "));
    }

    #[test]
    fn repeated_keys_keep_their_order() {
        let metadata = Metadata::new()
            .with("k", "1")
            .and_then(|m| m.with("other", "x"))
            .and_then(|m| m.with("k", "2"))
            .unwrap();
        let values: Vec<_> = metadata.get_all("k").collect();
        assert_eq!(values, [b"1", b"2"]);
        assert_eq!(metadata.get_str("k"), Some("1"));
        assert_eq!(metadata.get("absent"), None);
        assert_eq!(
            format!("{metadata:?}"),
            r#"{"k": "1", "other": "x", "k": "2"}"#
        );
    }

    #[test]
    fn metadata_past_its_limit_is_refused_naming_the_key_that_passes_it() {
        let method = MethodName::from_static("echo.echo");
        let first = Metadata::new().with("a-bin", vec![0u8; 6000]).unwrap();
        let second = Metadata::new()
            .with("fits", "x")
            .and_then(|m| m.with("b-bin", vec![0u8; 3000]))
            .unwrap();
        let joined = first.joined(&second);
        assert_eq!(joined.len(), 3);
        match joined.check_len(&method) {
            Err(error @ Error::TooLarge { .. }) => {
                assert_eq!(
                    error.to_string(),
                    "echo.echo failed: metadata of 9027 bytes exceeds the maximum of 8192 bytes per call, at key \"b-bin\""
                );
                let Error::TooLarge { key, .. } = error else {
                    unreachable!()
                };
                assert_eq!(key.as_deref(), Some("b-bin"));
            }
            other => panic!("accepted past the limit: {other:?}"),
        }
        // Exactly at the limit is fine.
        let exact = Metadata::new()
            .with("k-bin", vec![0u8; MAX_METADATA_LEN - 4 - 5])
            .unwrap();
        assert_eq!(exact.encoded_len(), MAX_METADATA_LEN);
        exact.check_len(&method).unwrap();
        assert!(
            exact
                .joined(&Metadata::new().with("x", "").unwrap())
                .check_len(&method)
                .is_err()
        );
    }

    #[test]
    fn received_blocks_are_checked() {
        let good = Metadata::new().with("k", "v").unwrap();
        assert_eq!(
            Metadata::from_block(Bytes::copy_from_slice(good.block())).unwrap(),
            good
        );
        let bad = |bytes: &[u8]| Metadata::from_block(Bytes::copy_from_slice(bytes)).unwrap_err();
        assert!(bad(&[0]).contains("truncated metadata key"));
        assert!(bad(&[0, 1, b'k', 0]).contains("truncated metadata value"));
        assert!(bad(&[0, 1, b'K', 0, 0]).contains("only the characters"));
        assert!(bad(&[0, 5, b'g', b'r', b'p', b'c', b'-', 0, 0]).contains("reserved"));
        assert!(bad(&[0, 1, b'k', 0, 1, b'\n']).contains("printable"));
        let huge = vec![0u8; MAX_METADATA_LEN + 1];
        assert!(bad(&huge).contains("at most 8192"));
        // A valid key that only looks reserved.
        assert!(
            Metadata::from_block(Bytes::from_static(&[0, 4, b'g', b'r', b'p', b'c', 0, 0])).is_ok()
        );
    }
}
