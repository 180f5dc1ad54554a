//! [`MethodName`]: the name a message travels under (`worker.search`).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// The message name of a method, e.g. `worker.search`: `<service>.<method>`
/// in lower snake case unless the schema overrides it.
///
/// It names the method in frames, errors, logs and spans. Cloning is cheap: a
/// static name is never copied, and a name read from a frame shares the
/// frame's buffer.
///
/// ```
/// use workerbus::MethodName;
///
/// let name = MethodName::from_static("worker.search");
/// assert_eq!(name, "worker.search");
/// assert_eq!(name.to_string(), "worker.search");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodName(Bytes);

impl MethodName {
    /// A name from a string literal; no allocation.
    pub const fn from_static(name: &'static str) -> MethodName {
        MethodName(Bytes::from_static(name.as_bytes()))
    }

    /// A name from bytes received on the wire, if they are UTF-8.
    #[inline]
    pub(crate) fn from_utf8(bytes: Bytes) -> Result<MethodName, std::str::Utf8Error> {
        // Names are ASCII in practice, and checking that costs a fraction of
        // the full check on a string this short (read once per request).
        if !bytes.is_ascii() {
            std::str::from_utf8(&bytes)?;
        }
        Ok(MethodName(bytes))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        // Read several times per call: not worth a UTF-8 check each time.
        #[allow(unsafe_code)]
        // SAFETY: every constructor takes a `str` or checks the bytes are
        // UTF-8, and the bytes never change.
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The name's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Deref for MethodName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MethodName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for MethodName {
    fn from(name: &'static str) -> MethodName {
        MethodName::from_static(name)
    }
}

impl From<String> for MethodName {
    fn from(name: String) -> MethodName {
        MethodName(Bytes::from(name))
    }
}

impl PartialEq<str> for MethodName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MethodName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
