//! Streaming forwarding: the caller's gRPC request frame is re-framed on the fly and piped to the
//! module server, and the module server's response (data frames and trailers) is piped back
//! unchanged, so a 64 MiB ndarray is never reassembled in the proxy.
//!
//! Only the start of the request is parsed ([`plan`]): the 5-byte gRPC frame header and the
//! outer `Proxy*Request` up to field 2's tag and length. When field 2 is the last field of the
//! message and comes once (what every client sends: prost and the Python client write field 1,
//! then field 2), the rest of the request *is* the inner message, so the proxy writes a new frame
//! header with the inner length and streams the remaining bytes through. Any other layout (field
//! 2 first, repeated field 2, unknown fields after it) falls back to buffering the whole message
//! and [`super::codec::split`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::Status;

use super::codec::MalformedRequest;
use crate::pb::ProxyTarget;

/// gRPC's length-prefixed message header: compression flag and big-endian length.
pub const FRAME_HEADER: usize = 5;

/// What to do with the buffered start of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// `prefix` bytes (frame header, fields before field 2, field 2's tag and length) are
    /// consumed; the next `inner_len` bytes are the inner request and end the message.
    Stream { target: ProxyTarget, prefix: usize, inner_len: usize },
    /// Buffer the whole message (`FRAME_HEADER + len` bytes) and split it.
    Whole { len: usize },
}

/// Decides how to forward a request whose body starts with `buf`.
pub fn plan(buf: &[u8]) -> Result<Plan, MalformedRequest> {
    if buf.len() < FRAME_HEADER {
        return Ok(Plan::NeedMore);
    }
    if buf[0] != 0 {
        return Err(MalformedRequest::new("compressed requests are not supported"));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let end = FRAME_HEADER + len;
    let mut target: Option<ProxyTarget> = None;
    let mut pos = FRAME_HEADER;
    loop {
        if pos == end {
            // No field 2 at all: nothing worth streaming.
            return Ok(Plan::Whole { len });
        }
        if pos >= buf.len() {
            return need_more(buf, end);
        }
        let avail = &buf[pos..buf.len().min(end)];
        let Some((key, n)) = varint(avail)? else { return need_more(buf, end) };
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(MalformedRequest::new("field number 0"));
        }
        let body = pos + n;
        let skip = match wire {
            0 => match varint(&buf[body..buf.len().min(end)])? {
                Some((_, m)) => m,
                None => return need_more(buf, end),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some((flen, m)) = varint(&buf[body..buf.len().min(end)])? else { return need_more(buf, end) };
                let flen = usize::try_from(flen).map_err(|_| MalformedRequest::new("length does not fit in memory"))?;
                let start = body + m;
                if flen > end - start.min(end) {
                    return Err(MalformedRequest::new("truncated field"));
                }
                if field == 2 {
                    return Ok(if start + flen == end {
                        Plan::Stream { target: target.unwrap_or_default(), prefix: start, inner_len: flen }
                    } else {
                        Plan::Whole { len }
                    });
                }
                if field == 1 {
                    if buf.len() < start + flen {
                        return need_more(buf, end);
                    }
                    let mut t = target.take().unwrap_or_default();
                    t.merge(&buf[start..start + flen]).map_err(|_| MalformedRequest::new("bad ProxyTarget"))?;
                    target = Some(t);
                }
                m + flen
            }
            _ => return Err(MalformedRequest::new("unsupported wire type")),
        };
        pos = body + skip;
        if pos > end {
            return Err(MalformedRequest::new("truncated field"));
        }
    }
}

fn need_more(buf: &[u8], end: usize) -> Result<Plan, MalformedRequest> {
    if buf.len() >= end {
        // The whole message is here and still does not parse.
        Err(MalformedRequest::new("truncated field"))
    } else {
        Ok(Plan::NeedMore)
    }
}

/// A varint at the start of `buf` and its length, or `None` if `buf` ends inside it.
fn varint(buf: &[u8]) -> Result<Option<(u64, usize)>, MalformedRequest> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(MalformedRequest::new("bad varint"));
    }
    Ok(None)
}

/// A gRPC frame header for a message of `len` bytes.
pub fn frame_header(len: usize) -> Bytes {
    let mut h = BytesMut::with_capacity(FRAME_HEADER);
    h.put_u8(0);
    h.put_u32(len as u32);
    h.freeze()
}

/// The request body sent to the module server: some bytes already at hand, then the next
/// `remaining` bytes of the caller's body as they arrive.
#[derive(Debug)]
pub struct ForwardBody {
    ready: VecDeque<Bytes>,
    rest: Option<tonic::body::Body>,
    remaining: usize,
}

impl ForwardBody {
    pub fn new(ready: impl IntoIterator<Item = Bytes>, rest: Option<tonic::body::Body>, remaining: usize) -> Self {
        ForwardBody { ready: ready.into_iter().filter(|b| !b.is_empty()).collect(), rest, remaining }
    }

