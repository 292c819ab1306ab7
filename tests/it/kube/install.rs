//! The install manifests: what their RBAC grants, checked with SubjectAccessReviews.

use super::*;

// === install manifests ===

/// What `kubectl apply -n NS -f FILE` does on a fresh install: create every document, in `NS`
/// when namespaced (plain create, like kubectl's client-side apply). The cluster tier runs the
/// real `kubectl apply` with a running orchestrator.
async fn apply_manifest(client: &kube::Client, file: &str, ns: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests").join(file)).unwrap();
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            docs.push(v);
        }
    }
    for doc in &docs {
        let o = planned(doc.clone(), Section::Modules, file).object;
        assert!(
            o.namespace.is_none(),
            "{file}: {} {} hard-codes a namespace; `kubectl apply -n` must decide",
            o.kind,
            o.name
        );
        let gvk = kube::core::GroupVersionKind::gvk(o.group(), o.api_version.rsplit('/').next().unwrap(), &o.kind);
        let (ar, caps) = timed(kube::discovery::pinned_kind(client, &gvk)).await.unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        match timed(api.create(&PostParams::default(), &obj)).await {
            Ok(_) => {}
            // Cluster-scoped objects are shared by the install tests (and earlier runs).
            Err(kube::Error::Api(s)) if s.code == 409 && caps.scope == kube::discovery::Scope::Cluster => {}
            Err(e) => panic!("{file}: {} {} rejected: {e}", o.kind, o.name),
        }
    }
    docs
}

/// The documented post-install step: `kubectl create clusterrolebinding jac-orc-NS
/// --clusterrole=ROLE --serviceaccount=NS:jac-orc` (a binding's subject namespace cannot come
/// from `kubectl apply -n`).
async fn bind_cluster_role(client: &kube::Client, role: &str, ns: &str) {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("jac-orc-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "jac-orc", "namespace": ns}]
    }))
    .unwrap();
    timed(Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &crb)).await.unwrap();
    // The authorizer learns about new bindings through an informer: wait (bounded) until both
    // the namespaced and the cluster-scoped grant are in effect before asserting anything.
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    for _ in 0..200 {
        if allowed(client, &sa, "get", "", "services", Some(ns)).await
            && allowed(client, &sa, "get", "apiextensions.k8s.io", "customresourcedefinitions", None).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the install's grants never took effect for {sa}");
}

async fn unbind_cluster_role(client: &kube::Client, ns: &str) {
    for name in [format!("jac-orc-{ns}"), format!("jac-orc-{ns}-auth")] {
        let _ = timed(Api::<ClusterRoleBinding>::all(client.clone()).delete(&name, &DeleteParams::default())).await;
    }
}

/// The documented auth step: `kubectl create clusterrolebinding jac-orc-NS-auth
/// --clusterrole=system:auth-delegator --serviceaccount=NS:jac-orc`; then the orchestrator may
/// review tokens and access (bounded wait until the authorizer has it).
async fn bind_auth_delegator(client: &kube::Client, ns: &str) {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("jac-orc-{ns}-auth")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "jac-orc", "namespace": ns}]
    }))
    .unwrap();
    timed(Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &crb)).await.unwrap();
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    for _ in 0..200 {
        if allowed(client, &sa, "create", "authentication.k8s.io", "tokenreviews", None).await
            && allowed(client, &sa, "create", "authorization.k8s.io", "subjectaccessreviews", None).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("system:auth-delegator never took effect for {sa}");
}

/// Asks the API server whether `user` may do `verb` on `resource` (SubjectAccessReview).
/// A `resource/subresource` (`pods/log`) is asked as such.
async fn allowed(client: &kube::Client, user: &str, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub,
                                        "namespace": ns.unwrap_or("")}}
    });
    let ar = kube::api::ApiResource {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "authorization.k8s.io/v1".into(),
        kind: "SubjectAccessReview".into(),
        plural: "subjectaccessreviews".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: DynamicObject = serde_json::from_value(review).unwrap();
    let out = timed(api.create(&PostParams::default(), &obj)).await.unwrap();
    out.data["status"]["allowed"].as_bool().unwrap_or(false)
}

