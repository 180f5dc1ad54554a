//! Frames over a Unix socket, written without copying large payloads: the
//! process driver's transport on both ends.
//!
//! `Framed<_, FrameCodec>` would do, but it copies every frame into its
//! write buffer. Here frames are encoded into the connection's write
//! buffer, as there, message values straight from the message; what is
//! written is let go of at the buffer's front, never given away, so that
//! the buffer serves the next frames without an allocation; an encoded
//! payload of
//! [`VECTORED_MIN`] bytes or more is queued as it is (a `Bytes` shares the
//! message's buffer) and written with the frames around it in one vectored
//! write. Reading is `FrameCodec`'s, but for a frame of 16 to 128 KiB not
//! yet arrived, which is read into a pooled buffer of its own; until a
//! worker has accepted its peer's greeting, reading is with the greeting's
//! small limit and no memory reserved ahead of the bytes that arrive.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Decoder;

use super::admission::Greeting;
use super::memfd::{self, DESCRIPTORS_PER_WRITE};
use super::passing::{Descriptors, Passing, poll_read_into, poll_send_with, shared_error};
use super::sys;
use crate::error::FrameError;
use crate::frame::{
    Frame, FrameCodec, HEADER_LEN, KIND_SHARED, SHARED_LEN, Tail, decode_shared, encode_shared,
    is_shared,
};
use crate::payload::{Payload, SplitEncoder};

/// The send buffer asked of each connection's socket: how much the kernel
/// holds of what one side wrote and the other has not read yet. At Linux's
/// default (`net.core.wmem_default`, 208 KiB) a 1 MiB message crosses in
/// five fills, each a wake-up of the reader and then of the writer.
///
/// Linux grants twice what is asked, but asks above `net.core.wmem_max`
/// are cut to it first: where that is 1 MiB or more, the buffer is 2 MiB and
/// a 1 MiB message crosses in one fill (1 MiB calls run about twice as fast);
/// where it is at its usual default of 208 KiB, the buffer is 416 KiB, twice
/// the default. It bounds what the kernel buffers, it reserves nothing.
pub(crate) const SEND_BUFFER: usize = 1024 * 1024;

/// Payloads at least this large are written from their own buffer rather
/// than copied behind their frame's header.
pub(crate) const VECTORED_MIN: usize = 16 * 1024;

/// The largest write buffer a connection keeps once it is written: one a
/// larger message grew it to is let go.
const RETAINED_OUT: usize = 4 * 1024 * 1024;

/// What a connection still has to write: a run of its write buffer, or a
/// large payload in a buffer of its own.
#[derive(Debug)]
enum Segment {
    Out(usize),
    Large(Bytes),
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Out(len) => *len,
            Segment::Large(bytes) => bytes.len(),
        }
    }
}

/// Queued bytes past which `poll_ready` flushes before taking a frame.
const BACKPRESSURE: usize = 128 * 1024;

/// Buffers written at most in one vectored write.
const MAX_SLICES: usize = 64;

/// What a read asks the socket for when the buffer has no room.
const READ_CHUNK: usize = 16 * 1024;

/// What a read asks for when the buffer has no room, before the peer's
/// greeting is accepted: room for a host's whole greeting (about 100 bytes).
/// The buffer doubles as it fills, so it holds at most about twice what the
/// peer sent.
const GREETING_READ: usize = 256;

/// Frames over a byte stream (a Unix socket in the process driver).
#[derive(Debug)]
pub(crate) struct SocketTransport<T> {
    io: T,
    codec: FrameCodec,
    /// Whether payloads cross in memory files, each way.
    passing: Arc<Passing>,
    /// The least payload this side sends in a memory file, if any.
    shared_from: Option<usize>,
    /// Descriptors that arrived, not yet taken by a `SHARED` frame.
    arrived: VecDeque<OwnedFd>,
    /// The payload a `SHARED` frame announced, for the frame with this id
    /// that follows it.
    apart: Option<(u64, Bytes)>,
    /// Memory files of frames queued, to send with the next write.
    outgoing: VecDeque<OwnedFd>,
    /// `SHARED` frames queued since everything queued was last written: at
    /// most [`DESCRIPTORS_PER_WRITE`], so that the peer never holds more
    /// than twice that many descriptors ahead of their frames.
    shared_unwritten: usize,
    /// How the peer is read until its greeting is accepted, if it must greet.
    before_greeting: Option<BeforeGreeting>,
    read: BytesMut,
    /// A large frame being read into a buffer of its own, and its length.
    large: Option<(Vec<u8>, usize)>,
    eof: bool,
    /// What is still to write, in order: runs of `out`, and large payloads
    /// written from their own buffers.
    queue: VecDeque<Segment>,
    /// The connection's write buffer: every frame's head, small payloads
    /// and message values are encoded here, and what is written is let go
    /// of at its front, so the room is used again (`BytesMut` moves what is
    /// left to the front when it needs room) and never given away.
    out: BytesMut,
    /// How much of `out` the queue's segments cover.
    out_sealed: usize,
    /// The large `bytes` fields cut out of the message being encoded, kept
    /// for its room.
    cuts: Vec<(usize, Bytes)>,
    /// Whether `out` grew past [`RETAINED_OUT`] since it was last empty.
    out_oversized: bool,
    queued: usize,
    /// The `REQUEST`s given since the last complete flush, each with where
    /// its bytes start among the bytes given since then, its id and its
    /// payload: if writing fails, those whose bytes the socket never took
    /// are handed back ([`FrameError::Unwritten`]), their peer never
    /// received them.
    requests: VecDeque<(usize, u64, Payload)>,
    /// Bytes given since the last complete flush.
    given: usize,
    /// Of those, the bytes the socket took.
    taken: usize,
}