    /// A copy to send again, when the whole request is buffered here (nothing still streams in).
    pub fn replayable(&self) -> Option<ForwardBody> {
        (self.remaining == 0).then(|| ForwardBody { ready: self.ready.clone(), rest: None, remaining: 0 })
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(b) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.remaining == 0 {
            this.rest = None;
            return Poll::Ready(None);
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(Some(Err(Status::internal("request body ended early"))));
        };
        loop {
            match std::task::ready!(Pin::new(&mut *rest).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        if data.is_empty() {
                            continue;
                        }
                        if data.len() > this.remaining {
                            // A second message on a unary call: not forwarded.
                            data.truncate(this.remaining);
                        }
                        this.remaining -= data.len();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    this.rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.rest = None;
                    return Poll::Ready(Some(Err(Status::cancelled("the caller's request ended early"))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        let ready: usize = self.ready.iter().map(Buf::remaining).sum();
        SizeHint::with_exact((ready + self.remaining) as u64)
    }
}

/// The module server's response body, passed through; a failure mid-body (the module server
/// died) becomes trailers with the status `on_error` chooses, instead of a reset stream.
pub struct ResponseBody<F> {
    inner: tonic::body::Body,
    on_error: Option<F>,
}

impl<F> std::fmt::Debug for ResponseBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<F> ResponseBody<F> {
    pub fn new(inner: tonic::body::Body, on_error: F) -> Self {
        ResponseBody { inner, on_error: Some(on_error) }
    }
}

impl<F: FnOnce(Status) -> Status + Unpin> Body for ResponseBody<F> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.on_error.is_none() {
            return Poll::Ready(None);
        }
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Err(e)) => {
                let status = (this.on_error.take().expect("checked"))(e);
                let mut trailers = http::HeaderMap::new();
                if status.add_header(&mut trailers).is_err() {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_error.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{CallRequest, ProxyCallRequest, Value};
    use crate::proxy::codec::split;

    fn call(n: usize) -> CallRequest {
        CallRequest {
            session: "s".into(),
            target: String::new(),
            path: vec!["echo".into()],
            args: vec![Value { kind: Some(crate::pb::value::Kind::BytesValue(vec![7u8; n])) }],
            kwargs: vec![],
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = frame_header(message.len()).to_vec();
        v.extend_from_slice(message);
        v
    }

    /// Feeds `wire` to [`plan`] as it would arrive in chunks of `chunk` bytes and checks that the
    /// forwarded bytes are exactly the inner message, whatever the plan.
    fn forward_in_chunks(wire: &[u8], chunk: usize) -> (ProxyTarget, Vec<u8>) {
        let mut have = 0;
        loop {
            have = (have + chunk).min(wire.len());
            match plan(&wire[..have]).unwrap() {
                Plan::NeedMore => assert!(have < wire.len(), "NeedMore with the whole message"),
                Plan::Stream { target, prefix, inner_len } => {
                    let mut out = frame_header(inner_len).to_vec();
                    out.extend_from_slice(&wire[prefix..]);
                    assert_eq!(out.len(), FRAME_HEADER + inner_len);
                    return (target, out[FRAME_HEADER..].to_vec());
                }
                Plan::Whole { len } => {
                    assert_eq!(len + FRAME_HEADER, wire.len());
                    let s = split(Bytes::copy_from_slice(&wire[FRAME_HEADER..])).unwrap();
                    return (s.target, s.inner.to_vec());
                }
            }
        }
    }

    #[test]
    fn streams_the_usual_layout_across_any_chunk_boundary() {
        let target = ProxyTarget { deployment: "math".into(), namespace: "ns".into() };
        let inner = call(300).encode_to_vec();
        let outer = ProxyCallRequest { target: Some(target.clone()), request: Some(call(300)) }.encode_to_vec();
        let wire = framed(&outer);
        for chunk in 1..wire.len() + 1 {
            assert_eq!(forward_in_chunks(&wire, chunk), (target.clone(), inner.clone()), "chunk {chunk}");
        }
        // The usual layout is streamed, not buffered.
        assert!(matches!(plan(&wire[..40]).unwrap(), Plan::Stream { .. }));
    }

    #[test]
    fn other_layouts_fall_back_to_buffering_and_match_split() {
        let inner = call(10).encode_to_vec();
        let target = ProxyTarget { deployment: "d".into(), namespace: String::new() }.encode_to_vec();
        let field = |n: u32, bytes: &[u8], out: &mut Vec<u8>| {
            prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, out);
            prost::encoding::encode_varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        };
        // Field 2 before field 1, plus an unknown varint field.
        let mut a = Vec::new();
        field(2, &inner, &mut a);
        field(1, &target, &mut a);
        prost::encoding::encode_key(7, prost::encoding::WireType::Varint, &mut a);
        prost::encoding::encode_varint(300, &mut a);
        // Repeated field 2.
        let mut b = Vec::new();
        field(1, &target, &mut b);
        field(2, &inner[..4], &mut b);
        field(2, &inner[4..], &mut b);
        // Unknown fields before field 2 (streams).
        let mut c = Vec::new();
        prost::encoding::encode_key(9, prost::encoding::WireType::ThirtyTwoBit, &mut c);
        c.extend_from_slice(&[1, 2, 3, 4]);
        field(8, b"xyz", &mut c);
        field(1, &target, &mut c);
        field(2, &inner, &mut c);
        for msg in [a, b, c] {
            let wire = framed(&msg);
            let expected = split(Bytes::from(msg.clone())).unwrap();
            for chunk in 1..wire.len() + 1 {
                let (t, i) = forward_in_chunks(&wire, chunk);
                assert_eq!((t, Bytes::from(i)), (expected.target.clone(), expected.inner.clone()), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn empty_and_malformed_requests() {
        assert_eq!(plan(&framed(&[])).unwrap(), Plan::Whole { len: 0 });
        assert_eq!(plan(&[0, 0, 0]).unwrap(), Plan::NeedMore);
        // Compressed.
        assert!(plan(&[1, 0, 0, 0, 0]).is_err());
        // Field 2 claims more bytes than the message has.
        let outer = ProxyCallRequest { target: None, request: Some(call(5)) }.encode_to_vec();
        let mut cut = framed(&outer[..outer.len() - 1]);
        assert!(plan(&cut).is_err());
        // A varint that never ends inside the message.
        cut = framed(&[0x08, 0xff]);
        assert!(plan(&cut).is_err());
        // Field number 0.
        assert!(plan(&framed(&[0x02, 0x00])).is_err());
    }
}