/// The namespaced rules a Deploy of the built-in templates needs.
const DEPLOY_NEEDS: &[(&str, &str)] = &[
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("", "pods"),
    ("", "endpoints"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("networking.k8s.io", "networkpolicies"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("mongodbcommunity.mongodb.com", "mongodbcommunity"),
    ("jac-orc.io", "jacdeployments"),
    ("jac-orc.io", "jacdeployments/status"),
    ("apps", "daemonsets"),
];

#[tokio::test]
async fn namespaced_install_grants_what_deploy_needs_in_its_namespace_only() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("install").await;
    let elsewhere = c.namespace("elsewhere").await;
    let docs = apply_manifest(&c.client, "jac-orc.yaml", &ns).await;
    bind_cluster_role(&c.client, "jac-orc-crds", &ns).await;
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    assert!(
        !allowed(&c.client, &sa, "create", "authentication.k8s.io", "tokenreviews", None).await,
        "reviews need the documented auth-delegator line"
    );
    bind_auth_delegator(&c.client, &ns).await;

    for (group, resource) in DEPLOY_NEEDS {
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(
                allowed(&c.client, &sa, verb, group, resource, Some(&ns)).await,
                "{verb} {group}/{resource} in {ns}"
            );
        }
        assert!(
            !allowed(&c.client, &sa, "create", group, resource, Some(&elsewhere)).await,
            "create {resource} outside {ns}"
        );
    }
    for verb in ["get", "list", "watch", "create", "patch"] {
        assert!(
            allowed(&c.client, &sa, verb, "apiextensions.k8s.io", "customresourcedefinitions", None).await,
            "{verb} crds"
        );
    }
    // Nothing cluster-wide beyond CRDs: no namespaces, no cluster RBAC, no nodes, no CRD deletion.
    for (verb, group, resource) in [
        ("create", "", "namespaces"),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("list", "", "nodes"),
        ("list", "", "secrets"),
    ] {
        assert!(
            !allowed(&c.client, &sa, verb, group, resource, None).await,
            "must not {verb} {group}/{resource} cluster-wide"
        );
    }
    // Leader election and Events, in the namespace.
    for (verb, group, resource) in [
        ("get", "coordination.k8s.io", "leases"),
        ("create", "coordination.k8s.io", "leases"),
        ("update", "coordination.k8s.io", "leases"),
        ("create", "events.k8s.io", "events"),
        ("patch", "events.k8s.io", "events"),
        ("create", "", "events"),
        ("patch", "jac-orc.io", "jacdeployments/finalizers"),
        // `jac-orc logs`.
        ("get", "", "pods/log"),
    ] {
        assert!(allowed(&c.client, &sa, verb, group, resource, Some(&ns)).await, "{verb} {group}/{resource} in {ns}");
    }
    assert!(!allowed(&c.client, &sa, "get", "", "pods/log", Some(&elsewhere)).await, "pod logs outside {ns}");
    assert_mode(&docs, true);
    unbind_cluster_role(&c.client, &ns).await;
}

/// Binds ClusterRole `role` to `user` in `ns` and waits (bounded) until `verb` on `resource` is
/// allowed for that user (the authorizer learns bindings through an informer).
async fn bind_user(client: &kube::Client, ns: &str, role: &str, user: &str) {
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-{}", role.replace(':', "-"))},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .unwrap();
    let api = Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns);
    timed(api.create(&PostParams::default(), &binding)).await.unwrap();
}

/// (verb, resource) pairs.
type Grants = &'static [(&'static str, &'static str)];

async fn user_may(client: &kube::Client, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": {"verb": verb, "group": "jac-orc.io", "resource": resource,
                 "subresource": sub, "namespace": ns}}
    });
    let ar = kube::api::ApiResource {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "authorization.k8s.io/v1".into(),
        kind: "SubjectAccessReview".into(),
        plural: "subjectaccessreviews".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let out = timed(api.create(&PostParams::default(), &serde_json::from_value(review).unwrap())).await.unwrap();
    out.data["status"]["allowed"].as_bool().unwrap_or(false)
}