impl<T> Drop for SocketTransport<T> {
    fn drop(&mut self) {
        // A peer's descriptors that no `SHARED` frame took.
        memfd::close_elsewhere(self.arrived.drain(..));
    }
}

impl SocketTransport<tokio::net::UnixStream> {
    /// A connection's transport: frames over a Unix socket whose send buffer
    /// is raised to [`SEND_BUFFER`] (kept at the system's default if the
    /// system refuses).
    pub(crate) fn unix(socket: tokio::net::UnixStream, codec: FrameCodec) -> Self {
        if let Err(error) = sys::set_send_buffer(socket.as_raw_fd(), SEND_BUFFER) {
            tracing::debug!(%error, "the socket's send buffer stays at the system's default");
        }
        SocketTransport::new(socket, codec)
    }
}

/// How a worker reads a peer that has not greeted it.
#[derive(Debug)]
struct BeforeGreeting {
    /// The greeting's limit; nothing reserved ahead of the bytes.
    codec: FrameCodec,
    greeting: Arc<Greeting>,
}

impl<T> SocketTransport<T> {
    pub(crate) fn new(io: T, codec: FrameCodec) -> SocketTransport<T> {
        SocketTransport {
            io,
            codec: codec.leaving_pooled_frames(),
            passing: Arc::default(),
            shared_from: None,
            arrived: VecDeque::new(),
            apart: None,
            outgoing: VecDeque::new(),
            shared_unwritten: 0,
            before_greeting: None,
            read: BytesMut::new(),
            large: None,
            eof: false,
            queue: VecDeque::new(),
            out: BytesMut::new(),
            out_sealed: 0,
            cuts: Vec::new(),
            out_oversized: false,
            queued: 0,
            requests: VecDeque::new(),
            given: 0,
            taken: 0,
        }
    }

    /// The error for a write that failed: the requests whose bytes the
    /// socket never took come back with it.
    fn write_failed(&mut self, source: io::Error) -> FrameError {
        let taken = self.taken;
        let requests: Vec<(u64, Payload)> = self
            .requests
            .drain(..)
            .filter(|(start, _, _)| *start >= taken)
            .map(|(_, id, payload)| (id, payload))
            .collect();
        if requests.is_empty() {
            FrameError::Io(source)
        } else {
            FrameError::Unwritten { source, requests }
        }
    }

    /// This transport, reading frames of at most `max` bytes, with no
    /// memory reserved ahead of the bytes that arrive, until `greeting` is
    /// done; then as its codec says.
    pub(crate) fn until_greeted(mut self, max: usize, greeting: Arc<Greeting>) -> Self {
        self.before_greeting = Some(BeforeGreeting {
            codec: FrameCodec::new()
                .max_frame_length(max)
                .growing_with_arrivals(),
            greeting,
        });
        self
    }

    /// This transport, sending payloads of at least `from` bytes in sealed
    /// memory files once the peer says it takes them (see [`Passing`]).
    pub(crate) fn sharing_from(mut self, from: Option<usize>) -> Self {
        self.shared_from = from;
        self
    }

    /// Whether payloads cross in memory files, each way: the handshake
    /// sets it.
    pub(crate) fn passing(&self) -> Arc<Passing> {
        Arc::clone(&self.passing)
    }

    /// Queues `frame` with its payload `tail` in a fresh sealed memory file,
    /// announced by a `SHARED` frame; false if no file could be made, and
    /// nothing is queued.
    fn queue_apart(&mut self, frame: &Frame, tail: &Tail<'_>) -> bool {
        let len = tail.len();
        let Ok(announced) = u32::try_from(len) else {
            return false;
        };
        let made = match tail.encoded() {
            Some(bytes) => memfd::sealed(len, &mut [IoSlice::new(bytes)]),
            // A message value is encoded at the end of the write buffer,
            // but for its large `bytes` fields, and written from there and
            // from where those are; then the buffer is cut back.
            None => {
                let start = self.out.len();
                let mut cuts = std::mem::take(&mut self.cuts);
                tail.encode_split(&mut SplitEncoder::new(
                    &mut self.out,
                    &mut cuts,
                    VECTORED_MIN,
                ));
                let mut parts = Vec::with_capacity(2 * cuts.len() + 1);
                let mut at = start;
                for (cut, bytes) in &cuts {
                    parts.push(IoSlice::new(&self.out[at..*cut]));
                    parts.push(IoSlice::new(bytes));
                    at = *cut;
                }
                parts.push(IoSlice::new(&self.out[at..]));
                let made = memfd::sealed(len, &mut parts);
                drop(parts);
                cuts.clear();
                self.cuts = cuts;
                self.out.truncate(start);
                made
            }
        };
        match made {
            Ok(file) => {
                encode_shared(&mut self.out, frame.id(), announced);
                frame.encode_head_apart(&mut self.out, len);
                self.outgoing.push_back(file);
                self.shared_unwritten += 1;
                true
            }
            Err(error) => {
                tracing::debug!(%error, len, "no memory file for a payload: it goes through the socket");
                false
            }
        }
    }

