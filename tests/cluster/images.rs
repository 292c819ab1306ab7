//! The Dockerfiles (for users with a registry) and the offline image definitions
//! (`images/images.json`, built by `scripts/images.sh` for the test cluster) describe the same
//! images, and the manifests and templates name them. Needs no cluster.

use std::path::Path;

use serde_json::{json, Value};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn definitions() -> Value {
    serde_json::from_str(&read("images/images.json")).expect("images/images.json is JSON")
}

/// The instructions of a Dockerfile's last stage: (INSTRUCTION, arguments), continuations joined.
fn final_stage(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let instructions: Vec<(String, String)> = joined
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (i, rest) = l.trim().split_once(char::is_whitespace).unwrap_or((l.trim(), ""));
            (i.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").expect("a FROM");
    instructions[last_from..].to_vec()
}

fn one(stage: &[(String, String)], instruction: &str) -> String {
    let found: Vec<&String> = stage.iter().filter(|(i, _)| i == instruction).map(|(_, a)| a).collect();
    assert_eq!(found.len(), 1, "exactly one {instruction} in the final stage: {found:?}");
    found[0].clone()
}

fn runs(stage: &[(String, String)]) -> String {
    stage.iter().filter(|(i, _)| i == "RUN").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" && ")
}

fn json_of(instruction_args: &str) -> Value {
    serde_json::from_str(instruction_args).unwrap_or_else(|e| panic!("exec form expected ({e}): {instruction_args}"))
}

/// containerd's normalisation of an image reference (what the kubelet looks up).
fn normalized(image: &str) -> String {
    let with_registry = if image.split('/').next().is_some_and(|first| first.contains('.') || first.contains(':'))
        && image.contains('/')
    {
        image.to_string()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    };
    let last = with_registry.rsplit('/').next().unwrap();
    if last.contains(':') || last.contains('@') {
        with_registry
    } else {
        format!("{with_registry}:latest")
    }
}

/// `useradd --uid U --gid G --home-dir H ... NAME` as (U:G, H, NAME).
fn useradd(run: &str) -> (String, String, String) {
    let cmd = run.split("useradd").nth(1).expect("a useradd");
    let words: Vec<&str> = cmd.split("&&").next().unwrap().split_whitespace().collect();
    let arg = |flag: &str| words.iter().position(|w| *w == flag).map(|i| words[i + 1].to_string()).expect(flag);
    (format!("{}:{}", arg("--uid"), arg("--gid")), arg("--home-dir"), words.last().unwrap().to_string())
}

#[test]
fn normalisation_follows_containerd() {
    assert_eq!(normalized("redis"), "docker.io/library/redis:latest");
    assert_eq!(normalized("jac-orc:0.1.0"), "docker.io/library/jac-orc:0.1.0");
    assert_eq!(normalized("rtsp/mongosh:2.4.2"), "docker.io/rtsp/mongosh:2.4.2");
    assert_eq!(normalized("quay.io/mongodb/op:0.12.0"), "quay.io/mongodb/op:0.12.0");
}