#[tokio::test]
async fn jac_orc_roles_grant_by_level_and_aggregate_into_kubernetes_view_edit_and_admin() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("roles").await;
    apply_manifest(&c.client, "jac-orc.yaml", &ns).await;
    // (role, user, what it must allow, what it must not)
    let cases: [(&str, &str, Grants, Grants); 7] = [
        (
            "jac-orc:view",
            "viewer",
            &[("list", "jacdeployments"), ("get", "jacdeployments"), ("list", "templates")],
            &[
                ("create", "jacdeployments"),
                ("get", "jacdeployments/secrets"),
                ("get", "jacdeployments/log"),
                ("call", "modules"),
            ],
        ),
        ("jac-orc:module-caller", "caller", &[("call", "modules")], &[("list", "jacdeployments")]),
        (
            "jac-orc:edit",
            "editor",
            &[
                ("create", "jacdeployments"),
                ("delete", "jacdeployments"),
                ("get", "jacdeployments/secrets"),
                ("get", "jacdeployments/log"),
                ("call", "modules"),
            ],
            &[("update", "jacdeployments/status")],
        ),
        (
            "jac-orc:admin",
            "owner",
            &[("update", "jacdeployments/status"), ("create", "jacdeployments"), ("get", "jacdeployments/log")],
            &[],
        ),
        // Kubernetes' own roles, through aggregation.
        (
            "view",
            "k8s-viewer",
            &[("list", "jacdeployments")],
            &[("create", "jacdeployments"), ("call", "modules"), ("get", "jacdeployments/log")],
        ),
        (
            "edit",
            "k8s-editor",
            &[
                ("create", "jacdeployments"),
                ("call", "modules"),
                ("get", "jacdeployments/secrets"),
                ("get", "jacdeployments/log"),
            ],
            &[],
        ),
        ("admin", "k8s-admin", &[("update", "jacdeployments/status"), ("call", "modules")], &[]),
    ];
    for (role, user, _, _) in &cases {
        bind_user(&c.client, &ns, role, user).await;
    }
    for (role, user, yes, no) in cases {
        for (verb, resource) in yes {
            let what = format!("{role} lets {user} {verb} {resource}");
            eventually(&what, || async { user_may(&c.client, user, verb, resource, &ns).await.then_some(()) }).await;
        }
        for (verb, resource) in no {
            assert!(
                !user_may(&c.client, user, verb, resource, &ns).await,
                "{role} must not let {user} {verb} {resource}"
            );
        }
    }
}

#[tokio::test]
async fn cluster_wide_install_grants_deploy_in_every_namespace() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("install-cw").await;
    let elsewhere = c.namespace("elsewhere-cw").await;
    let docs = apply_manifest(&c.client, "jac-orc-cluster-wide.yaml", &ns).await;
    bind_cluster_role(&c.client, "jac-orc-cluster-wide", &ns).await;
    bind_auth_delegator(&c.client, &ns).await;
    let sa = format!("system:serviceaccount:{ns}:jac-orc");
    for (group, resource) in DEPLOY_NEEDS {
        for verb in ["get", "list", "create", "patch", "delete"] {
            assert!(
                allowed(&c.client, &sa, verb, group, resource, Some(&elsewhere)).await,
                "{verb} {group}/{resource} in {elsewhere}"
            );
        }
    }
    for verb in ["get", "create", "patch"] {
        assert!(allowed(&c.client, &sa, verb, "", "namespaces", None).await, "{verb} namespaces");
    }
    assert!(allowed(&c.client, &sa, "get", "", "pods/log", Some(&elsewhere)).await, "pod logs in {elsewhere}");
    for (verb, group, resource) in [
        ("list", "", "nodes"),
        ("delete", "", "namespaces"),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "", "persistentvolumes"),
    ] {
        assert!(!allowed(&c.client, &sa, verb, group, resource, None).await, "must not {verb} {group}/{resource}");
    }
    assert_mode(&docs, false);
    unbind_cluster_role(&c.client, &ns).await;
}

/// The Deployment runs our image with exec probes asking its gRPC health (they work on every
/// supported Kubernetes; native gRPC probes need 1.24) and the MODULES Secret; the Service answers
/// on 80 and 8000; restricted mode is on only in the namespaced install.
fn assert_mode(docs: &[Value], restricted: bool) {
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let probe = json!(["/usr/local/bin/jac-orc", "probe", "--port", "8000", "--timeout", "2"]);
    assert_eq!(container["readinessProbe"]["exec"]["command"], probe);
    assert_eq!(container["livenessProbe"]["exec"]["command"], probe);
    assert_eq!(container["ports"], json!([{"name": "grpc", "containerPort": 8000, "protocol": "TCP"}]));
    let service = docs.iter().find(|d| d["kind"] == "Service").expect("a Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 80, "targetPort": "grpc", "protocol": "TCP"},
               {"name": "grpc", "port": 8000, "targetPort": "grpc", "protocol": "TCP"}])
    );
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], "jac-orc");
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env["JAC_ORC_LISTEN"]["value"], "0.0.0.0:8000");
    assert_eq!(container["args"], json!(["serve", "--backend", "kube"]));
    assert_eq!(env.get("JAC_ORC_RESTRICTED_NAMESPACE").map(|e| e["value"] == "true").unwrap_or(false), restricted);
    // TLS from a mounted kubernetes.io/tls Secret when there is one (cert-manager's key names).
    assert_eq!(env["JAC_ORC_TLS_DIR"]["value"], "/etc/jac-orc/tls");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let tls = volumes.iter().find(|v| v["name"] == "tls").expect("a tls volume");
    assert_eq!(tls["secret"], json!({"secretName": "jac-orc-tls", "optional": true}));
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(&json!({"name": "tls", "mountPath": "/etc/jac-orc/tls", "readOnly": true})), "{mounts:?}");
}
