//! Who gets in on the kube backend, through the real server: a ServiceAccount token
//! authenticates by TokenReview, every operation is a SubjectAccessReview on `jac-orc.io`, and a
//! Role with `resourceNames` grants module calls per deployment.

use jac_splice_orc::auth::authenticate::{Authenticator, TokenReviewConfig, TokenReviewer};
use jac_splice_orc::auth::authorize::{AccessReviewConfig, Authorizer};
use jac_splice_orc::auth::{AuthConfig, AuthLayer};
use jac_splice_orc::pb;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use tonic::Code;

use super::server::{module_behind_endpoints, routable_local_ip};
use super::*;
use crate::support::{http_client, kubeconfig_token, proxy_client, serve_with};

/// A token of ServiceAccount `name` in `ns` (TokenRequest: the test API server runs no token
/// controller).
async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    timed(accounts.create(&PostParams::default(), &sa)).await.expect("service account created");
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(600), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let issued = timed(accounts.create_token_request(name, &PostParams::default(), &request)).await.unwrap();
    issued.status.expect("a token was issued").token
}

fn describe(ns: &str, deployment: &str) -> pb::ProxyDescribeRequest {
    pb::ProxyDescribeRequest {
        target: Some(pb::ProxyTarget { deployment: deployment.into(), namespace: ns.into() }),
        request: Some(pb::DescribeRequest { session: "kube-access".into() }),
    }
}

