//! Raw-bytes gRPC codec and the one protobuf parse the proxy does: splitting a `Proxy*Request`
//! into its `ProxyTarget` (field 1) and the embedded module-server request (field 2).
//!
//! Field 2 is an embedded message, whose wire format is exactly that of a `bytes` field, so its
//! bytes can be forwarded as the module server's request without decoding any `Value`. Both
//! directions stay zero-copy on our side: tonic hands the decoder a `BytesMut`-backed buffer, and
//! `copy_to_bytes` on it is a split, not a copy; field 2 is a `Bytes::slice` of that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::pb::ProxyTarget;

/// A [`Codec`] whose messages are the encoded protobuf bytes themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // One reservation up front: a 64 MiB ndarray must not grow the buffer step by step.
        dst.reserve(item.len());
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

/// Why a `Proxy*Request` could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed proxy request: {0}")]
pub struct MalformedRequest(&'static str);

impl MalformedRequest {
    pub(crate) fn new(reason: &'static str) -> Self {
        MalformedRequest(reason)
    }
}

/// A proxied request: where it goes and the module server's request, still encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub target: ProxyTarget,
    pub inner: Bytes,
}

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// Splits an encoded `Proxy*Request`. Protobuf merges repeated occurrences of an embedded
/// message, and concatenating their encodings is the same merge, so repeated field 2s are
/// concatenated (only then is anything copied). Unknown fields are skipped.
pub fn split(mut buf: Bytes) -> Result<Split, MalformedRequest> {
    let mut target: Option<ProxyTarget> = None;
    let mut inner: Option<Bytes> = None;
    while buf.has_remaining() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(MalformedRequest("field number 0"));
        }
        match wire {
            WIRE_LEN => {
                let len = usize::try_from(varint(&mut buf)?)
                    .map_err(|_| MalformedRequest("length does not fit in memory"))?;
                if len > buf.remaining() {
                    return Err(MalformedRequest("truncated field"));
                }
                let value = buf.split_to(len);
                match field {
                    1 => {
                        let mut t = target.take().unwrap_or_default();
                        t.merge(value).map_err(|_| MalformedRequest("bad ProxyTarget"))?;
                        target = Some(t);
                    }
                    2 => {
                        inner = Some(match inner.take() {
                            None => value,
                            Some(first) => {
                                let mut both = BytesMut::with_capacity(first.len() + value.len());
                                both.put(first);
                                both.put(value);
                                both.freeze()
                            }
                        });
                    }
                    _ => {}
                }
            }
            WIRE_VARINT => {
                varint(&mut buf)?;
            }
            WIRE_I64 => skip(&mut buf, 8)?,
            WIRE_I32 => skip(&mut buf, 4)?,
            _ => return Err(MalformedRequest("unsupported wire type")),
        }
    }
    Ok(Split { target: target.unwrap_or_default(), inner: inner.unwrap_or_default() })
}

fn varint(buf: &mut Bytes) -> Result<u64, MalformedRequest> {
    prost::encoding::decode_varint(buf).map_err(|_| MalformedRequest("bad varint"))
}

fn skip(buf: &mut Bytes, n: usize) -> Result<(), MalformedRequest> {
    if buf.remaining() < n {
        return Err(MalformedRequest("truncated field"));
    }
    buf.advance(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{CallRequest, ProxyCallRequest, ProxyDescribeRequest, Value};

    fn call() -> CallRequest {
        CallRequest {
            session: "s".into(),
            target: String::new(),
            path: vec!["sqrt".into()],
            args: vec![Value { kind: Some(crate::pb::value::Kind::FloatValue(2.0)) }],
            kwargs: vec![],
        }
    }

    #[test]
    fn split_returns_the_target_and_the_inner_request_bytes_unchanged() {
        let target = ProxyTarget { deployment: "math".into(), namespace: "ns".into() };
        let outer = ProxyCallRequest { target: Some(target.clone()), request: Some(call()) }.encode_to_vec();
        let s = split(Bytes::from(outer)).unwrap();
        assert_eq!(s.target, target);
        assert_eq!(s.inner, Bytes::from(call().encode_to_vec()));
    }

    #[test]
    fn missing_fields_default_and_field_order_does_not_matter() {
        let empty = split(Bytes::from(ProxyDescribeRequest::default().encode_to_vec())).unwrap();
        assert_eq!(empty.target, ProxyTarget::default());
        assert!(empty.inner.is_empty());

        // Field 2 first, then field 1, then an unknown varint field 7.
        let inner = call().encode_to_vec();
        let target = ProxyTarget { deployment: "d".into(), namespace: String::new() }.encode_to_vec();
        let mut buf = Vec::new();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(inner.len() as u64, &mut buf);
        buf.extend_from_slice(&inner);
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(target.len() as u64, &mut buf);
        buf.extend_from_slice(&target);
        prost::encoding::encode_key(7, prost::encoding::WireType::Varint, &mut buf);
        prost::encoding::encode_varint(300, &mut buf);
        let s = split(Bytes::from(buf)).unwrap();
        assert_eq!(s.target.deployment, "d");
        assert_eq!(s.inner, Bytes::from(inner));
    }

    #[test]
    fn repeated_inner_fields_merge_like_protobuf() {
        let a = CallRequest { session: "s".into(), ..Default::default() };
        let b = CallRequest { path: vec!["x".into()], ..Default::default() };
        let mut buf = Vec::new();
        for m in [&a, &b] {
            let bytes = m.encode_to_vec();
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
            prost::encoding::encode_varint(bytes.len() as u64, &mut buf);
            buf.extend_from_slice(&bytes);
        }
        let s = split(Bytes::from(buf)).unwrap();
        let merged = CallRequest::decode(s.inner).unwrap();
        assert_eq!((merged.session.as_str(), merged.path), ("s", vec!["x".to_string()]));
    }

    #[test]
    fn truncated_input_is_rejected() {
        let outer = ProxyCallRequest { target: None, request: Some(call()) }.encode_to_vec();
        let cut = Bytes::copy_from_slice(&outer[..outer.len() - 1]);
        assert_eq!(split(cut), Err(MalformedRequest("truncated field")));
    }
}
