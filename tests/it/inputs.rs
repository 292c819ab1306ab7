//! What a request may not smuggle in (issue 9, "Inputs"): pip arguments in `packages` (options,
//! an index of the caller's, a local project with a setup.py, VCS and file URLs), quantities out
//! of bounds, and list elements of the wrong type. Each is refused with 400 / InvalidArgument
//! naming the element before anything runs, and nothing of a file pip was pointed at shows up in
//! the answer, the stored record or the orchestrator's log. Packages come from the operator's
//! `--pip-find-links` folder (never PyPI here).

use serde_json::{json, Value};
use tonic_types::StatusExt;

use crate::local_backend::lab::{build_wheel, grpc_deploy, module_serving, Lab, Serve};
use crate::support::{struct_of, within, TestServer};

/// Lines of /etc/passwd long enough not to occur by chance (`root:x:0:0:root:/root:/bin/bash`).
fn passwd_lines() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let lines: Vec<String> = text.lines().map(str::trim).filter(|l| l.len() >= 12).map(String::from).collect();
    assert!(!lines.is_empty(), "/etc/passwd has lines to look for");
    lines
}

/// The REST and gRPC answers to deploying python-module with `packages`, and the REST dry run's.
async fn refusals(serve: &Serve, packages: &Value) -> (Value, Value, String) {
    let http = serve.http();
    let config = json!({"name": "inj", "module": "json", "packages": packages});
    let mut bodies = Vec::new();
    for path in ["deployment", "deployment/dry_run"] {
        let r = within(
            http.post(format!("{}/{path}", serve.url))
                .json(&json!({"module": "python-module", "config": config}))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{path} {packages}");
        bodies.push(r.json::<Value>().await.unwrap());
    }
    let status = grpc_deploy(serve, "python-module", config).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let field = status.get_error_details().bad_request().expect("a field violation").field_violations[0].field.clone();
    let (deploy, dry_run) = (bodies.remove(0), bodies.remove(0));
    assert_eq!(deploy["field"], dry_run["field"]);
    assert_eq!(deploy["field"].as_str(), Some(field.as_str()), "gRPC names the same element");
    (deploy, dry_run, status.message().to_string())
}

#[tokio::test]
async fn pip_injection_strings_are_refused_naming_the_element_and_the_files_lines_appear_nowhere() {
    // An index the caller would like pip to use, and a local project whose setup.py would run.
    let index = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    index.set_nonblocking(true).unwrap();
    let index_url = format!("http://127.0.0.1:{}/simple", index.local_addr().unwrap().port());
    let project = tempfile::tempdir().unwrap();
    let ran = project.path().join("setup-py-ran");
    std::fs::write(
        project.path().join("setup.py"),
        format!("open({:?}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='evil')\n", ran.display()),
    )
    .unwrap();
    let project_path = project.path().display().to_string();
    let attacks = [
        (json!(["-r", "/etc/passwd"]), "config.packages[0]", "pip option"),
        (json!(["numpy", "--index-url", index_url, "numpy"]), "config.packages[1]", "pip option"),
        (json!(["numpy", "-i", index_url]), "config.packages[1]", "pip option"),
        (json!([project_path]), "config.packages[0]", "path"),
        (json!([format!("{project_path}/setup.py")]), "config.packages[0]", "path"),
        (json!(["git+https://github.com/Jaseci-Labs/jac-splice-orc"]), "config.packages[0]", "URL"),
        (json!([format!("evil @ file://{project_path}")]), "config.packages[0]", "URL"),
        (json!(["numpy\n-r /etc/passwd"]), "config.packages[0]", "printable ASCII"),
        (json!(["numpy; os_name == \"posix\" -r /etc/passwd"]), "config.packages[0]", "pip option"),
    ];
    let mut lab = Lab::new();
    let serve = lab.serve().await;
    let mut answers = String::new();
    for (packages, field, reason) in &attacks {
        let (deploy, dry_run, grpc) = refusals(&serve, packages).await;
        assert_eq!(deploy["field"], *field, "{packages}: {deploy}");
        assert_eq!(deploy["reason"], "INVALID_VALUE", "{deploy}");
        assert!(deploy["detail"].as_str().unwrap().contains(reason), "{packages}: {deploy}");
        answers.push_str(&format!("{deploy}\n{dry_run}\n{grpc}\n"));
    }
    assert!(serve.records().await.is_empty(), "nothing was recorded");
    assert!(!lab.deployment_dir("python-module", "inj").exists(), "no virtualenv, no venv.log");
    serve.term().await;

    let log = (1..=lab.started)
        .map(|n| std::fs::read_to_string(lab.tmp.path().join(format!("serve-{n}.log"))).unwrap_or_default())
        .collect::<String>();
    let state = std::fs::read_to_string(lab.data.join("local-state.json")).unwrap_or_default();
    for line in passwd_lines() {
        for (what, text) in [("an answer", &answers), ("the orchestrator's log", &log), ("the state file", &state)] {
            assert!(!text.contains(&line), "a line of /etc/passwd is in {what}: {line}");
        }
    }
    assert!(!ran.exists(), "the project's setup.py ran");
    assert_eq!(index.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "something asked the index");
}

#[tokio::test]
async fn packages_install_from_the_operators_find_links_folder() {
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path());
    let mut lab = Lab::new().arg("--pip-find-links").arg(wheels.path().display().to_string());
    let serve = lab.serve().await;
    let config = json!({"name": "pkg", "module": "jacorc_crash_pkg", "packages": ["jacorc-crash-pkg==1.0"]});
    let endpoint = grpc_deploy(&serve, "python-module", config).await.expect("installed from the folder");
    // The module server imported the package from the deployment's virtualenv.
    assert!(module_serving(&endpoint).await);
    let venv = lab.deployment_dir("python-module", "pkg").join("venv");
    let python = venv.join("bin").join("python");
    let found = std::process::Command::new(&python)
        .args(["-c", "import jacorc_crash_pkg, sys; sys.stdout.write(jacorc_crash_pkg.__file__)"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&found.stdout).starts_with(&venv.display().to_string()), "{found:?}");
    serve.term().await;
}

