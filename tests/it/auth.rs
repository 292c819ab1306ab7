//! Authentication and authorization against a real API server (`scripts/k8s-test-cluster.sh`):
//! TokenReview of a ServiceAccount token obtained through the TokenRequest API, the
//! `system:auth-delegator` requirement of the orchestrator's own identity, and
//! SubjectAccessReviews through a Role granting `jac-orc.io` verbs with `resourceNames`.
//!
//! Gated like `kube.rs`: without `JAC_ORC_TEST_KUBECONFIG` each test says why it skips and
//! passes, unless `JAC_ORC_REQUIRE_K8S=1`. Each test deletes its namespace and cluster-scoped
//! objects at the end, also when it panics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jac_splice_orc::auth::authenticate::{Authenticator, TokenReviewConfig, TokenReviewer};
use jac_splice_orc::auth::authorize::{AccessReviewConfig, Authorizer, Error as AuthzError, Resource, Verb};
use jac_splice_orc::auth::token_file::TokenFile;
use jac_splice_orc::auth::Identity;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

/// Generous bound on any single await: the API server answers in milliseconds.
const STEP: Duration = Duration::from_secs(60);
/// RBAC changes reach the API server's authorizer through its informers: poll this often, this
/// many times, for a new binding to take effect.
const RBAC_POLL: (Duration, usize) = (Duration::from_millis(100), 300);

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

fn kubeconfig_path() -> Option<PathBuf> {
    match std::env::var_os("JAC_ORC_TEST_KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("JAC_ORC_REQUIRE_K8S").as_deref() == Ok("1") => {
            panic!("JAC_ORC_REQUIRE_K8S=1 but JAC_ORC_TEST_KUBECONFIG is not set (eval \"$(scripts/k8s-test-cluster.sh start)\")")
        }
        None => {
            eprintln!("skipping: JAC_ORC_TEST_KUBECONFIG is not set; start a test API server with `eval \"$(scripts/k8s-test-cluster.sh start)\"`");
            None
        }
    }
}

async fn client_from(kubeconfig: Kubeconfig) -> kube::Client {
    let config = timed(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()))
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// The admin kubeconfig with its user's bearer token replaced by `token`.
fn kubeconfig_with_token(path: &Path, token: &str) -> Kubeconfig {
    let mut kubeconfig = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let server = kubeconfig.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()).expect("a server");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: '{server}', insecure-skip-tls-verify: true}}\nusers:\n- name: sa\n  user: {{token: '{token}'}}\ncontexts:\n- name: sa\n  context: {{cluster: test, user: sa}}\ncurrent-context: sa\n"
    );
    kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kubeconfig yaml");
    kubeconfig
}

/// One test's cluster access; dropping it deletes its namespace and cluster role bindings.
struct Cluster {
    path: PathBuf,
    client: kube::Client,
    namespaces: Vec<String>,
    cluster_bindings: Vec<String>,
}

impl Cluster {
    async fn connect() -> Option<Cluster> {
        let path = kubeconfig_path()?;
        let client = client_from(Kubeconfig::read_from(&path).expect("readable kubeconfig")).await;
        Some(Cluster { path, client, namespaces: Vec::new(), cluster_bindings: Vec::new() })
    }

