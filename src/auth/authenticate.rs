//! Bearer token → [`Identity`]: a chain of sources tried in order, the first that recognises the
//! token wins. Sources: static tokens ([`TokenFile`], including the generated admin token) and,
//! on the Kubernetes backend, a [`TokenReviewer`] that asks the API server
//! (`authentication.k8s.io/v1` TokenReview), so a pod's ServiceAccount token or a kubeconfig's
//! bearer token authenticates as that identity. The orchestrator's ServiceAccount needs the
//! `system:auth-delegator` ClusterRole for it (and for SubjectAccessReviews).
//!
//! Reviews are cached briefly, keyed by the token's SHA-256 (the token itself is never stored or
//! logged): a revoked token keeps working for at most the positive TTL.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::cache::TtlCache;
use crate::auth::token_file::TokenFile;
use crate::auth::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server could not be asked (unreachable, forbidden to review tokens, ...): the
    /// token is neither accepted nor rejected.
    #[error("TokenReview failed")]
    Review {
        #[source]
        source: Box<kube::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The chain of token sources. Empty, it recognises no token.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    sources: Vec<Source>,
}

#[derive(Debug, Clone)]
enum Source {
    Tokens(Arc<TokenFile>),
    TokenReview(Arc<TokenReviewer>),
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds static tokens (a `--token-file`, or the generated admin token).
    #[must_use]
    pub fn with_tokens(mut self, tokens: TokenFile) -> Self {
        self.sources.push(Source::Tokens(Arc::new(tokens)));
        self
    }

    /// Adds Kubernetes TokenReview (kube backend).
    #[must_use]
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.sources.push(Source::TokenReview(Arc::new(reviewer)));
        self
    }

    /// Whether any source is configured.
    pub fn is_configured(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The identity `token` authenticates as; `Ok(None)` when no source recognises it; `Err` when
    /// a source could not decide (then the token is neither accepted nor rejected).
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        for source in &self.sources {
            let found = match source {
                Source::Tokens(tokens) => tokens.lookup(token).cloned(),
                Source::TokenReview(reviewer) => reviewer.review(token).await?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// Settings of [`TokenReviewer`].
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// Audiences to request; when non-empty, the review must name one of them. Empty: the API
    /// server's own audiences (what pods' default ServiceAccount tokens carry).
    pub audiences: Vec<String>,
    /// How long an accepted token's identity is reused.
    pub ttl: Duration,
    /// How long a rejected token stays rejected without asking again.
    pub negative_ttl: Duration,
    /// Most cached reviews.
    pub capacity: usize,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        TokenReviewConfig {
            audiences: Vec::new(),
            ttl: Duration::from_secs(20),
            negative_ttl: Duration::from_secs(5),
            capacity: 4096,
        }
    }
}

impl TokenReviewConfig {
    #[must_use]
    pub fn audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }
}

