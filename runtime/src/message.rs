//! Messages to bytes and back, where the runtime needs bytes: the one
//! encoder that generated code, the client's request streams and the
//! worker's response streams share.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::error::Error;
use crate::name::MethodName;

/// Encodes a message into a buffer of exactly its size, or, if it is large,
/// into a pooled buffer that is used again once the message is dropped
/// ([`crate::buffers`]).
pub(crate) fn encode<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    if (crate::buffers::POOLED_FROM..=crate::buffers::POOLED_UP_TO).contains(&len) {
        let mut buf = crate::buffers::take(len);
        message.encode_raw(&mut buf);
        return crate::buffers::freeze(buf);
    }
    let mut buf = BytesMut::with_capacity(len);
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// Decodes what a worker sent for `method` (`what`: a response, a stream
/// item, an event), or says which message failed to decode and why.
pub(crate) fn decode<M: Message + Default>(
    method: &MethodName,
    payload: Bytes,
    what: &'static str,
    message: &'static str,
) -> Result<M, Error> {
    M::decode(payload).map_err(|source| Error::Decode {
        method: method.clone(),
        what,
        message,
        source,
    })
}