    async fn namespace(&mut self, tag: &str) -> String {
        let name = format!("jo-auth-{tag}-{}-{}", std::process::id(), self.namespaces.len());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        timed(Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns))
            .await
            .expect("namespace created");
        self.namespaces.push(name.clone());
        name
    }

    /// Creates ServiceAccount `name` in `ns` and returns a token for it (TokenRequest API:
    /// the test API server runs no token controller).
    async fn service_account_token(&self, ns: &str, name: &str) -> String {
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), ns);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        timed(accounts.create(&PostParams::default(), &sa)).await.expect("service account created");
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(600), ..TokenRequestSpec::default() },
            ..TokenRequest::default()
        };
        let issued = timed(accounts.create_token_request(name, &PostParams::default(), &request))
            .await
            .expect("TokenRequest answered");
        issued.status.expect("a token was issued").token
    }

    async fn bind_cluster_role(&mut self, role: &str, ns: &str, sa: &str) {
        let name = format!("jo-auth-{ns}-{sa}");
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
        }))
        .unwrap();
        timed(Api::<ClusterRoleBinding>::all(self.client.clone()).create(&PostParams::default(), &binding))
            .await
            .expect("cluster role binding created");
        self.cluster_bindings.push(name);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let path = self.path.clone();
        let (namespaces, bindings) = (std::mem::take(&mut self.namespaces), std::mem::take(&mut self.cluster_bindings));
        // The test's runtime is gone or blocked here, so cleanup gets its own runtime and client.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let Ok(kubeconfig) = Kubeconfig::read_from(&path) else { return };
                let client = client_from(kubeconfig).await;
                for ns in namespaces {
                    let api = Api::<Namespace>::all(client.clone());
                    let _ = tokio::time::timeout(STEP, api.delete(&ns, &DeleteParams::background())).await;
                }
                for name in bindings {
                    let api = Api::<ClusterRoleBinding>::all(client.clone());
                    let _ = tokio::time::timeout(STEP, api.delete(&name, &DeleteParams::default())).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[tokio::test]
async fn token_review_authenticates_a_service_account_token_and_a_kubeconfig_token() {
    let Some(mut cluster) = Cluster::connect().await else { return };
    let ns = cluster.namespace("tr").await;
    let token = cluster.service_account_token(&ns, "app").await;

    let reviewer = TokenReviewer::new(cluster.client.clone(), TokenReviewConfig::default());
    let identity = timed(reviewer.review(&token)).await.expect("TokenReview answered").expect("authenticated");
    assert_eq!(identity.user, format!("system:serviceaccount:{ns}:app"));
    assert!(identity.uid.is_some(), "{identity:?}");
    assert!(identity.in_group("system:serviceaccounts"), "{identity:?}");
    assert!(identity.in_group(&format!("system:serviceaccounts:{ns}")), "{identity:?}");

    assert!(timed(reviewer.review("not-a-token")).await.expect("TokenReview answered").is_none());
    // One character in the middle of the signature (the last one may only carry padding bits).
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    assert!(timed(reviewer.review(&forged)).await.expect("TokenReview answered").is_none(), "a bad signature");

    // The chain: a static token first, then whatever the API server accepts, such as the
    // bearer token of the test kubeconfig (a static token of the API server: user admin).
    let kubeconfig_token = std::fs::read_to_string(&cluster.path)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_string))
        .expect("the test kubeconfig has a bearer token");
    let chain = Authenticator::new()
        .with_tokens(TokenFile::parse("local-t,alice,jac-orc:admins\n", "tokens").unwrap())
        .with_token_review(TokenReviewer::new(cluster.client.clone(), TokenReviewConfig::default()));
    assert_eq!(timed(chain.authenticate("local-t")).await.unwrap().unwrap().user, "alice");
    let admin = timed(chain.authenticate(&kubeconfig_token)).await.unwrap().expect("the kubeconfig token");
    assert_eq!(admin.user, "admin");
    assert!(admin.in_group("system:masters"), "{admin:?}");
    assert_eq!(
        timed(chain.authenticate(&token)).await.unwrap().unwrap().user,
        format!("system:serviceaccount:{ns}:app")
    );
}

#[tokio::test]
async fn the_orchestrator_needs_auth_delegator_to_review_tokens() {
    let Some(mut cluster) = Cluster::connect().await else { return };
    let ns = cluster.namespace("deleg").await;
    let orchestrator_token = cluster.service_account_token(&ns, "jac-orc").await;
    let caller_token = cluster.service_account_token(&ns, "caller").await;
    let as_orchestrator = client_from(kubeconfig_with_token(&cluster.path, &orchestrator_token)).await;

    // No cache, so each attempt asks the API server.
    let config = TokenReviewConfig::default().capacity(0);
    let reviewer = TokenReviewer::new(as_orchestrator.clone(), config.clone());
    let err = timed(reviewer.review(&caller_token)).await.expect_err("forbidden without system:auth-delegator");
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.contains("403") || chain.to_lowercase().contains("forbidden"), "{chain}");

    cluster.bind_cluster_role("system:auth-delegator", &ns, "jac-orc").await;
    let authz = Authorizer::kube(as_orchestrator, AccessReviewConfig::default().capacity(0));
    let mut identity = None;
    for _ in 0..RBAC_POLL.1 {
        if let Ok(Some(found)) = timed(reviewer.review(&caller_token)).await {
            identity = Some(found);
            break;
        }
        tokio::time::sleep(RBAC_POLL.0).await;
    }
    let identity = identity.expect("TokenReview works once system:auth-delegator is bound");
    assert_eq!(identity.user, format!("system:serviceaccount:{ns}:caller"));
    // auth-delegator covers SubjectAccessReviews too: an answer (a denial), not an error.
    let decision = timed(authz.authorize(&identity, Verb::Create, Resource::JacDeployments, Some(&ns), None)).await;
    assert!(matches!(decision, Err(AuthzError::Denied(_))), "{decision:?}");
}

