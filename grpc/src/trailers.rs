//! A body whose trailers are rewritten on their way: the client's check of
//! a server's status details, the server's mapping of a message over the
//! size limit to `RESOURCE_EXHAUSTED`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// `body`, with `rewrite` applied to its trailers.
pub(crate) struct RewriteTrailers<B, F> {
    body: B,
    rewrite: F,
}

impl<B, F> RewriteTrailers<B, F> {
    pub(crate) fn new(body: B, rewrite: F) -> RewriteTrailers<B, F> {
        RewriteTrailers { body, rewrite }
    }
}

impl<B, F> Body for RewriteTrailers<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnMut(&mut HeaderMap) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    (this.rewrite)(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
