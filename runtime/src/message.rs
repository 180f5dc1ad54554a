//! Messages to bytes and back, where the runtime needs bytes: the one
//! encoder that generated code, the client's request streams and the
//! worker's response streams share.

use bytes::Bytes;
use prost::Message;

use crate::error::Error;
use crate::name::MethodName;
use crate::payload::Payload;

pub(crate) use crate::buffers::encode;

/// Decodes what a worker sent for `method` (`what`: a response, a stream
/// item, an event), or says which message failed to decode and why.
pub(crate) fn decode<M: Message + Default>(
    method: &MethodName,
    payload: Bytes,
    what: &'static str,
    message: &'static str,
) -> Result<M, Error> {
    M::decode(payload).map_err(|source| failed(method, what, message, source))
}

/// [`decode`] for a payload: a message value of `M` is taken back as it is.
pub(crate) fn decode_payload<M: Message + Default + Clone + 'static>(
    method: &MethodName,
    payload: Payload,
    what: &'static str,
    message: &'static str,
) -> Result<M, Error> {
    payload
        .decode()
        .map_err(|source| failed(method, what, message, source))
}

fn failed(
    method: &MethodName,
    what: &'static str,
    message: &'static str,
    source: prost::DecodeError,
) -> Error {
    Error::Decode {
        method: method.clone(),
        what,
        message,
        source,
    }
}
