//! The reconcile loop against the API server: `kubectl apply` of a JacDeployment deploys, edits
//! redeploy, deletion undeploys; config changes roll workloads (a new config hash) while an
//! unchanged redeploy writes nothing; drift is healed, or only reported with `selfHeal: false`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::events::v1::Event;

use super::*;
use jac_splice_orc::backend::kube::resource::JacDeployment;

fn resources(c: &Cluster, ns: &str) -> Api<JacDeployment> {
    Api::namespaced(c.client.clone(), ns)
}

/// The resource once the loop has recorded an outcome for its current generation.
async fn observed(api: &Api<JacDeployment>, name: &str) -> JacDeployment {
    eventually(&format!("jacdeployment {name} reconciled"), || async {
        let jd = api.get_opt(name).await.ok()??;
        let s = jd.status.as_ref()?;
        (s.status == "deployed" && s.observed_generation == jd.metadata.generation).then_some(jd)
    })
    .await
}

/// Reasons of the Events about resource `name`.
async fn event_reasons(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let events = timed(Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default())).await.unwrap();
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits (bounded) for an Event with `reason` about resource `name` (Events are published just
/// after the status they describe).
async fn has_event(client: &kube::Client, ns: &str, name: &str, reason: &str) {
    eventually(&format!("a {reason} event about {name}"), || async {
        event_reasons(client, ns, name).await.iter().any(|r| r == reason).then_some(())
    })
    .await;
}

fn jacdeployment(ns: &str, name: &str, memory: &str) -> String {
    format!(
        "apiVersion: jac-orc.io/v1alpha1\nkind: JacDeployment\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{module: redis, config: {{memory: {memory}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_deploys_an_edit_redeploys_and_delete_undeploys() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("kubectl").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));
    let _loop = c.reconciler(&backend, &svc, &ns);
    let api = resources(&c, &ns);

    c.kubectl(&["apply", "-f", "-"], Some(&jacdeployment(&ns, "cache", "64mb"))).await;
    let jd = observed(&api, "cache").await;
    let status = jd.status.clone().unwrap();
    // Applied, without pods: Ready waits for workloads, nothing is degraded.
    assert!(!status.is("Degraded") && !status.is("Ready"), "{status:?}");
    assert_eq!(status.condition("Ready").unwrap().reason, "WaitingForWorkloads");
    let kinds: Vec<&str> = status.inventory.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "ConfigMap"]);
    assert_eq!(status.endpoints, [format!("cache.{ns}.svc:6379")]);
    assert!(jd.metadata.finalizers.unwrap_or_default().contains(&"jac-orc.io/undeploy".to_string()));
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    assert!(timed(cms.get("cache")).await.unwrap().data.unwrap()["redis-config"].contains("maxmemory 64mb"));
    // The API sees what kubectl declared, exactly as if it had been deployed through it.
    let id = jac_splice_orc::plan::DeploymentId::new(ns.as_str(), "redis", "cache").unwrap();
    let record = timed(backend.get(&id)).await.unwrap().expect("the API lists it");
    assert_eq!((record.status, record.config["memory"].as_str()), (Status::Deployed, Some("64mb")));
    let listed = c.kubectl(&["get", "jacdeployments", "-n", &ns], None).await;
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "MODULE", "VERSION", "STATUS", "ENDPOINTS", "AGE"], "{listed}");
    assert!(listed.lines().nth(1).is_some_and(|l| l.starts_with("cache") && l.contains("redis")), "{listed}");
    has_event(&c.client, &ns, "cache", "Applied").await;
    let hash = config_hash(&c.client, &ns, "cache").await;

    // An edit: the ConfigMap changes and the workload rolls.
    c.kubectl(&["apply", "-f", "-"], Some(&jacdeployment(&ns, "cache", "128mb"))).await;
    let jd = observed(&api, "cache").await;
    assert_eq!(jd.status.as_ref().unwrap().applied_revision.as_ref().unwrap().revision, 2);
    assert!(timed(cms.get("cache")).await.unwrap().data.unwrap()["redis-config"].contains("maxmemory 128mb"));
    assert_ne!(config_hash(&c.client, &ns, "cache").await, hash, "the pod template changed");
    // Nothing drifted along the way, so nothing was "healed".
    assert!(!event_reasons(&c.client, &ns, "cache").await.contains(&"Healed".to_string()));

    // Deleting the resource undeploys (kubectl waits for the finalizer).
    c.kubectl(&["delete", "jacdeployment", "cache", "-n", &ns, "--timeout=60s"], None).await;
    for (api_version, kind, plural) in
        [("v1", "Service", "services"), ("apps/v1", "Deployment", "deployments"), ("v1", "ConfigMap", "configmaps")]
    {
        assert!(!exists(&dynamic(&c.client, &ns, api_version, kind, plural), "cache").await, "{kind} survived");
    }
    assert!(timed(backend.get(&id)).await.unwrap().is_none());
}

