//! The protobuf codec of the generated Orchestrator service and client (`build.rs` names it with
//! `codec_path`): tonic-prost's own, except that a message that does not decode is the caller's
//! error, InvalidArgument (`BAD_PROTOBUF`, through the one table), instead of Internal.
//! A client of ours that receives an undecodable response sees the same code.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

use super::status::RequestError;

#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _type: PhantomData }
    }
}

/// Decodes `U` with prost; a decode error is [`RequestError::Undecodable`].
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| RequestError::Undecodable(e).status())
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use crate::pb::orchestrator_server::OrchestratorServer;

    #[tokio::test]
    async fn undecodable_requests_are_invalid_argument_naming_the_reason() {
        let (service, _) = crate::service::testing::Recording::service();
        let server = OrchestratorServer::new(crate::api::grpc::OrchestratorApi::new(service));
        // One message of 3 bytes: field 1 with wire type 7, which does not exist.
        let framed = bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0f, 0xff, 0xff]);
        let request = http::Request::builder()
            .method("POST")
            .uri("/jac.splice.v1.Orchestrator/ListTemplates")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(http_body_util::Full::new(framed)))
            .unwrap();
        let response = server.oneshot(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        use tonic_types::StatusExt;
        assert_eq!(status.get_error_details().error_info().unwrap().reason, "BAD_PROTOBUF");
    }
}
