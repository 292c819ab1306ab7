//! The one authorization decision: may `identity` do `verb` on `resource` (in `namespace`,
//! optionally on the object `name`)? [`Authorizer::authorize`] answers it for every surface.
//!
//! - Kubernetes backend ([`Authorizer::kube`]): a SubjectAccessReview on the API group
//!   [`API_GROUP`] (`jac-orc.io`), so cluster admins grant access with ordinary Roles, including
//!   per-deployment grants through `resourceNames`. Answers are cached briefly.
//! - Local backend ([`Authorizer::groups`]): fixed rules on token-file groups ([`local_allows`]):
//!   [`ADMINS`] may do everything, [`VIEWERS`] read, [`CALLERS`] read and call modules. Neither
//!   reads secrets or workload logs (a workload may print what its secrets hold).
//!
//! Resources and verbs, as RBAC sees them (`apiGroups: ["jac-orc.io"]`):
//!
//! | [`Resource`]           | RBAC resource            | verbs                              |
//! | ---------------------- | ------------------------ | ---------------------------------- |
//! | `JacDeployments`       | `jacdeployments`         | get, list, create, update, delete  |
//! | `JacDeploymentSecrets` | `jacdeployments/secrets` | get                                |
//! | `JacDeploymentLogs`    | `jacdeployments/log`     | get (as `pods/log` for kubectl)    |
//! | `Modules`              | `modules`                | call (resourceName = deployment)   |
//! | `Templates`            | `templates`              | list                               |

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::cache::TtlCache;
use crate::auth::{Caller, Identity};

/// The API group of jac-orc's RBAC resources.
pub const API_GROUP: &str = "jac-orc.io";
/// Local backend: may do everything.
pub const ADMINS: &str = "jac-orc:admins";
/// Local backend: may get/list deployments and list templates.
pub const VIEWERS: &str = "jac-orc:viewers";
/// Local backend: may call modules, and read like viewers.
pub const CALLERS: &str = "jac-orc:callers";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Denied(Box<Denied>),
    /// The request carried no identity ([`Caller::Anonymous`]): nothing is allowed.
    #[error("authentication required for {verb} {resource}")]
    Unauthenticated { verb: Verb, resource: Resource },
    /// The API server could not be asked: nothing is allowed, but it is not a denial either.
    #[error("SubjectAccessReview failed")]
    Review {
        #[source]
        source: Box<kube::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    Delete,
    Call,
}

impl Verb {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Call => "call",
        }
    }

    const fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List)
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    JacDeployments,
    JacDeploymentSecrets,
    /// The logs of a deployment's workloads (`jacdeployments/log`, named as `pods/log`).
    JacDeploymentLogs,
    Modules,
    Templates,
}

impl Resource {
    /// The RBAC resource name (`jacdeployments`, ...).
    pub const fn resource(self) -> &'static str {
        match self {
            Resource::JacDeployments | Resource::JacDeploymentSecrets | Resource::JacDeploymentLogs => "jacdeployments",
            Resource::Modules => "modules",
            Resource::Templates => "templates",
        }
    }

    /// The RBAC subresource, if any (`secrets` and `log` of `jacdeployments`).
    pub const fn subresource(self) -> Option<&'static str> {
        match self {
            Resource::JacDeploymentSecrets => Some("secrets"),
            Resource::JacDeploymentLogs => Some("log"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Resource {
    /// As in a Role: `jacdeployments/secrets`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.subresource() {
            Some(sub) => write!(f, "{}/{sub}", self.resource()),
            None => f.write_str(self.resource()),
        }
    }
}

/// A refusal, with what was asked for the message ("user alice may not create jacdeployments in
/// namespace prod").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denied {
    pub user: String,
    pub verb: Verb,
    pub resource: Resource,
    /// `None`: cluster-wide (templates).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The authorizer's reason, when it gave one (SubjectAccessReview `reason`).
    pub reason: Option<String>,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user {} may not {} {}", self.user, self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// Decides every request; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Authorizer {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Groups,
    Kube(AccessReviewer),
}

impl Authorizer {
    /// Local backend: the fixed group rules of [`local_allows`].
    pub fn groups() -> Self {
        Authorizer { kind: Kind::Groups }
    }

    /// Kubernetes backend: SubjectAccessReviews through `client`.
    pub fn kube(client: kube::Client, config: AccessReviewConfig) -> Self {
        Authorizer { kind: Kind::Kube(AccessReviewer::new(client, config)) }
    }

    /// [`Authorizer::authorize`] for a [`Caller`]: the operator is always allowed, an anonymous
    /// caller never ([`Error::Unauthenticated`]).
    pub async fn permit(
        &self,
        caller: &Caller,
        verb: Verb,
        resource: Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        match caller {
            Caller::User(identity) => self.authorize(identity, verb, resource, namespace, name).await,
            Caller::Operator => Ok(()),
            Caller::Anonymous => Err(Error::Unauthenticated { verb, resource }),
        }
    }