#[tokio::test]
async fn jac_cloud_env_vars_change_the_config_hash_and_an_unchanged_redeploy_writes_nothing() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("jac-cloud").await;
    let backend = c.backend(&ns);
    let svc = service(&backend, &ns);
    let deploy = |env: &'static str| {
        let (svc, ns, backend) = (&svc, ns.clone(), backend.clone());
        async move {
            let p = plan(svc, "jac-cloud", &ns, "app", json!({"env-vars": {"GREETING": env}})).await;
            let (tx, rx) = progress();
            timed(backend.apply(&p, &ApplyOptions::default(), &tx)).await.unwrap();
            drop(tx);
            lines(&drain(rx))
        }
    };
    deploy("hello").await;
    let first = config_hash(&c.client, &ns, "app").await.expect("the Deployment carries a config hash");
    // The deployment controller writes the status; only a change of the spec moves the generation.
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), &ns);
    let generation = || async { timed(deployments.get("app")).await.unwrap().metadata.generation };
    let before = generation().await;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), &ns);
    let secret_rv = || async { timed(secrets.get("app-envs")).await.unwrap().metadata.resource_version };
    let envs_before = secret_rv().await;

    let again = deploy("hello").await;
    assert!(again.iter().all(|l| l.ends_with(" unchanged")), "{again:?}");
    assert_eq!(config_hash(&c.client, &ns, "app").await.as_deref(), Some(first.as_str()));
    assert_eq!(generation().await, before, "the Deployment's spec was not written");
    assert_eq!(secret_rv().await, envs_before, "the env Secret was not written");

    let changed = deploy("goodbye").await;
    assert!(changed.contains(&"secret/app-envs configured".to_string()), "{changed:?}");
    assert!(changed.contains(&"deployment.apps/app configured".to_string()), "{changed:?}");
    let second = config_hash(&c.client, &ns, "app").await.unwrap();
    assert_ne!(second, first, "a changed env var must roll the pods");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_healed_unless_self_heal_is_off() {
    let Some(mut c) = Cluster::connect().await else {
        return;
    };
    let ns = c.namespace("drift").await;
    let backend = c.backend(&ns);
    let svc = Arc::new(service(&backend, &ns));
    let _loop = c.reconciler(&backend, &svc, &ns);
    let healing = plan(&svc, "redis", &ns, "healed", json!({})).await;
    timed(backend.apply(&healing, &ApplyOptions::default(), &Progress::discard())).await.unwrap();
    let manual = plan(&svc, "redis", &ns, "manual", json!({})).await;
    let opts = ApplyOptions { self_heal: Some(false), ..Default::default() };
    timed(backend.apply(&manual, &opts, &Progress::discard())).await.unwrap();
    let api = resources(&c, &ns);
    assert!(!timed(api.get("manual")).await.unwrap().spec.options.self_heal, "--no-self-heal lands in the spec");

    // The Service deleted by hand comes back (a new object), and only it is applied again.
    let services = Api::<KubeService>::namespaced(c.client.clone(), &ns);
    let old_uid = timed(services.get("healed")).await.unwrap().metadata.uid;
    let cms = Api::<ConfigMap>::namespaced(c.client.clone(), &ns);
    let cm_rv = timed(cms.get("healed")).await.unwrap().metadata.resource_version;
    timed(services.delete("healed", &DeleteParams::default())).await.unwrap();
    eventually("the deleted Service is re-created", || async {
        let s = services.get_opt("healed").await.ok()??;
        (s.metadata.uid != old_uid && s.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    assert_eq!(timed(cms.get("healed")).await.unwrap().metadata.resource_version, cm_rv, "only the drifted object");

    // Replicas changed by someone else are set back.
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), &ns);
    let scale = PatchParams { field_manager: Some("kubectl-scale".into()), ..Default::default() };
    timed(deployments.patch("healed", &scale, &Patch::Merge(json!({"spec": {"replicas": 3}})))).await.unwrap();
    eventually("replicas set back to the template's", || async {
        let d = deployments.get_opt("healed").await.ok()??;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    has_event(&c.client, &ns, "healed", "Healed").await;

    // selfHeal: false: the drift is reported, and left as it is.
    timed(services.delete("manual", &DeleteParams::default())).await.unwrap();
    let jd = eventually("the drift is reported", || async {
        let jd = api.get_opt("manual").await.ok()??;
        jd.status.as_ref()?.is("Drifted").then_some(jd)
    })
    .await;
    let drifted = jd.status.unwrap().condition("Drifted").unwrap().clone();
    assert!(drifted.message.contains("service/manual"), "{drifted:?}");
    assert_eq!(drifted.reason, "SelfHealDisabled");
    assert!(timed(services.get_opt("manual")).await.unwrap().is_none(), "not healed with selfHeal: false");
    has_event(&c.client, &ns, "manual", "Drifted").await;
}