#[tokio::test]
async fn subject_access_review_follows_a_role_with_resource_names() {
    let Some(mut cluster) = Cluster::connect().await else { return };
    let ns = cluster.namespace("sar").await;
    let other_ns = cluster.namespace("sar-other").await;
    let token = cluster.service_account_token(&ns, "app").await;
    let reviewer = TokenReviewer::new(cluster.client.clone(), TokenReviewConfig::default());
    let app = timed(reviewer.review(&token)).await.unwrap().expect("the service account authenticates");

    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "call-a"},
        "rules": [
            {"apiGroups": ["jac-orc.io"], "resources": ["modules"], "verbs": ["call"], "resourceNames": ["a"]},
            {"apiGroups": ["jac-orc.io"], "resources": ["jacdeployments"], "verbs": ["get", "list"]}
        ]
    }))
    .unwrap();
    timed(Api::<Role>::namespaced(cluster.client.clone(), &ns).create(&PostParams::default(), &role))
        .await
        .expect("role created");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "call-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "call-a"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "app", "namespace": ns},
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-ops"}
        ]
    }))
    .unwrap();
    timed(Api::<RoleBinding>::namespaced(cluster.client.clone(), &ns).create(&PostParams::default(), &binding))
        .await
        .expect("role binding created");

    let uncached = Authorizer::kube(cluster.client.clone(), AccessReviewConfig::default().capacity(0));
    let mut allowed = false;
    for _ in 0..RBAC_POLL.1 {
        if timed(uncached.authorize(&app, Verb::Call, Resource::Modules, Some(&ns), Some("a"))).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(RBAC_POLL.0).await;
    }
    assert!(allowed, "the RoleBinding lets the service account call module a");

    let authz = Authorizer::kube(cluster.client.clone(), AccessReviewConfig::default());
    let check = |identity: Identity, verb, resource, namespace: String, name: Option<&'static str>| {
        let authz = &authz;
        async move { timed(authz.authorize(&identity, verb, resource, Some(&namespace), name)).await }
    };
    check(app.clone(), Verb::Call, Resource::Modules, ns.clone(), Some("a")).await.expect("A is allowed");
    let denied = check(app.clone(), Verb::Call, Resource::Modules, ns.clone(), Some("b")).await;
    let Err(AuthzError::Denied(denied)) = denied else { panic!("B must be denied, got {denied:?}") };
    assert_eq!(
        denied.to_string(),
        format!("user system:serviceaccount:{ns}:app may not call modules \"b\" in namespace {ns}")
    );
    check(app.clone(), Verb::List, Resource::JacDeployments, ns.clone(), None).await.expect("list is granted");
    for (verb, resource, namespace, name) in [
        (Verb::Create, Resource::JacDeployments, ns.clone(), None),
        (Verb::Get, Resource::JacDeploymentSecrets, ns.clone(), Some("a")),
        (Verb::Call, Resource::Modules, other_ns.clone(), Some("a")),
    ] {
        let decision = check(app.clone(), verb, resource, namespace.clone(), name).await;
        assert!(matches!(decision, Err(AuthzError::Denied(_))), "{verb} {resource} in {namespace}: {decision:?}");
    }

    // Groups travel in the review: a token-file user in a bound group gets the same grant.
    let bob = Identity::new("bob").with_groups(["team-ops"]);
    check(bob.clone(), Verb::Call, Resource::Modules, ns.clone(), Some("a")).await.expect("the group is bound");
    let denied = check(bob, Verb::Call, Resource::Modules, ns.clone(), Some("b")).await;
    assert!(matches!(denied, Err(AuthzError::Denied(_))), "{denied:?}");
    let carol = Identity::new("carol").with_groups(["team-dev"]);
    let denied = check(carol, Verb::Call, Resource::Modules, ns.clone(), Some("a")).await;
    assert!(matches!(denied, Err(AuthzError::Denied(_))), "{denied:?}");
}
