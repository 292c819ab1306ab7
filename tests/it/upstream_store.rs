//! The original's template store works unchanged: every module/version dry-runs.

use std::sync::Arc;

use jac_splice_orc::backend::local::{LocalBackend, LocalOptions};
use jac_splice_orc::catalog::{Catalog, Format};
use jac_splice_orc::service::{DeploymentRequest, Service, Settings};
use serde_json::{json, Map, Value};

use crate::support::{upstream_store, yaml_docs};

fn service(catalog: Catalog, dir: &std::path::Path) -> Service {
    let backend =
        Arc::new(LocalBackend::open(LocalOptions { data_dir: dir.to_path_buf(), python: "python3".into() }).unwrap());
    Service::new(Arc::new(catalog), backend, Settings::default())
}

#[test]
fn every_module_and_version_of_the_original_store_dry_runs() {
    let store = upstream_store();
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(&store).unwrap(), tmp.path());
    let index = svc.catalog().index();
    assert_eq!(index.keys().cloned().collect::<Vec<_>>(), ["jac-cloud", "mongodb", "mongodb-cluster", "redis"]);
    let mut count = 0;
    for (module, versions) in &index {
        for version in versions {
            let t = svc.catalog().load(module, version).unwrap();
            assert_eq!(t.format, Format::Legacy, "{module}/{version}");
            for config in
                [Map::new(), json!({"name": "testing-db", "namespace": "testing"}).as_object().unwrap().clone()]
            {
                let req = DeploymentRequest { module: module.clone(), version: Some(version.clone()), config };
                let dry = svc.dry_run(&req).unwrap_or_else(|e| panic!("{module}/{version}: {e}"));
                assert!(!dry.modules.is_empty());
                for f in dry.dependencies.iter().flatten().chain(&dry.modules) {
                    let docs = yaml_docs(&f.text);
                    assert!(!docs.is_empty(), "{module}/{version}/{}", f.name);
                    assert!(
                        !f.text.contains("$g{") && !f.text.contains("$a{") && !f.text.contains("$d{"),
                        "{module}/{version}/{}",
                        f.name
                    );
                }
                assert!(!dry.objects.is_empty());
                count += 1;
            }
        }
    }
    assert_eq!(count, 16);
}

#[test]
fn the_seed_example_against_the_original_store_reports_upstream_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(Catalog::directory_only(upstream_store()).unwrap(), tmp.path());
    let req = DeploymentRequest {
        module: "mongodb".into(),
        version: None,
        config: json!({"name": "testing-db", "namespace": "testing"}).as_object().unwrap().clone(),
    };
    let dry = svc.dry_run(&req).unwrap();
    let p: std::collections::HashMap<_, _> = dry.placeholders.iter().cloned().collect();
    assert_eq!(p["name"].current, json!("testing-db"));
    assert_eq!(p["name"].default, json!("jac-mongodb"));
    assert_eq!(p["namespace"].current, json!("testing"));
    assert_eq!(p["replicaset"].default, json!(1));
    assert_eq!(p["password"].default, json!("12345678"));
    let deps: Vec<_> = dry.dependencies.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(deps, ["custom_resource_definition.yaml", "operator.yaml"]);
    let docs = yaml_docs(&dry.modules[0].text);
    assert_eq!(docs[0]["metadata"]["name"], Value::from("testing-db"));
    assert_eq!(docs[1]["metadata"]["name"], Value::from("my-user-password"));
}

#[test]
fn a_directory_overrides_builtin_versions_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let v = store.path().join("redis/latest");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(
        v.join("redis.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: $g{name:\"overridden\"}\n  namespace: $g{namespace}\n",
    )
    .unwrap();
    let svc = service(Catalog::with_override(store.path()).unwrap(), tmp.path());
    let dry = svc.dry_run(&DeploymentRequest { module: "redis".into(), ..Default::default() }).unwrap();
    assert_eq!(dry.id.name, "overridden");
    let dry = svc
        .dry_run(&DeploymentRequest { module: "redis".into(), version: Some("7.4.2".into()), ..Default::default() })
        .unwrap();
    assert_eq!(dry.id.name, "jac-redis");
    assert!(svc.catalog().index().contains_key("mongodb"));
}