    /// Reads a `SHARED` frame's `body`: on a connection that takes memory
    /// files, its file is kept for the frame it announces; on any other, it
    /// is refused as the codec refuses it.
    #[cold]
    #[inline(never)]
    fn shared(&mut self, body: Bytes) -> Result<(), FrameError> {
        if self.passing.receives() {
            self.take_apart(&body)
        } else {
            Frame::decode(body).map(drop)
        }
    }

    /// `frame`, read after a `SHARED` frame, with the payload it announced.
    #[cold]
    #[inline(never)]
    fn attach(&mut self, frame: Frame) -> Result<Frame, FrameError> {
        let Some((id, payload)) = self.apart.take() else {
            return Ok(frame);
        };
        if frame.id() != id {
            return Err(shared_error(format!(
                "it announces a payload for id {id}, the {} frame after it has id {}",
                frame.kind_name(),
                frame.id()
            )));
        }
        let frame = frame.with_payload_apart(payload)?;
        let (len, max) = (frame.encoded_len(), self.codec.max_len());
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        Ok(frame)
    }

    /// Reads a `SHARED` frame: takes the oldest descriptor that arrived and
    /// maps its memory file, once checked, as the payload it announces.
    fn take_apart(&mut self, body: &[u8]) -> Result<(), FrameError> {
        let (id, len) = decode_shared(body)?;
        if self.apart.is_some() {
            return Err(shared_error(
                "it follows another SHARED frame, not the frame that one announced".into(),
            ));
        }
        let (len_with_header, max) = (HEADER_LEN.saturating_add(len), self.codec.max_len());
        if len_with_header > max {
            return Err(FrameError::TooLong {
                len: len_with_header,
                max,
            });
        }
        let file = self
            .arrived
            .pop_front()
            .ok_or_else(|| shared_error("no descriptor came with it".into()))?;
        let payload = memfd::map_sealed(file, len).map_err(shared_error)?;
        self.apart = Some((id, payload));
        Ok(())
    }

    /// Queues what was encoded into `out` since its last segment.
    fn seal_out(&mut self) {
        self.seal_out_at(self.out.len());
    }

    /// Queues what was encoded into `out` since its last segment, up to
    /// `at`.
    fn seal_out_at(&mut self, at: usize) {
        if at > self.out_sealed {
            self.queue.push_back(Segment::Out(at - self.out_sealed));
            self.out_sealed = at;
        }
    }

    /// Queues `bytes` to be written from their own buffer, after what `out`
    /// holds up to `at`.
    fn queue_large(&mut self, at: usize, bytes: Bytes) {
        self.seal_out_at(at);
        self.queue.push_back(Segment::Large(bytes));
    }

    /// Encodes a frame's tail into `out`, but for a message value's large
    /// `bytes` fields, which are queued to be written from where the
    /// message holds them.
    fn encode_split(&mut self, tail: &Tail<'_>) {
        // Room for all of it, as for any message (most large ones, a batch
        // of vectors, have no field to cut), but no more than a connection
        // keeps: one large field cut out must not grow the buffer past it
        // for nothing.
        self.out.reserve(tail.len().min(RETAINED_OUT));
        let mut cuts = std::mem::take(&mut self.cuts);
        tail.encode_split(&mut SplitEncoder::new(
            &mut self.out,
            &mut cuts,
            VECTORED_MIN,
        ));
        for (at, bytes) in cuts.drain(..) {
            self.queue_large(at, bytes);
        }
        self.cuts = cuts;
    }

    /// Everything queued is written: `out` is kept for the next frames,
    /// unless one large message left it larger than is worth keeping.
    fn written_all(&mut self) {
        if self.out_oversized {
            self.out = BytesMut::new();
            self.out_oversized = false;
        } else {
            self.out.clear();
        }
        self.out_sealed = 0;
    }
}

