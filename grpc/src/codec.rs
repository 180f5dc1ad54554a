//! [`BytesCodec`]: messages cross the bridge as the bytes they arrived as.
//!
//! Decoding a message at the bridge only to encode it again would cost both
//! ways and gain nothing. A gRPC message is read as its bytes (split off
//! tonic's buffer, not copied) and written by one copy into the buffer
//! tonic frames it in; what the bridge sends (the server's answers, the
//! client's requests) is a [`Payload`], so a message that crossed a thread
//! as a value is encoded straight into that buffer ([`BridgeCodec`]).

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use workerbus::Payload;

/// A tonic codec whose messages are their encoded bytes, both ways.
///
/// ```no_run
/// # async fn run(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
/// use bytes::Bytes;
/// use tonic::codegen::http::uri::PathAndQuery;
/// use workerbus_grpc::BytesCodec;
///
/// // A call by path, its request already encoded.
/// let mut grpc = tonic::client::Grpc::new(channel);
/// grpc.ready().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
/// let path = PathAndQuery::from_static("/embedder.Embedder/Embed");
/// let request = tonic::Request::new(Bytes::from_static(b"\x0a\x05hello"));
/// let response: tonic::Response<Bytes> = grpc.unary(request, path, BytesCodec).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

/// The encoding half of [`BytesCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesEncoder;

/// The decoding half of [`BytesCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesDecoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The whole message, split off tonic's buffer without a copy.
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// The bridge's codec, on both ends: what arrives read as its bytes, what
/// is sent written from a [`Payload`], a message value encoded straight
/// into tonic's buffer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BridgeCodec;

/// The encoding half of [`BridgeCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PayloadEncoder;

impl Encoder for PayloadEncoder {
    type Item = Payload;
    type Error = Status;

    fn encode(&mut self, item: Payload, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        item.encode_to(dst);
        Ok(())
    }
}

impl Codec for BridgeCodec {
    type Encode = Payload;
    type Decode = Bytes;
    type Encoder = PayloadEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> PayloadEncoder {
        PayloadEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}