    /// `Ok(())` when allowed; [`Error::Denied`] names what was refused.
    pub async fn authorize(
        &self,
        identity: &Identity,
        verb: Verb,
        resource: Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        let (allowed, reason) = match &self.kind {
            Kind::Groups => (local_allows(identity, verb, resource), None),
            Kind::Kube(reviewer) => reviewer.review(identity, verb, resource, namespace, name).await?,
        };
        if allowed {
            return Ok(());
        }
        crate::metrics::global().auth_denial(crate::metrics::Denial::Forbidden);
        Err(Error::Denied(Box::new(Denied {
            user: identity.user.clone(),
            verb,
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            reason,
        })))
    }
}

/// The local backend's rules. Per-deployment grants exist on the kube backend only.
pub fn local_allows(identity: &Identity, verb: Verb, resource: Resource) -> bool {
    if identity.in_group(ADMINS) {
        return true;
    }
    let read = matches!((resource, verb), (Resource::JacDeployments, v) if v.is_read())
        || (resource, verb) == (Resource::Templates, Verb::List);
    let call = (resource, verb) == (Resource::Modules, Verb::Call);
    (read && (identity.in_group(VIEWERS) || identity.in_group(CALLERS))) || (call && identity.in_group(CALLERS))
}

/// Settings of the SubjectAccessReview cache.
#[derive(Debug, Clone)]
pub struct AccessReviewConfig {
    /// How long an "allowed" answer is reused.
    pub ttl: Duration,
    /// How long a "denied" answer is reused (short, so a new RoleBinding takes effect quickly).
    pub negative_ttl: Duration,
    /// Most cached answers.
    pub capacity: usize,
}

impl Default for AccessReviewConfig {
    fn default() -> Self {
        AccessReviewConfig { ttl: Duration::from_secs(20), negative_ttl: Duration::from_secs(5), capacity: 4096 }
    }
}

impl AccessReviewConfig {
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    identity: Identity,
    verb: Verb,
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

struct AccessReviewer {
    client: kube::Client,
    config: AccessReviewConfig,
    cache: TtlCache<Question, (bool, Option<String>)>,
}

impl std::fmt::Debug for AccessReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessReviewer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl AccessReviewer {
    fn new(client: kube::Client, config: AccessReviewConfig) -> Self {
        let cache = TtlCache::new(config.capacity);
        AccessReviewer { client, config, cache }
    }

    async fn review(
        &self,
        identity: &Identity,
        verb: Verb,
        resource: Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<(bool, Option<String>)> {
        let question = Question {
            identity: identity.clone(),
            verb,
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        };
        if let Some(answer) = self.cache.get(&question) {
            return Ok(answer);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.user.clone()),
                uid: identity.uid.clone(),
                groups: Some(identity.groups.clone()),
                extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(API_GROUP.into()),
                    resource: Some(resource.resource().into()),
                    subresource: resource.subresource().map(Into::into),
                    verb: Some(verb.as_str().into()),
                    namespace: namespace.map(Into::into),
                    name: name.map(Into::into),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Review { source: Box::new(e) })?;
        let status = answer.status.unwrap_or_default();
        if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            tracing::debug!(%error, "SubjectAccessReview evaluation error");
        }
        let allowed = status.allowed && status.denied != Some(true);
        let decision = (allowed, status.reason.filter(|r| !r.is_empty()));
        let ttl = if allowed { self.config.ttl } else { self.config.negative_ttl };
        self.cache.insert(question, decision.clone(), ttl);
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock::{self, Handle};

    use super::*;

    type MockHandle = Handle<Request<Body>, Response<Body>>;
    const STEP: Duration = Duration::from_secs(5);
    const VERBS: [Verb; 6] = [Verb::Get, Verb::List, Verb::Create, Verb::Update, Verb::Delete, Verb::Call];
    const RESOURCES: [Resource; 5] = [
        Resource::JacDeployments,
        Resource::JacDeploymentSecrets,
        Resource::JacDeploymentLogs,
        Resource::Modules,
        Resource::Templates,
    ];

    fn user(groups: &[&str]) -> Identity {
        Identity::new("u").with_groups(groups.iter().copied())
    }

    /// Every (verb, resource) pair `identity` may do under the local rules.
    fn allowed(identity: &Identity) -> Vec<(Verb, Resource)> {
        RESOURCES
            .iter()
            .flat_map(|r| VERBS.iter().map(move |v| (*v, *r)))
            .filter(|(v, r)| local_allows(identity, *v, *r))
            .collect()
    }