impl<T: AsyncRead + Descriptors + Unpin> Stream for SocketTransport<T> {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The serve loop accepts a greeting between two frames: the frame
        // after it is read as a greeted peer's.
        if this
            .before_greeting
            .as_ref()
            .is_some_and(|before| before.greeting.is_done())
        {
            this.before_greeting = None;
            // From here the peer is read as any greeted one, from a buffer
            // with the room a greeted connection's first read has.
            if this.read.capacity() - this.read.len() < READ_CHUNK {
                this.read.reserve(READ_CHUNK);
            }
        }
        loop {
            if let Some((body, len)) = &mut this.large {
                let left = *len - body.len();
                if left > 0 {
                    let read = ready!(poll_read_into(
                        &mut this.io,
                        cx,
                        &mut (&mut *body).limit(left),
                        &this.passing,
                        &mut this.arrived,
                    ))?;
                    if read == 0 {
                        let buffered = 4 + body.len();
                        this.large = None;
                        this.eof = true;
                        return Poll::Ready(Some(Err(FrameError::Truncated { buffered })));
                    }
                    continue;
                }
                let (body, _) = this.large.take().expect("a large frame is being read");
                let body = crate::buffers::freeze(body);
                if is_shared(&body) {
                    match this.shared(body) {
                        Ok(()) => continue,
                        Err(error) => return Poll::Ready(Some(Err(error))),
                    }
                }
                let frame = Frame::decode(body);
                return Poll::Ready(Some(match frame {
                    Ok(frame) if this.apart.is_some() => this.attach(frame),
                    frame => frame,
                }));
            }
            let (codec, chunk) = match &mut this.before_greeting {
                Some(before) => (&mut before.codec, GREETING_READ),
                None => (&mut this.codec, READ_CHUNK),
            };
            // A `SHARED` frame, which only this transport reads, is told
            // by its kind byte; any other is decoded as the codec does.
            let decoded = if this.read.get(4) == Some(&KIND_SHARED) {
                match codec.decode_body(&mut this.read) {
                    Ok(Some(body)) => match this.shared(body) {
                        Ok(()) => continue,
                        Err(error) => return Poll::Ready(Some(Err(error))),
                    },
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                }
            } else {
                codec.decode(&mut this.read)
            };
            match decoded {
                Ok(Some(frame)) if this.apart.is_none() => return Poll::Ready(Some(Ok(frame))),
                Ok(Some(frame)) => return Poll::Ready(Some(this.attach(frame))),
                Ok(None) if this.eof => {
                    return Poll::Ready(if !this.read.is_empty() {
                        Some(Err(FrameError::Truncated {
                            buffered: this.read.len(),
                        }))
                    } else if this.apart.take().is_some() {
                        Some(Err(shared_error(
                            "the connection closed before the frame it announces".into(),
                        )))
                    } else {
                        None
                    });
                }
                Ok(None) => {
                    if this.before_greeting.is_none()
                        && let Some(len) = pooled_frame_ahead(&this.read)
                    {
                        // Read into a pooled buffer of its own, not into a
                        // read buffer grown for it: that one would be a
                        // fresh allocation every few frames, as long as
                        // frames read before hold on to it.
                        let mut body = crate::buffers::take(len);
                        this.read.advance(4);
                        body.extend_from_slice(&this.read);
                        this.read.clear();
                        this.large = Some((body, len));
                        continue;
                    }
                }
                Err(FrameError::TooLong { len, max }) if this.before_greeting.is_some() => {
                    return Poll::Ready(Some(Err(FrameError::GreetingTooLong { len, max })));
                }
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            if this.read.capacity() == this.read.len() {
                this.read.reserve(chunk);
            }
            let read = ready!(poll_read_into(
                &mut this.io,
                cx,
                &mut this.read,
                &this.passing,
                &mut this.arrived,
            ))?;
            if read == 0 {
                this.eof = true;
            }
        }
    }
}

/// The length of the frame `read` starts with, which has not all arrived
/// (the codec said so, having checked its length), if it is of a size the
/// buffer pool serves. (The codec reserves room for larger ones in the
/// read buffer: a buffer of their own would be a fresh allocation too.)
fn pooled_frame_ahead(read: &BytesMut) -> Option<usize> {
    let prefix: [u8; 4] = read.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    crate::frame::is_pooled(len).then_some(len)
}