#[test]
fn the_jac_orc_dockerfile_builds_what_the_offline_definition_describes() {
    let def = &definitions()["jac-orc"];
    let stage = final_stage(&read("Dockerfile"));
    assert!(one(&stage, "FROM").contains("bookworm"), "same distribution as the debootstrap base");
    assert_eq!(def["base"]["variant"], "minbase");
    assert_eq!(one(&stage, "USER"), def["user"].as_str().unwrap());
    assert_eq!(json_of(&one(&stage, "ENTRYPOINT")), def["entrypoint"]);
    assert_eq!(json_of(&one(&stage, "CMD")), def["cmd"]);
    let copy = one(&stage, "COPY");
    assert!(copy.ends_with(&format!(" {}", def["binary"].as_str().unwrap())), "binary at the same path: {copy}");
    assert_eq!(def["entrypoint"][0], def["binary"]);
    assert_eq!(one(&stage, "EXPOSE"), def["expose"][0].to_string());
    let (user, home, name) = useradd(&runs(&stage));
    assert_eq!(
        (user.as_str(), home.as_str(), name.as_str()),
        (def["user"].as_str().unwrap(), def["home"].as_str().unwrap(), def["user_name"].as_str().unwrap())
    );
    assert!(
        def["user"].as_str().unwrap().split(':').all(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
        "numeric, non-root"
    );
}

#[test]
fn the_module_dockerfile_builds_what_the_offline_definition_describes() {
    let def = &definitions()["jac-splice-module"];
    let stage = final_stage(&read("python/Dockerfile"));
    assert!(one(&stage, "FROM").contains("bookworm"));
    let run = runs(&stage);
    for package in def["base"]["packages"].as_array().unwrap() {
        assert!(run.contains(&format!(" {}", package.as_str().unwrap())), "apt installs {package}: {run}");
    }
    let user = one(&stage, "USER");
    assert_eq!(user, def["user"].as_str().unwrap(), "numeric USER, so runAsNonRoot pods can start");
    assert!(user.split(':').all(|n| n.parse::<u32>().is_ok_and(|n| n > 0)));
    let (uid, home, name) = useradd(&run);
    assert_eq!(
        (uid.as_str(), home.as_str(), name.as_str()),
        (def["user"].as_str().unwrap(), def["home"].as_str().unwrap(), def["user_name"].as_str().unwrap())
    );
    assert_eq!(one(&stage, "WORKDIR"), def["workdir"].as_str().unwrap());
    assert_eq!(json_of(&one(&stage, "ENTRYPOINT")), def["entrypoint"]);
    assert_eq!(json_of(&one(&stage, "CMD")), def["cmd"]);
    assert_eq!(one(&stage, "EXPOSE"), def["expose"][0].to_string());
    let env_line = one(&stage, "ENV");
    let env: Vec<&str> = env_line.split_whitespace().collect();
    let want: Vec<&str> = def["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(env, want);
    let numpy = def["pip"].as_array().unwrap().iter().find_map(|p| p.as_str()?.strip_prefix("numpy==")).unwrap();
    assert_eq!(one(&stage, "ARG"), format!("NUMPY_VERSION={numpy}"), "the same numpy");
    assert!(run.contains("\"numpy==${NUMPY_VERSION}\""), "{run}");
}

#[test]
fn manifests_templates_and_the_test_cluster_name_the_defined_images() {
    let defs = definitions();
    let name = |image: &str| defs[image]["name"].as_str().unwrap().to_string();
    for file in ["manifests/jac-orc.yaml", "manifests/jac-orc-cluster-wide.yaml"] {
        let text = read(file);
        let image = text.lines().find_map(|l| l.trim().strip_prefix("image: ")).expect("an image");
        assert_eq!(normalized(image), name("jac-orc"), "{file}");
        let probe = format!("exec: {{command: [{}, probe,", defs["jac-orc"]["binary"].as_str().unwrap());
        assert!(text.contains(&probe), "{file}: the exec probe runs the image's binary ({probe})");
    }
    let placeholders: Value =
        serde_norway::from_str(&read("templates/python-module/latest/placeholders.yaml")).unwrap();
    let default_image = placeholders["placeholders"]["image"]["default"].as_str().unwrap();
    assert_eq!(normalized(default_image), name("jac-splice-module"));
    let module = read("templates/python-module/latest/python-module.yaml");
    assert!(module.contains(r#"jac-orc.io/grpc-probe-exec: '["python", "-m", "jac_splice.probe"]'"#));
    let redis = read("templates/redis/latest/redis.yaml");
    let image = redis.lines().find_map(|l| l.trim().strip_prefix("image: ")).unwrap();
    assert_eq!(normalized(image), name("redis"), "the stand-in answers to the template's image");
    let cluster = read("scripts/k8s-test-cluster.sh");
    assert!(cluster.contains(&format!("sandbox_image = \"{}\"", name("pause"))), "containerd's sandbox image");
    assert_eq!(json!(defs["jac-splice-module"]["python_version"]), json!("3.11"), "bookworm's python3");
}