/// A dry run's status and body over REST.
async fn dry_run(server: &TestServer, module: &str, config: Value) -> (u16, Value) {
    let r = within(
        server
            .http()
            .post(format!("{}/deployment/dry_run", server.url()))
            .json(&json!({"module": module, "config": config}))
            .send(),
    )
    .await
    .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn quantities_out_of_bounds_or_malformed_are_400_naming_the_placeholder() {
    let server = TestServer::start().await;
    let module = |extra: Value| {
        let mut c = json!({"name": "q", "module": "json"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let attacks = [
        ("python-module", module(json!({"cpu": "-1"})), "config.cpu", "negative"),
        ("python-module", module(json!({"cpu": -1})), "config.cpu", "negative"),
        ("python-module", module(json!({"memory": "1e308"})), "config.memory", "larger"),
        ("python-module", module(json!({"memory": 1e308})), "config.memory", "larger"),
        ("python-module", module(json!({"memory": "9Ei"})), "config.memory", "larger"),
        ("python-module", module(json!({"cpu": "1e-400"})), "config.cpu", "smaller"),
        ("python-module", module(json!({"memory": "1Gi\nkind: Secret"})), "config.memory", "not a Kubernetes quantity"),
        ("python-module", module(json!({"memory": "0x10"})), "config.memory", "not a Kubernetes quantity"),
        ("redis", json!({"cpu": "-0.5"}), "config.cpu", "negative"),
        ("jac-cloud", json!({"memory-limit": "2000MB"}), "config.memory-limit", "not a Kubernetes quantity"),
    ];
    let mut grpc = server.grpc().await;
    for (template, config, field, reason) in attacks {
        let (status, body) = dry_run(&server, template, config.clone()).await;
        assert_eq!(status, 400, "{config}: {body}");
        assert_eq!(body["field"], field, "{body}");
        assert_eq!(body["reason"], "INVALID_VALUE", "{body}");
        assert!(body["detail"].as_str().unwrap().contains(reason), "{config}: {body}");
        let request = jac_splice_orc::pb::DryRunRequest {
            module: template.into(),
            config: Some(struct_of(config)),
            ..Default::default()
        };
        let status = within(grpc.dry_run(request)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, field);
    }
    let (status, body) = dry_run(&server, "python-module", module(json!({"cpu": "250m", "memory": 0.5}))).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_list_element_of_the_wrong_type_is_400_naming_the_element_not_422() {
    let server = TestServer::start().await;
    let cases = [
        ("python-module", json!({"name": "l", "module": "json", "packages": ["numpy", 3]}), "config.packages[1]"),
        (
            "python-module",
            json!({"name": "l", "module": "json", "packages": [{"name": "numpy"}]}),
            "config.packages[0]",
        ),
        ("jac-cloud", json!({"args": ["echo hi", {"sh": "id"}]}), "config.args[1]"),
        ("jac-cloud", json!({"args": [["nested"]]}), "config.args[0]"),
    ];
    for (template, config, field) in cases {
        let (status, body) = dry_run(&server, template, config.clone()).await;
        assert_eq!(status, 400, "{config}: {body}");
        assert_eq!((body["field"].as_str(), body["reason"].as_str()), (Some(field), Some("WRONG_TYPE")), "{body}");
    }
    let many: Vec<String> = (0..65).map(|i| format!("pkg{i}")).collect();
    let (status, body) =
        dry_run(&server, "python-module", json!({"name": "l", "module": "json", "packages": many})).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("config.packages")), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn module_pods_read_the_package_index_from_the_operators_secret_and_packages_only_as_requirement_lines() {
    let server = TestServer::start().await;
    let config = json!({"name": "np", "module": "numpy", "packages": ["numpy==2.1.3", "scipy>=1.13; python_version >= \"3.10\""]});
    let (status, body) = dry_run(&server, "python-module", config).await;
    assert_eq!(status, 200, "{body}");
    let docs = crate::support::yaml_docs(body["modules"]["python-module.yaml"].as_str().unwrap());
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let index = env.iter().find(|e| e["name"] == "PIP_INDEX_URL").expect("PIP_INDEX_URL");
    assert_eq!(
        index["valueFrom"]["secretKeyRef"],
        json!({"name": "jac-orc-pip", "key": "index-url", "optional": true})
    );
    let packages = env.iter().find(|e| e["name"] == "JAC_SPLICE_PACKAGES").unwrap();
    assert_eq!(packages["value"], "numpy==2.1.3\nscipy>=1.13; python_version >= \"3.10\"\n");
    server.stop().await;
}