impl<T: AsyncWrite + Descriptors + Unpin> Sink<Frame> for SocketTransport<T> {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        // At most one write's worth of memory files between two moments
        // when everything is written: all their descriptors ride on one
        // write, and the peer holds at most two writes' worth ahead of
        // their frames.
        if self.queued >= BACKPRESSURE || self.shared_unwritten >= DESCRIPTORS_PER_WRITE {
            ready!(self.as_mut().poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        let this = &mut *self;
        let len = this.codec.check(&frame)?;
        this.queued += 4 + len;
        // A large payload crosses in a memory file, if the peer takes one.
        let apart = match this.shared_from {
            // (More only where `start_send` was called without `poll_ready`.)
            Some(from) if this.passing.sends() && this.shared_unwritten < DESCRIPTORS_PER_WRITE => {
                match frame.payload_apart() {
                    Some(tail) if tail.len() >= from => {
                        this.queue_apart(&frame, &tail).then(|| tail.len())
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if apart.is_some() {
            // Queued whole.
        } else if let Some(tail) = frame.encode_head(&mut this.out) {
            match tail.encoded() {
                // Bytes already in a buffer of their own are written from it.
                Some(bytes) if bytes.len() >= VECTORED_MIN => {
                    this.queue_large(this.out.len(), bytes.clone());
                }
                // A large message value is encoded here, but for its large
                // `bytes` fields (a message smaller than one has none).
                None if tail.len() >= VECTORED_MIN => this.encode_split(&tail),
                // Anything smaller is copied, or encoded, behind its head.
                _ => tail.encode_into(&mut this.out),
            }
        }
        this.out_oversized |= this.out.capacity() > RETAINED_OUT;
        if let Frame::Request { id, payload, .. } = frame {
            this.requests.push_back((this.given, id, payload));
        }
        this.given += match apart {
            // The `SHARED` frame, and this one without its payload.
            Some(payload) => 4 + SHARED_LEN + 4 + len - payload,
            None => 4 + len,
        };
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = &mut *self;
        this.seal_out();
        while !this.queue.is_empty() {
            // On the stack: a write allocates nothing.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut at = 0;
            for (slice, segment) in slices.iter_mut().zip(&this.queue) {
                *slice = match segment {
                    Segment::Out(len) => {
                        at += len;
                        IoSlice::new(&this.out[at - len..at])
                    }
                    Segment::Large(bytes) => IoSlice::new(bytes),
                };
                count += 1;
            }
            let slices = &slices[..count];
            let write = if this.outgoing.is_empty() {
                ready!(Pin::new(&mut this.io).poll_write_vectored(cx, slices))
            } else {
                ready!(poll_send_with(&this.io, cx, slices, &this.outgoing))
            };
            let mut written = match write {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(this.write_failed(error)));
                }
                Ok(written) => written,
                Err(error) => return Poll::Ready(Err(this.write_failed(error))),
            };
            // A write that took a byte took the descriptors with it.
            if !this.outgoing.is_empty() {
                let sent = this.outgoing.len().min(DESCRIPTORS_PER_WRITE);
                this.outgoing.drain(..sent);
            }
            this.taken += written;
            this.queued = this.queued.saturating_sub(written);
            while written > 0 {
                let front = this.queue.front_mut().expect("written bytes were queued");
                let len = front.len();
                let done = written.min(len);
                match front {
                    Segment::Out(left) => {
                        *left -= done;
                        this.out.advance(done);
                        this.out_sealed -= done;
                    }
                    Segment::Large(bytes) => bytes.advance(done),
                }
                if done == len {
                    this.queue.pop_front();
                }
                written -= done;
            }
        }
        this.written_all();
        this.queued = 0;
        this.shared_unwritten = 0;
        // Every byte given is the socket's now.
        this.requests.clear();
        this.given = 0;
        this.taken = 0;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

/// Writes each of `writes` (bytes, with descriptors riding on the first
/// of them) to one end of a socket pair, from a thread, and reads the other
/// end with the transport of a connection that takes memory files (frames
/// of at most `max` bytes): the frames read, then the error that ended the
/// reading (`None`: a clean end). For the fuzz targets
/// (`workerbus::fuzzing::read_with_descriptors`).
#[cfg(fuzzing)]
pub(crate) fn read_with_descriptors(
    writes: Vec<(Vec<u8>, Vec<OwnedFd>)>,
    max: usize,
) -> (Vec<Frame>, Option<String>) {
    use std::io::Write;

    let (a, b) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let writer = std::thread::spawn(move || -> io::Result<()> {
        for (bytes, files) in writes {
            let raw: Vec<std::os::fd::RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
            let mut at = 0;
            while at < bytes.len() {
                let written = if at == 0 && !raw.is_empty() {
                    memfd::send(a.as_raw_fd(), &[IoSlice::new(&bytes)], &raw)
                } else {
                    (&a).write(&bytes[at..])
                };
                match written {
                    Ok(n) => at += n,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::yield_now();
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    let read = runtime.block_on(async move {
        b.set_nonblocking(true).expect("a non-blocking socket");
        let b = tokio::net::UnixStream::from_std(b).expect("a Tokio socket");
        let mut transport = SocketTransport::unix(b, FrameCodec::new().max_frame_length(max));
        transport
            .passing()
            .offer(Some(crate::frame::MIN_SHARED_MEMORY_FROM));
        let mut frames = Vec::new();
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut transport).poll_next(cx)).await {
                Some(Ok(frame)) => frames.push(frame),
                Some(Err(error)) => return (frames, Some(error.to_string())),
                None => return (frames, None),
            }
        }
    });
    // The reader's end is closed: a writer still writing gets EPIPE.
    let _ = writer.join();
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio_util::codec::Encoder;

    use std::time::Duration;

    /// Sends `frames` one way through a socket pair and returns what arrives.
    async fn through_a_socket(frames: Vec<Frame>) -> Vec<Frame> {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new());
        let mut receiver = SocketTransport::new(b, FrameCodec::new());
        let count = frames.len();
        let send = async move {
            for frame in frames {
                std::future::poll_fn(|cx| Pin::new(&mut sender).poll_ready(cx))
                    .await
                    .unwrap();
                Pin::new(&mut sender).start_send(frame).unwrap();
            }
            std::future::poll_fn(|cx| Pin::new(&mut sender).poll_close(cx))
                .await
                .unwrap();
        };
        let receive = async move {
            let mut received = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx)).await
            {
                received.push(frame.unwrap());
            }
            received
        };
        let ((), received) = tokio::join!(send, receive);
        assert_eq!(received.len(), count);
        received
    }

    #[tokio::test]
    // Each test has a runtime of its own: the lock orders tests, no tasks.
    #[allow(clippy::await_holding_lock)]
    async fn small_and_large_frames_arrive_whole_and_in_order() {
        let _turn = crate::sync::lock(&crate::buffers::SERIAL);
        let sizes = [
            0,
            1,
            100,
            VECTORED_MIN - 1,
            VECTORED_MIN,
            64 << 10,
            crate::buffers::POOLED_UP_TO - 40,
            crate::buffers::POOLED_UP_TO,
            1 << 20,
            3,
            5 << 20,
            7,
        ];
        let frames: Vec<Frame> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let payload = Bytes::from((0..size).map(|b| (b % 251) as u8).collect::<Vec<u8>>());
                // Every third one a message value, encoded by the writer.
                let payload = if i % 3 == 1 {
                    crate::payload::Payload::message(payload.to_vec())
                } else {
                    payload.into()
                };
                if i % 2 == 0 {
                    Frame::Response {
                        id: i as u64 + 1,
                        payload,
                    }
                } else {
                    let timeout = Some(Duration::from_secs(1));
                    Frame::request(i as u64 + 1, "bench.echo".into(), timeout, 1, payload)
                }
            })
            .collect();
        let received = through_a_socket(frames.clone()).await;
        assert_eq!(received, frames);
    }

    /// Flushes what `sender` has queued and reads the next frame it sent.
    async fn flushed_and_read(
        sender: &mut SocketTransport<tokio::net::UnixStream>,
        receiver: &mut SocketTransport<tokio::net::UnixStream>,
    ) -> Frame {
        std::future::poll_fn(|cx| Pin::new(&mut *sender).poll_flush(cx))
            .await
            .unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut *receiver).poll_next(cx))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    // Each test has a runtime of its own: the lock orders tests, no tasks.
    #[allow(clippy::await_holding_lock)]
    async fn a_values_large_bytes_field_is_written_from_the_message_not_copied() {
        // The frame is read into a pooled buffer: not while another test
        // watches the pool.
        let _turn = crate::sync::lock(&crate::buffers::SERIAL);
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new());
        let mut receiver = SocketTransport::new(b, FrameCodec::new());
        // A `bytes` field held as `Bytes` (a `BytesValue`: field 1).
        let data = Bytes::from(vec![7u8; 64 * 1024]);
        let frame = Frame::Response {
            id: 1,
            payload: Payload::message(data.clone()),
        };
        Pin::new(&mut sender).start_send(frame.clone()).unwrap();
        // Only the frame's head, the field's key and its length were
        // encoded into the write buffer; the data is queued where it is.
        assert!(sender.out.len() < 32, "{} bytes encoded", sender.out.len());
        assert!(
            sender
                .queue
                .iter()
                .any(|segment| matches!(segment, Segment::Large(bytes) if bytes.as_ptr() == data.as_ptr())),
            "the field was copied: {:?}",
            sender.queue
        );
        assert_eq!(flushed_and_read(&mut sender, &mut receiver).await, frame);
    }