/// Authenticates tokens with the Kubernetes API server's TokenReview.
pub struct TokenReviewer {
    client: kube::Client,
    config: TokenReviewConfig,
    cache: TtlCache<[u8; 32], Option<Identity>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, config: TokenReviewConfig) -> Self {
        let cache = TtlCache::new(config.capacity);
        TokenReviewer { client, config, cache }
    }

    /// The identity the API server says `token` belongs to, or `None` if it rejects it.
    pub async fn review(&self, token: &str) -> Result<Option<Identity>> {
        let key = digest(token);
        if let Some(cached) = self.cache.get(&key) {
            return Ok(cached);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.config.audiences.is_empty()).then(|| self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Review { source: Box::new(e) })?;
        let identity = self.identity_of(answer);
        let ttl = if identity.is_some() { self.config.ttl } else { self.config.negative_ttl };
        self.cache.insert(key, identity.clone(), ttl);
        Ok(identity)
    }

    fn identity_of(&self, answer: TokenReview) -> Option<Identity> {
        let status = answer.status?;
        if status.authenticated != Some(true) {
            if let Some(error) = status.error.filter(|e| !e.is_empty()) {
                tracing::debug!(%error, "TokenReview rejected a token");
            }
            return None;
        }
        if !self.config.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.config.audiences.contains(a)) {
                tracing::debug!(?granted, "TokenReview accepted a token for other audiences");
                return None;
            }
        }
        let user = status.user?;
        let name = user.username.filter(|u| !u.is_empty())?;
        let mut identity =
            Identity::new(name).with_groups(user.groups.unwrap_or_default()).with_extra(user.extra.unwrap_or_default());
        identity.uid = user.uid.filter(|u| !u.is_empty());
        Some(identity)
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock::{self, Handle};

    use super::*;

    type MockHandle = Handle<Request<Body>, Response<Body>>;
    const STEP: Duration = Duration::from_secs(5);

    fn reviewer(config: TokenReviewConfig) -> (TokenReviewer, MockHandle) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (TokenReviewer::new(kube::Client::new(svc, "default"), config), handle)
    }

    /// Answers one TokenReview with `status`, returning the request body.
    async fn answer(handle: &mut MockHandle, status: Value) -> Value {
        let (req, send) = tokio::time::timeout(STEP, handle.next_request()).await.expect("no request").expect("closed");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/apis/authentication.k8s.io/v1/tokenreviews");
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let mut reply = body.clone();
        reply["status"] = status;
        send.send_response(Response::new(Body::from(serde_json::to_vec(&reply).unwrap())));
        body
    }

    async fn timed<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(STEP, f).await.expect("timed out")
    }

    fn sa_status() -> Value {
        json!({"authenticated": true, "user": {"username": "system:serviceaccount:ns1:app", "uid": "u-9",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:ns1", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["app-0"]}}})
    }

    #[tokio::test]
    async fn a_token_review_request_has_the_token_and_maps_the_user() {
        let (reviewer, mut handle) = reviewer(TokenReviewConfig::default());
        let (identity, body) =
            tokio::join!(timed(reviewer.review("sa-token")), timed(answer(&mut handle, sa_status())));
        assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(body["spec"], json!({"token": "sa-token"}), "no audiences unless configured");
        let identity = identity.unwrap().expect("authenticated");
        assert_eq!(identity.user, "system:serviceaccount:ns1:app");
        assert_eq!(identity.uid.as_deref(), Some("u-9"));
        assert!(identity.in_group("system:serviceaccounts:ns1"));
        assert_eq!(identity.extra["authentication.kubernetes.io/pod-name"], ["app-0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn reviews_are_cached_and_rejections_for_less_time() {
        let config = TokenReviewConfig::default().ttl(Duration::from_secs(20)).negative_ttl(Duration::from_secs(5));
        let (reviewer, mut handle) = reviewer(config);
        let (first, _) = tokio::join!(timed(reviewer.review("good")), timed(answer(&mut handle, sa_status())));
        assert!(first.unwrap().is_some());
        let rejected = json!({"authenticated": false, "error": "invalid bearer token"});
        let (bad, _) = tokio::join!(timed(reviewer.review("bad")), timed(answer(&mut handle, rejected.clone())));
        assert!(bad.unwrap().is_none());

        // Within both TTLs: no request reaches the mock (it would hang the review, not answer).
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(timed(reviewer.review("good")).await.unwrap().is_some());
        assert!(timed(reviewer.review("bad")).await.unwrap().is_none());

        // The rejection expired, the acceptance did not.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(timed(reviewer.review("good")).await.unwrap().is_some());
        let (bad, _) = tokio::join!(timed(reviewer.review("bad")), timed(answer(&mut handle, rejected)));
        assert!(bad.unwrap().is_none());

        tokio::time::advance(Duration::from_secs(15)).await;
        let (again, _) = tokio::join!(timed(reviewer.review("good")), timed(answer(&mut handle, sa_status())));
        assert!(again.unwrap().is_some(), "asked again after the TTL");
    }

    #[tokio::test]
    async fn configured_audiences_are_requested_and_enforced() {
        let (reviewer, mut handle) = reviewer(TokenReviewConfig::default().audiences(vec!["jac-orc".into()]));
        let mut other = sa_status();
        other["audiences"] = json!(["https://kubernetes.default.svc"]);
        let (id, body) = tokio::join!(timed(reviewer.review("t1")), timed(answer(&mut handle, other)));
        assert_eq!(body["spec"]["audiences"], json!(["jac-orc"]));
        assert!(id.unwrap().is_none(), "a token for another audience is not ours");
        let mut ours = sa_status();
        ours["audiences"] = json!(["jac-orc"]);
        let (id, _) = tokio::join!(timed(reviewer.review("t2")), timed(answer(&mut handle, ours)));
        assert!(id.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_an_error_and_not_cached() {
        let (reviewer, mut handle) = reviewer(TokenReviewConfig::default());
        let fail = async {
            let (_, send) = timed(handle.next_request()).await.expect("a request");
            send.send_error(std::io::Error::other("connection refused"));
        };
        let (result, ()) = tokio::join!(timed(reviewer.review("t")), fail);
        assert!(matches!(result, Err(Error::Review { .. })));
        let (result, _) = tokio::join!(timed(reviewer.review("t")), timed(answer(&mut handle, sa_status())));
        assert!(result.unwrap().is_some(), "the failure was not cached");
    }

    #[tokio::test]
    async fn the_chain_tries_static_tokens_before_the_api_server() {
        let (reviewer, mut handle) = reviewer(TokenReviewConfig::default());
        let tokens = TokenFile::parse("static-t,alice,jac-orc:admins\n", "x").unwrap();
        let chain = Authenticator::new().with_tokens(tokens).with_token_review(reviewer);
        assert!(chain.is_configured());
        let alice = timed(chain.authenticate("static-t")).await.unwrap().unwrap();
        assert_eq!(alice.user, "alice", "answered without a TokenReview");
        let (sa, body) = tokio::join!(timed(chain.authenticate("sa-t")), timed(answer(&mut handle, sa_status())));
        assert_eq!(body["spec"]["token"], "sa-t");
        assert_eq!(sa.unwrap().unwrap().user, "system:serviceaccount:ns1:app");
        assert!(timed(Authenticator::new().authenticate("x")).await.unwrap().is_none());
    }
}
