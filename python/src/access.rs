//! Who may call a module server: every request but gRPC health must carry
//! `authorization: Bearer <call token>`. Checked by `server.rs` on the request's headers before
//! it reaches the service, so a refused call decodes nothing and never takes the GIL.
//!
//! The call token is the deployment's (jac-orc generates it and hands it to the server as
//! `JAC_SPLICE_CALL_TOKEN`); `jac_splice.server` generates one when started by hand.
use std::sync::Arc;

use tonic::Status;

/// Requests to this path prefix stay open: probes (kubelet, jac-orc's readiness check,
/// `connect()` telling servers apart) carry no credentials.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the call token is empty")]
    Empty,
    #[error("the call token must be printable ASCII without spaces (it travels in an HTTP header)")]
    NotHeaderText,
}

/// A deployment's call token. Its `Debug` never shows it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct CallToken(Arc<[u8]>);

impl std::fmt::Debug for CallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallToken(<redacted>)")
    }
}

impl CallToken {
    pub fn new(token: &str) -> Result<Self, Error> {
        if token.is_empty() {
            return Err(Error::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::NotHeaderText);
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Compares in time independent of where `offered` first differs (only a length mismatch
    /// answers early, and the length of a generated token is no secret).
    fn matches(&self, offered: &[u8]) -> bool {
        let expected = &*self.0;
        if offered.len() != expected.len() {
            return false;
        }
        let diff = offered.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// What a server asks of its callers.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every call but health needs this token.
    Token(CallToken),
    /// Anyone who reaches the port may call (`--no-auth`, for trusted test rigs).
    Open,
}

impl Access {
    /// `Ok` if the request may go on; else the UNAUTHENTICATED status to answer with. The
    /// messages say what was wrong, never what the token is.
    pub fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        let Self::Token(token) = self else {
            return Ok(());
        };
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Ok(());
        }
        let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this module server needs its call token: send `authorization: Bearer <call token>`",
            ));
        };
        let offered = header.as_bytes();
        // RFC 6750: the scheme name is case-insensitive.
        let bearer = offered.len() > 7 && offered[..7].eq_ignore_ascii_case(b"bearer ");
        if !bearer {
            return Err(Status::unauthenticated("the authorization header is not `Bearer <call token>`"));
        }
        if !token.matches(&offered[7..]) {
            return Err(Status::unauthenticated("the call token is wrong"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, authorization: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    fn token_access() -> Access {
        Access::Token(CallToken::new("s3cret-token").unwrap())
    }

    const CALL: &str = "/jac.splice.v1.ModuleService/Call";

    #[test]
    fn a_call_with_the_token_passes_and_the_scheme_is_case_insensitive() {
        let access = token_access();
        assert!(access.check(&request(CALL, Some("Bearer s3cret-token"))).is_ok());
        assert!(access.check(&request(CALL, Some("bearer s3cret-token"))).is_ok());
    }

    #[test]
    fn calls_without_or_with_a_wrong_token_are_unauthenticated() {
        let access = token_access();
        for authorization in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-tokeN"),
            Some("Bearer s3cret-token2"),
            Some("s3cret-token"),
            Some("Basic czNjcmV0LXRva2Vu"),
            Some("Bearer "),
            Some("Bearer"),
        ] {
            let status = access.check(&request(CALL, authorization)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{authorization:?}");
            assert!(!status.message().contains("s3cret"), "the answer never echoes the token");
        }
    }

    #[test]
    fn every_path_but_health_needs_the_token() {
        let access = token_access();
        assert!(access.check(&request("/grpc.health.v1.Health/Check", None)).is_ok());
        assert!(access.check(&request("/grpc.health.v1.Health/Watch", None)).is_ok());
        for path in
            [CALL, "/jac.splice.v1.ModuleService/Describe", "/unknown.Service/Method", "/grpc.health.v1.HealthX/Check"]
        {
            assert!(access.check(&request(path, None)).is_err(), "{path}");
        }
    }

    #[test]
    fn an_open_server_lets_everyone_in() {
        assert!(Access::Open.check(&request(CALL, None)).is_ok());
    }

    #[test]
    fn tokens_must_be_header_text_and_never_show_in_debug() {
        assert!(matches!(CallToken::new(""), Err(Error::Empty)));
        assert!(matches!(CallToken::new("a b"), Err(Error::NotHeaderText)));
        assert!(matches!(CallToken::new("line\n"), Err(Error::NotHeaderText)));
        assert!(matches!(CallToken::new("tök"), Err(Error::NotHeaderText)));
        let token = CallToken::new("s3cret-token").unwrap();
        assert!(!format!("{token:?} {:?}", Access::Token(token.clone())).contains("s3cret"));
    }
}