    #[test]
    fn local_admins_may_do_everything() {
        assert_eq!(allowed(&user(&[ADMINS])).len(), VERBS.len() * RESOURCES.len());
    }

    #[test]
    fn local_viewers_may_only_read_deployments_and_list_templates() {
        let reads = vec![
            (Verb::Get, Resource::JacDeployments),
            (Verb::List, Resource::JacDeployments),
            (Verb::List, Resource::Templates),
        ];
        assert_eq!(allowed(&user(&[VIEWERS])), reads);
        let mut calls = reads.clone();
        calls.insert(2, (Verb::Call, Resource::Modules));
        assert_eq!(allowed(&user(&[CALLERS])), calls, "callers read and call, nothing else");
        assert_eq!(allowed(&user(&[VIEWERS, CALLERS])), calls);
    }

    #[test]
    fn local_users_without_our_groups_may_do_nothing() {
        assert!(allowed(&user(&[])).is_empty());
        assert!(allowed(&user(&["system:masters", "jac-orc:admin", "JAC-ORC:ADMINS"])).is_empty());
    }

    #[tokio::test]
    async fn a_denial_names_user_verb_resource_and_namespace() {
        let viewer = Identity::new("alice").with_groups([VIEWERS]);
        let authz = Authorizer::groups();
        authz.authorize(&viewer, Verb::List, Resource::JacDeployments, Some("prod"), None).await.unwrap();
        let err = authz.authorize(&viewer, Verb::Create, Resource::JacDeployments, Some("prod"), None).await;
        let Err(Error::Denied(denied)) = err else { panic!("expected a denial, got {err:?}") };
        assert_eq!(denied.to_string(), "user alice may not create jacdeployments in namespace prod");
        assert_eq!(
            (denied.verb, denied.resource, denied.namespace.as_deref()),
            (Verb::Create, Resource::JacDeployments, Some("prod"))
        );
        let err = authz.authorize(&viewer, Verb::Get, Resource::JacDeploymentSecrets, Some("ns"), Some("db")).await;
        assert_eq!(
            err.unwrap_err().to_string(),
            "user alice may not get jacdeployments/secrets \"db\" in namespace ns"
        );
    }

    #[tokio::test]
    async fn the_operator_is_always_permitted_and_an_anonymous_caller_never() {
        let authz = Authorizer::groups();
        authz.permit(&Caller::Operator, Verb::Delete, Resource::JacDeployments, Some("ns"), Some("x")).await.unwrap();
        let err = authz.permit(&Caller::Anonymous, Verb::List, Resource::Templates, None, None).await.unwrap_err();
        assert!(matches!(err, Error::Unauthenticated { verb: Verb::List, resource: Resource::Templates }), "{err:?}");
        let viewer = Caller::User(Identity::new("vera").with_groups([VIEWERS]));
        authz.permit(&viewer, Verb::List, Resource::Templates, None, None).await.unwrap();
        let err = authz.permit(&viewer, Verb::Call, Resource::Modules, Some("ns"), Some("m")).await.unwrap_err();
        assert_eq!(err.to_string(), "user vera may not call modules \"m\" in namespace ns");
    }