#[tokio::test]
async fn a_role_with_resource_names_lets_its_service_account_call_module_a_but_not_b_through_the_server() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let Some(ip) = routable_local_ip() else {
        eprintln!("skipping: no non-loopback IPv4 address for Endpoints (they may not point at 127.0.0.0/8)");
        return;
    };
    let ns = c.namespace("access").await;
    // No caches, so a new RoleBinding is seen as soon as the API server's authorizer has it.
    let authorizer = Arc::new(Authorizer::kube(c.client.clone(), AccessReviewConfig::default().capacity(0)));
    let svc = Arc::new(service(&c.backend(&ns), &ns).with_authorizer(authorizer));
    let (_, mut server_a, _) = module_behind_endpoints(&c, &svc, &ns, "a", ip).await;
    let (_, mut server_b, _) = module_behind_endpoints(&c, &svc, &ns, "b", ip).await;

    let token = service_account_token(&c.client, &ns, "caller").await;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "call-a"},
        "rules": [
            {"apiGroups": ["jac-orc.io"], "resources": ["modules"], "verbs": ["call"], "resourceNames": ["a"]},
            {"apiGroups": ["jac-orc.io"], "resources": ["jacdeployments"], "verbs": ["get", "list"]},
            {"apiGroups": ["jac-orc.io"], "resources": ["jacdeployments/secrets"], "verbs": ["get"], "resourceNames": ["b"]}
        ]
    }))
    .unwrap();
    timed(Api::<Role>::namespaced(c.client.clone(), &ns).create(&PostParams::default(), &role)).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "call-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "call-a"},
        "subjects": [{"kind": "ServiceAccount", "name": "caller", "namespace": ns}]
    }))
    .unwrap();
    timed(Api::<RoleBinding>::namespaced(c.client.clone(), &ns).create(&PostParams::default(), &binding))
        .await
        .unwrap();

    // jac-orc as on the kube backend: TokenReview, then SubjectAccessReviews.
    let reviews = TokenReviewer::new(c.client.clone(), TokenReviewConfig::default().capacity(0));
    let auth = AuthLayer::new(Authenticator::new().with_token_review(reviews), AuthConfig::default());
    let (addr, stop, handle) = serve_with(svc.clone(), jac_splice_orc::server::Options::new(auth)).await;
    let url = format!("http://{addr}");

    let mut caller = proxy_client(&url, Some(&token)).await;
    let mut allowed = None;
    for _ in 0..300 {
        match timed(caller.describe(describe(&ns, "a"))).await {
            Ok(r) => {
                allowed = Some(r.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = allowed.expect("the RoleBinding lets the service account call module a");
    assert_eq!((a.module.as_str(), a.pid), ("math", i64::from(server_a.id().unwrap())));
    let err = timed(caller.describe(describe(&ns, "b"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        format!("user system:serviceaccount:{ns}:caller may not call modules \"b\" in namespace {ns}")
    );

    // B itself works: for the kubeconfig's admin (system:masters) it is one call away.
    let admin_token = kubeconfig_token(&c.path);
    let b = timed(proxy_client(&url, Some(&admin_token)).await.describe(describe(&ns, "b"))).await.unwrap();
    assert_eq!(b.into_inner().pid, i64::from(server_b.id().unwrap()));
    for token in [None, Some("not-a-token")] {
        let err = timed(proxy_client(&url, token).await.describe(describe(&ns, "a"))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }

    // The Role reads deployments in its namespace, and nothing else.
    let http = http_client(Some(&token));
    let listed = timed(http.get(format!("{url}/deployment?namespace={ns}")).send()).await.unwrap();
    assert_eq!(listed.status(), 200);
    let everywhere = timed(http.get(format!("{url}/deployment")).send()).await.unwrap();
    assert_eq!(everywhere.status(), 403, "listing every namespace needs a cluster-wide grant");
    let deploy = json!({"module": "redis", "config": {"name": "nope", "namespace": ns}});
    let r = timed(http.post(format!("{url}/deployment")).json(&deploy).send()).await.unwrap();
    assert_eq!(r.status(), 403);

    // Secrets: a's are not granted; b's are, but its call token needs `call` on b too.
    let secrets = |name: &str| format!("{url}/deployment/{ns}/python-module/{name}/secrets");
    assert_eq!(timed(http.get(secrets("a")).send()).await.unwrap().status(), 403);
    let r = timed(http.get(secrets("b")).send()).await.unwrap();
    assert_eq!(r.status(), 200);
    let b_secrets: Value = r.json().await.unwrap();
    assert_eq!(b_secrets["secrets"], json!({}), "no call token without call on b: {b_secrets}");
    let r = timed(http_client(Some(&admin_token)).get(secrets("b")).send()).await.unwrap();
    let b_secrets: Value = r.json().await.unwrap();
    assert!(b_secrets["secrets"]["call-token"].as_str().is_some_and(|t| t.len() >= 24), "{b_secrets}");

    let _ = stop.send(());
    timed(handle).await.unwrap();
    server_a.kill().await.unwrap();
    server_b.kill().await.unwrap();
}

#[tokio::test]
async fn the_python_module_template_renders_its_call_token_secret_and_network_policy() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("netpol").await;
    let svc = service(&c.backend(&ns), &ns);
    let p = plan(&svc, "python-module", &ns, "np", json!({"module": "json"})).await;
    let kinds: Vec<&str> = p.objects.iter().map(|o| o.object.kind.as_str()).collect();
    assert_eq!(kinds, ["Secret", "Service", "Deployment", "NetworkPolicy"]);
    let token = p.config["call-token"].as_str().unwrap();
    let secret = &p.objects[0].manifest;
    assert_eq!(
        (secret["metadata"]["name"].as_str(), secret["stringData"]["token"].as_str()),
        (Some("np-call-token"), Some(token))
    );
    let container = &p.objects[2].manifest["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<&Value> =
        container["env"].as_array().unwrap().iter().filter(|e| e["name"] == "JAC_SPLICE_CALL_TOKEN").collect();
    assert_eq!(env.len(), 1);
    assert_eq!(env[0]["valueFrom"]["secretKeyRef"], json!({"name": "np-call-token", "key": "token"}));
    assert!(env[0].get("value").is_none(), "the token is not spelled out in the Deployment");
    let policy = &p.objects[3].manifest["spec"];
    assert_eq!(policy["podSelector"]["matchLabels"], json!({"jac-orc/module-server": "np"}));
    assert_eq!(policy["ingress"][0]["ports"], json!([{"port": 50051, "protocol": "TCP"}]));
    assert_eq!(
        policy["ingress"][0]["from"],
        json!([
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "jac-orc"}}},
            {"podSelector": {"matchLabels": {"jac-orc.io/client": "true"}}}
        ])
    );
    // The API server accepts all of it (the test cluster's bridge network does not enforce
    // NetworkPolicies; a policy-aware CNI does).
    timed(c.backend(&ns).apply(&p, &ApplyOptions::default(), &Progress::discard())).await.expect("applied");
    let policies = dynamic(&c.client, &ns, "networking.k8s.io/v1", "NetworkPolicy", "networkpolicies");
    assert!(exists(&policies, "np").await);

    let off = plan(&svc, "python-module", &ns, "open", json!({"module": "json", "network-policy": false})).await;
    assert!(off.objects.iter().all(|o| o.object.kind != "NetworkPolicy"), "network-policy=false renders none");
    let other = plan(&svc, "python-module", &ns, "x", json!({"module": "json", "orchestrator-namespace": "ops"})).await;
    let from = &other.objects.last().unwrap().manifest["spec"]["ingress"][0]["from"][0];
    assert_eq!(from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "ops");
}