    #[tokio::test]
    // Each test has a runtime of its own: the lock orders tests, no tasks.
    #[allow(clippy::await_holding_lock)]
    async fn the_write_buffer_is_used_again_once_written() {
        let _turn = crate::sync::lock(&crate::buffers::SERIAL);
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new());
        let mut receiver = SocketTransport::new(b, FrameCodec::new());
        let mut buffers = Vec::new();
        for id in 1..=4 {
            let payload = crate::payload::Payload::message(vec![id as u8; 64 * 1024]);
            let frame = Frame::Response { id, payload };
            Pin::new(&mut sender).start_send(frame.clone()).unwrap();
            // The frame, encoded: where, and in how large a buffer.
            buffers.push((sender.out.as_ptr(), sender.out.capacity()));
            assert_eq!(flushed_and_read(&mut sender, &mut receiver).await, frame);
        }
        assert!(buffers[0].1 > 64 * 1024);
        assert!(
            buffers.iter().all(|buffer| *buffer == buffers[0]),
            "a new write buffer was taken: {buffers:?}"
        );

        // One message larger than a connection keeps a buffer for: the
        // buffer it needed is let go once it is written.
        let payload = crate::payload::Payload::message(vec![9u8; RETAINED_OUT + 1]);
        let write = async {
            Pin::new(&mut sender)
                .start_send(Frame::Response { id: 5, payload })
                .unwrap();
            std::future::poll_fn(|cx| Pin::new(&mut sender).poll_flush(cx))
                .await
                .unwrap();
        };
        let read = std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx));
        let ((), received) = tokio::join!(write, read);
        assert!(matches!(received, Some(Ok(Frame::Response { id: 5, .. }))));
        assert_eq!(sender.out.capacity(), 0);
    }

    /// A peer that takes at most `step` bytes a write, across as many of
    /// the buffers of a vectored write as that covers, and keeps them.
    struct Trickle {
        step: usize,
        taken: Vec<u8>,
    }

    impl Descriptors for Trickle {}

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.step.min(buf.len());
            self.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            for buf in bufs {
                let n = left.min(buf.len());
                self.taken.extend_from_slice(&buf[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A message with two large `bytes` fields and a small one between.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TwoFields {
        #[prost(bytes = "bytes", tag = "1")]
        first: Bytes,
        #[prost(string, tag = "2")]
        between: String,
        #[prost(bytes = "bytes", tag = "3")]
        second: Bytes,
    }

    #[test]
    fn frames_with_fields_cut_out_arrive_whole_however_the_writes_are_split() {
        let two = TwoFields {
            first: Bytes::from(vec![1u8; 20_000]),
            between: "between".into(),
            second: Bytes::from(vec![2u8; 30_000]),
        };
        let frames = vec![
            Frame::request(
                1,
                "bench.echo".into(),
                None,
                1,
                Payload::message(two.clone()),
            ),
            Frame::Response {
                id: 2,
                payload: Payload::message(String::from("small")),
            },
            Frame::Response {
                id: 3,
                payload: Payload::message(Bytes::from(vec![3u8; 17_000])),
            },
            Frame::Response {
                id: 4,
                payload: Payload::message(two),
            },
        ];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for step in [1, 7, 4096, 16_385, 1 << 20] {
            let trickle = Trickle {
                step,
                taken: Vec::new(),
            };
            let mut sender = SocketTransport::new(trickle, FrameCodec::new());
            for (sent, frame) in frames.iter().enumerate() {
                Pin::new(&mut sender).start_send(frame.clone()).unwrap();
                // Every other frame flushed at once, the rest together.
                if sent % 2 == 0 {
                    assert!(Pin::new(&mut sender).poll_flush(&mut cx).is_ready());
                }
            }
            assert!(Pin::new(&mut sender).poll_flush(&mut cx).is_ready());
            let mut wire = BytesMut::from(&sender.io.taken[..]);
            let mut codec = FrameCodec::new();
            let mut received = Vec::new();
            while let Some(frame) =
                tokio_util::codec::Decoder::decode(&mut codec, &mut wire).unwrap()
            {
                received.push(frame);
            }
            assert!(wire.is_empty(), "{} bytes left over", wire.len());
            assert_eq!(received, frames, "writes of {step} bytes");
        }
    }

    /// A peer that reads a little less than it is sent each time.
    struct SlowReader {
        budget: usize,
    }

    impl Descriptors for SlowReader {}

    impl AsyncWrite for SlowReader {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.budget == 0 {
                return Poll::Pending;
            }
            let n = self.budget.min(buf.len());
            self.budget -= n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_write_buffer_stays_bounded_while_the_peer_never_quite_catches_up() {
        // Each flush writes a little less than the frame just queued, so
        // what is queued never drains to nothing: the buffer must let go of
        // what is written as it goes, not hold it until it is empty.
        let mut transport = SocketTransport::new(SlowReader { budget: 0 }, FrameCodec::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut largest = 0;
        for id in 1..20_000 {
            if Pin::new(&mut transport).poll_ready(&mut cx).is_pending() {
                transport.io.budget = usize::MAX;
                assert!(Pin::new(&mut transport).poll_ready(&mut cx).is_ready());
            }
            let payload = crate::payload::Payload::message(vec![1u8; 1000]);
            let frame = Frame::Response { id, payload };
            Pin::new(&mut transport).start_send(frame).unwrap();
            transport.io.budget = 1010;
            let _ = Pin::new(&mut transport).poll_flush(&mut cx);
            largest = largest.max(transport.out.capacity());
        }
        assert!(
            largest <= 4 * BACKPRESSURE,
            "the write buffer grew to {largest} bytes with at most {BACKPRESSURE} unwritten"
        );
    }

    #[tokio::test]
    // Each test has a runtime of its own: the lock orders tests, no tasks.
    #[allow(clippy::await_holding_lock)]
    async fn a_large_frame_is_read_into_a_pooled_buffer_used_again_once_dropped() {
        let _turn = crate::sync::lock(&crate::buffers::SERIAL);
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new());
        let mut receiver = SocketTransport::new(b, FrameCodec::new());
        let mut addresses = Vec::new();
        for id in 1..=3 {
            // Written in pieces, so that the frame arrives in several reads.
            let frame = Frame::Response {
                id,
                payload: Bytes::from(vec![id as u8; 64 << 10]).into(),
            };
            let mut encoded = BytesMut::new();
            FrameCodec::new()
                .encode(frame.clone(), &mut encoded)
                .unwrap();
            let write = async {
                for piece in encoded.chunks(10_000) {
                    tokio::io::AsyncWriteExt::write_all(&mut sender.io, piece)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            };
            let read = std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx));
            let ((), received) = tokio::join!(write, read);
            let received = received.unwrap().unwrap();
            assert_eq!(received, frame);
            let Frame::Response { payload, .. } = received else {
                unreachable!()
            };
            addresses.push(payload.into_bytes().as_ptr());
            // Dropped here: its buffer goes back to the pool.
        }
        assert!(
            addresses.iter().all(|address| *address == addresses[0]),
            "each frame took a new buffer: {addresses:?}"
        );
        // The connection ends inside a large frame: it is truncated.
        let mut encoded = BytesMut::new();
        let frame = Frame::Response {
            id: 9,
            payload: Bytes::from(vec![1; 64 << 10]).into(),
        };
        FrameCodec::new().encode(frame, &mut encoded).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut sender.io, &encoded[..30_000])
            .await
            .unwrap();
        drop(sender);
        let ended = std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx)).await;
        assert!(
            matches!(ended, Some(Err(FrameError::Truncated { buffered: 30_000 }))),
            "{ended:?}"
        );
        let after = std::future::poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx)).await;
        assert!(after.is_none());
    }

    #[tokio::test]
    async fn a_connection_asks_for_a_send_buffer_that_holds_a_large_message() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let default = sys::send_buffer(b.as_raw_fd()).unwrap();
        let transport = SocketTransport::unix(a, FrameCodec::new());
        let granted = sys::send_buffer(transport.io.as_raw_fd()).unwrap();
        // Linux grants at most `net.core.wmem_max`, doubled.
        let cap = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|max| max.trim().parse::<usize>().ok())
            .map_or(SEND_BUFFER, |max| 2 * max);
        assert!(
            granted >= SEND_BUFFER.min(cap),
            "granted {granted} bytes (default {default}, cap {cap})"
        );
        if cap > default {
            assert!(granted > default, "granted {granted}, the default");
        }
    }

    /// Polls `transport` once for a frame.
    fn poll_frame<T: AsyncRead + Descriptors + Unpin>(
        transport: &mut SocketTransport<T>,
    ) -> Poll<Option<Result<Frame, FrameError>>> {
        let waker = std::task::Waker::noop();
        Pin::new(transport).poll_next(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn before_the_greeting_a_frame_over_its_limit_is_refused_unread() {
        use tokio::io::AsyncWriteExt;
        let (mut host, worker) = tokio::net::UnixStream::pair().unwrap();
        let greeting = Greeting::inherited();
        let mut worker =
            SocketTransport::new(worker, FrameCodec::new()).until_greeted(4096, greeting);
        // 16 MiB announced (the full maximum): refused on its prefix.
        host.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
        worker.io.readable().await.unwrap();
        let Poll::Ready(Some(Err(error))) = poll_frame(&mut worker) else {
            panic!("a frame over the greeting's limit was not refused on its prefix");
        };
        assert!(
            matches!(error, FrameError::GreetingTooLong { len, max: 4096 } if len == 16 << 20),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "frame of 16777216 bytes exceeds the maximum of 4096 bytes before the handshake"
        );
        assert!(
            worker.read.capacity() <= GREETING_READ,
            "{}",
            worker.read.capacity()
        );
    }

    #[tokio::test]
    async fn before_the_greeting_the_buffer_grows_only_with_what_arrives() {
        use tokio::io::AsyncWriteExt;
        let (mut host, worker) = tokio::net::UnixStream::pair().unwrap();
        let greeting = Greeting::inherited();
        let mut worker = SocketTransport::new(worker, FrameCodec::new())
            .until_greeted(4096, Arc::clone(&greeting));
        // A frame of 4,000 bytes announced, 100 sent.
        let mut partial = 4000u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        partial.resize(104, 7);
        host.write_all(&partial).await.unwrap();
        host.flush().await.unwrap();
        worker.io.readable().await.unwrap();
        assert!(poll_frame(&mut worker).is_pending());
        assert_eq!(worker.read.len(), 104);
        assert!(
            worker.read.capacity() <= GREETING_READ,
            "{}",
            worker.read.capacity()
        );

        // Greeted, the peer is read as the codec says: the rest of that
        // frame, then a frame of 1 MiB. Its reads have a greeted
        // connection's room: a buffer left at the greeting's size would stay
        // that small, reused for each partial frame, with a read per few
        // frames.
        greeting.done();
        assert!(poll_frame(&mut worker).is_pending());
        assert!(
            worker.read.capacity() - worker.read.len() >= READ_CHUNK,
            "{}",
            worker.read.capacity()
        );
        let mut rest = vec![7; 3900];
        let mut encoded = BytesMut::new();
        FrameCodec::new()
            .encode(
                Frame::Response {
                    id: 2,
                    payload: Bytes::from(vec![9; 1 << 20]).into(),
                },
                &mut encoded,
            )
            .unwrap();
        rest.extend_from_slice(&encoded);
        let write = async move { host.write_all(&rest).await.unwrap() };
        let read = async {
            let mut frames = Vec::new();
            for _ in 0..2 {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut worker).poll_next(cx));
                frames.push(frame.await.unwrap().unwrap());
            }
            frames
        };
        let ((), frames) = tokio::join!(write, read);
        assert!(matches!(&frames[0], Frame::Response { id: 1, payload } if payload.len() == 3990));
        assert!(
            matches!(&frames[1], Frame::Response { id: 2, payload } if payload.len() == 1 << 20)
        );
    }

    #[tokio::test]
    async fn requests_the_socket_never_took_come_back_with_the_error() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new());
        let request =
            |id| Frame::request(id, "echo.echo".into(), None, 1, Bytes::from_static(b"ping"));
        // Written and read: the next flush starts afresh.
        Pin::new(&mut sender).start_send(request(1)).unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut sender).poll_flush(cx))
            .await
            .unwrap();
        drop(b);
        let requests = unwritten_after_the_peer_left(&mut sender, request).await;
        let ping = Bytes::from_static(b"ping");
        assert_eq!(requests, [(2, ping.clone().into()), (3, ping.into())]);
    }

    /// With its peer gone, `sender` is given requests 2 and 3 with a
    /// cancellation between them, and flushed: the requests the error
    /// hands back, once it is checked to be the broken pipe.
    pub(super) async fn unwritten_after_the_peer_left(
        sender: &mut SocketTransport<tokio::net::UnixStream>,
        request: impl Fn(u64) -> Frame,
    ) -> Vec<(u64, Payload)> {
        Pin::new(&mut *sender).start_send(request(2)).unwrap();
        Pin::new(&mut *sender)
            .start_send(Frame::Cancel { id: 1 })
            .unwrap();
        Pin::new(&mut *sender).start_send(request(3)).unwrap();
        let error = std::future::poll_fn(|cx| Pin::new(&mut *sender).poll_flush(cx))
            .await
            .unwrap_err();
        match error {
            FrameError::Unwritten { source, requests } => {
                assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
                requests
            }
            other => panic!("expected the unwritten requests back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_maximum_is_refused_before_it_is_queued() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let mut sender = SocketTransport::new(a, FrameCodec::new().max_frame_length(1024));
        let error = Pin::new(&mut sender)
            .start_send(Frame::Response {
                id: 1,
                payload: Bytes::from(vec![0; 2048]).into(),
            })
            .unwrap_err();
        assert!(matches!(error, FrameError::TooLong { .. }), "{error}");
        assert_eq!(sender.queued, 0);
    }
}

#[cfg(all(test, target_os = "linux"))]
#[path = "socket_shared_tests.rs"]
mod shared_tests;