    fn kube_authorizer(config: AccessReviewConfig) -> (Authorizer, MockHandle) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Authorizer::kube(kube::Client::new(svc, "default"), config), handle)
    }

    /// Answers one SubjectAccessReview with `status`, returning the request body.
    async fn answer(handle: &mut MockHandle, status: Value) -> Value {
        let (req, send) = tokio::time::timeout(STEP, handle.next_request()).await.expect("no request").expect("closed");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let mut reply = body.clone();
        reply["status"] = status;
        send.send_response(Response::new(Body::from(serde_json::to_vec(&reply).unwrap())));
        body
    }

    async fn timed<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(STEP, f).await.expect("timed out")
    }

    fn sa() -> Identity {
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec!["app-0".to_string()]);
        Identity::new("system:serviceaccount:ns1:app")
            .with_uid("u-9")
            .with_groups(["system:serviceaccounts", "system:authenticated"])
            .with_extra(extra)
    }

    #[tokio::test]
    async fn a_module_call_asks_for_call_on_modules_named_by_the_deployment() {
        let (authz, mut handle) = kube_authorizer(AccessReviewConfig::default());
        let sa = sa();
        let (result, body) = tokio::join!(
            timed(authz.authorize(&sa, Verb::Call, Resource::Modules, Some("ns1"), Some("a"))),
            timed(answer(&mut handle, json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding"})))
        );
        result.unwrap();
        assert_eq!(body["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(body["kind"], "SubjectAccessReview");
        assert_eq!(
            body["spec"],
            json!({
                "user": "system:serviceaccount:ns1:app", "uid": "u-9",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["app-0"]},
                "resourceAttributes": {"group": "jac-orc.io", "resource": "modules", "verb": "call", "namespace": "ns1", "name": "a"}
            })
        );
    }

    #[tokio::test]
    async fn secrets_are_a_subresource_and_templates_are_cluster_wide() {
        let (authz, mut handle) = kube_authorizer(AccessReviewConfig::default());
        let id = Identity::new("bob");
        let (result, body) = tokio::join!(
            timed(authz.authorize(&id, Verb::Get, Resource::JacDeploymentSecrets, Some("ns1"), Some("db"))),
            timed(answer(&mut handle, json!({"allowed": false})))
        );
        let attrs = &body["spec"]["resourceAttributes"];
        assert_eq!(
            (&attrs["resource"], &attrs["subresource"], &attrs["verb"]),
            (&json!("jacdeployments"), &json!("secrets"), &json!("get"))
        );
        let Err(Error::Denied(denied)) = result else { panic!("denied expected") };
        assert_eq!(denied.to_string(), "user bob may not get jacdeployments/secrets \"db\" in namespace ns1");
        let (result, body) = tokio::join!(
            timed(authz.authorize(&id, Verb::List, Resource::Templates, None, None)),
            timed(answer(&mut handle, json!({"allowed": true})))
        );
        result.unwrap();
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"group": "jac-orc.io", "resource": "templates", "verb": "list"})
        );
        assert_eq!(body["spec"]["groups"], json!([]));
    }

    #[tokio::test]
    async fn logs_are_the_log_subresource_read_with_get() {
        let (authz, mut handle) = kube_authorizer(AccessReviewConfig::default());
        let id = Identity::new("lou");
        let (result, body) = tokio::join!(
            timed(authz.authorize(&id, Verb::Get, Resource::JacDeploymentLogs, Some("ns1"), Some("cache"))),
            timed(answer(&mut handle, json!({"allowed": false})))
        );
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"group": "jac-orc.io", "resource": "jacdeployments", "subresource": "log", "verb": "get",
                   "namespace": "ns1", "name": "cache"})
        );
        let Err(Error::Denied(denied)) = result else { panic!("denied expected") };
        assert_eq!(denied.to_string(), "user lou may not get jacdeployments/log \"cache\" in namespace ns1");
    }

    #[tokio::test]
    async fn an_explicit_deny_wins_over_allowed() {
        let (authz, mut handle) = kube_authorizer(AccessReviewConfig::default());
        let sa = sa();
        let (result, _) = tokio::join!(
            timed(authz.authorize(&sa, Verb::Delete, Resource::JacDeployments, Some("ns1"), Some("x"))),
            timed(answer(&mut handle, json!({"allowed": true, "denied": true, "reason": "webhook says no"})))
        );
        let Err(Error::Denied(denied)) = result else { panic!("denied expected") };
        assert_eq!(denied.reason.as_deref(), Some("webhook says no"));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_per_question_and_denials_for_less_time() {
        let config = AccessReviewConfig::default().ttl(Duration::from_secs(20)).negative_ttl(Duration::from_secs(5));
        let (authz, mut handle) = kube_authorizer(config);
        let sa = sa();
        let call = |name: &'static str| authz.authorize(&sa, Verb::Call, Resource::Modules, Some("ns1"), Some(name));
        let (a, _) = tokio::join!(timed(call("a")), timed(answer(&mut handle, json!({"allowed": true}))));
        a.unwrap();
        let (b, body) = tokio::join!(timed(call("b")), timed(answer(&mut handle, json!({"allowed": false}))));
        assert!(matches!(b, Err(Error::Denied(_))));
        assert_eq!(body["spec"]["resourceAttributes"]["name"], "b", "another name is another question");

        tokio::time::advance(Duration::from_secs(4)).await;
        timed(call("a")).await.unwrap();
        assert!(matches!(timed(call("b")).await, Err(Error::Denied(_))), "cached denial");

        tokio::time::advance(Duration::from_secs(2)).await;
        timed(call("a")).await.unwrap();
        let (b, _) = tokio::join!(timed(call("b")), timed(answer(&mut handle, json!({"allowed": true}))));
        b.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_not_a_denial() {
        let (authz, mut handle) = kube_authorizer(AccessReviewConfig::default());
        let fail = async {
            let (_, send) = timed(handle.next_request()).await.expect("a request");
            send.send_error(std::io::Error::other("connection refused"));
        };
        let sa = sa();
        let (result, ()) =
            tokio::join!(timed(authz.authorize(&sa, Verb::List, Resource::JacDeployments, Some("ns1"), None)), fail);
        assert!(matches!(result, Err(Error::Review { .. })), "{result:?}");
    }
}
