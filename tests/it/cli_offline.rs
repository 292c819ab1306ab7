//! What the CLI does with no server at all: `template`, values files and their errors, the
//! positional NAME, `completion`, and quiet exits on a closed pipe.

use serde_json::Value;

use super::{assert_not_json, write_file, JacOrc};
use crate::support::yaml_docs;

fn label<'a>(doc: &'a Value, key: &str) -> &'a Value {
    &doc["metadata"]["labels"][key]
}

#[test]
fn template_renders_offline_as_labelled_documents_in_apply_order() {
    let r = JacOrc::offline(&["template", "redis", "cache", "-n", "team-a", "--set", "memory=64mb"]).run();
    let out = r.out();
    assert!(out.starts_with("# jac-orc template redis/latest as team-a/redis/cache"), "{out}");
    assert_eq!(out.matches("\n---\n").count(), 3, "{out}");
    let docs = yaml_docs(out);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "ConfigMap"]);
    for d in &docs {
        assert_eq!(d["metadata"]["name"], "cache");
        assert_eq!(d["metadata"]["namespace"], "team-a");
        assert_eq!(label(d, "app.kubernetes.io/managed-by"), "jac-orc");
        assert_eq!(label(d, "jac-orc/module"), "redis");
        assert_eq!(label(d, "jac-orc/deployment"), "cache");
        assert_eq!(label(d, "jac-orc/namespace"), "team-a");
        assert_eq!(d["metadata"]["annotations"]["jac-orc/version"], "latest");
    }
    // Quantities as the kube backend applies them (server-side apply refuses bare numbers).
    let limits = &docs[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["cpu"], "0.2", "{limits}");
    assert!(docs[2]["data"].to_string().contains("maxmemory 64mb"), "{}", docs[2]);

    // JSON: a v1 List of the same objects; table: what would be applied.
    let list = JacOrc::offline(&["template", "redis", "cache", "-n", "team-a", "--set", "memory=64mb", "-o", "json"])
        .run()
        .json();
    assert_eq!((list["apiVersion"].as_str(), list["kind"].as_str()), (Some("v1"), Some("List")));
    assert_eq!(list["items"].as_array().unwrap(), &docs);
    let table = JacOrc::offline(&["template", "redis", "cache", "-o", "table"]).run();
    assert_not_json(table.out(), "template -o table");
    assert!(table.stdout.contains("deployment.apps/cache  default"), "{}", table.stdout);
}

/// The container resources of the python-module Deployment `template` renders with `sets`.
fn module_resources(sets: &[&str]) -> Value {
    let mut args = vec!["template", "python-module", "np", "--set", "module=numpy", "--set", "cpu=50m"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let docs = yaml_docs(JacOrc::offline(&args).run().out());
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"].clone()
}

#[test]
fn a_python_modules_cpu_limit_defaults_to_its_request_and_may_be_raised_to_burst() {
    let same = module_resources(&[]);
    assert_eq!((&same["requests"]["cpu"], &same["limits"]["cpu"]), (&Value::from("50m"), &Value::from("50m")));
    let burst = module_resources(&["cpu-limit=1"]);
    assert_eq!((&burst["requests"]["cpu"], &burst["limits"]["cpu"]), (&Value::from("50m"), &Value::from("1")));
    let r =
        JacOrc::offline(&["template", "python-module", "np", "--set", "module=numpy", "--set", "cpu-limit=-1"]).run();
    assert!(r.err().contains("cpu-limit") && r.err().contains("negative"), "{}", r.stderr);
}

#[test]
fn template_without_a_name_uses_the_templates_default_and_an_override_directory_works() {
    let docs = yaml_docs(JacOrc::offline(&["template", "redis"]).run().out());
    assert_eq!(docs[0]["metadata"]["name"], "jac-redis");
    assert_eq!(docs[0]["metadata"]["namespace"], "default");

    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("hello/v1");
    std::fs::create_dir_all(&version).unwrap();
    write_file(
        &version,
        "placeholders.yaml",
        "placeholders:\n  name: {type: string, default: hi}\n  namespace: {type: string, default: \"\"}\n",
    );
    write_file(
        &version,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{name}}\n  namespace: {{namespace}}\ndata: {a: b}\n",
    );
    let path = dir.path().display().to_string();
    let docs = yaml_docs(
        JacOrc::offline(&["template", "hello", "x", "--version", "v1", "--manifests-path", &path]).run().out(),
    );
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["metadata"]["name"], "x");
    assert_eq!(label(&docs[0], "jac-orc/module"), "hello");
    let r = JacOrc::offline(&["template", "nope"]).run();
    assert!(r.err().contains("unknown module `nope`"), "{}", r.stderr);
}

/// The password of the rendered mongodb user Secret.
fn password(out: &str) -> String {
    let docs = yaml_docs(out);
    let secret = docs.iter().find(|d| d["kind"] == "Secret").expect("a Secret");
    secret["stringData"]["password"].as_str().expect("a password").to_string()
}

#[test]
fn template_generates_missing_secrets_afresh_and_marks_them() {
    let first = JacOrc::offline(&["template", "mongodb", "db"]).run();
    let second = JacOrc::offline(&["template", "mongodb", "db"]).run();
    let (a, b) = (password(first.out()), password(second.out()));
    assert!(a.len() >= 24 && b.len() >= 24, "{a} {b}");
    assert_ne!(a, b, "never a fixed password");
    assert!(
        first.stdout.lines().take(3).any(|l| l.starts_with("# Secret placeholder `password` was generated")),
        "{}",
        first.stdout
    );
    let marked = first.stdout.split("\n---\n").filter(|d| d.contains("# Generated secret: password")).count();
    assert_eq!(marked, 1, "only the Secret holding it is marked");

    let chosen = JacOrc::offline(&["template", "mongodb", "db", "--set-string", "password=chosen-password-1"]).run();
    assert_eq!(password(chosen.out()), "chosen-password-1");
    assert!(!chosen.stdout.contains("generated"), "{}", chosen.stdout);
}

#[test]
fn values_files_merge_in_order_then_set_and_set_string_win() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.yaml", "memory: 64mb\ncpu: 0.5\n");
    let b = write_file(dir.path(), "b.json", r#"{"memory": "128mb"}"#);
    let docs = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["template", "redis", "cache"];
        all.extend_from_slice(args);
        yaml_docs(JacOrc::offline(&all).run().out())
    };
    let cpu =
        |docs: &[Value]| docs[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"].clone();
    let memory = |docs: &[Value]| docs[2]["data"]["redis-config"].as_str().unwrap().to_string();

    let d = docs(&["-f", &a, "-f", &b]);
    assert!(memory(&d).contains("maxmemory 128mb"), "the later file wins: {}", memory(&d));
    assert_eq!(cpu(&d), "0.5");
    let d = docs(&["-f", &b, "-f", &a]);
    assert!(memory(&d).contains("maxmemory 64mb"), "{}", memory(&d));
    let d = docs(&["-f", &a, "-f", &b, "--set", "cpu=0.3", "--set-string", "memory=1gb", "--values", &a]);
    assert_eq!(cpu(&d), "0.3", "--set wins over every file");
    assert!(memory(&d).contains("maxmemory 1gb"), "{}", memory(&d));

    // `-f -` reads stdin.
    let out = JacOrc::offline(&["template", "redis", "cache", "-f", "-"]).stdin("memory: 32mb\n").run();
    assert!(memory(&yaml_docs(out.out())).contains("maxmemory 32mb"));
}

#[test]
fn values_errors_name_the_file_and_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = write_file(dir.path(), "bad.yaml", "memory: 64mb\ncpu: [1\n");
    let r = JacOrc::offline(&["template", "redis", "-f", &bad_yaml]).run();
    assert!(r.err().contains(&format!("values file {bad_yaml}")) && r.stderr.contains("line"), "{}", r.stderr);

    let bad_json = write_file(dir.path(), "bad.json", r#"{"memory": "8mb", "cpu": }"#);
    let r = JacOrc::offline(&["template", "redis", "-f", &bad_json]).run();
    assert!(r.err().contains(&format!("values file {bad_json}")), "{}", r.stderr);

    let list = write_file(dir.path(), "list.yaml", "- memory\n");
    let r = JacOrc::offline(&["template", "redis", "-f", &list]).run();
    assert!(r.err().contains("the top level must be a map"), "{}", r.stderr);

    let r = JacOrc::offline(&["template", "redis", "-f", "/definitely/missing.yaml"]).run();
    assert!(r.err().contains("cannot read values file /definitely/missing.yaml"), "{}", r.stderr);

    let wrong = write_file(dir.path(), "wrong.yaml", "cpu: {a: 1}\n");
    let fine = write_file(dir.path(), "fine.yaml", "cpu: 0.5\n");
    let r = JacOrc::offline(&["template", "redis", "-f", &fine, "-f", &wrong]).run();
    let err = r.err();
    assert!(err.contains("placeholder `cpu` expects quantity, got map"), "{err}");
    assert!(err.contains(&format!("config.cpu was set by values file {fine}, then values file {wrong}")), "{err}");

    let unknown = write_file(dir.path(), "unknown.yaml", "replicas: 3\n");
    let r = JacOrc::offline(&["template", "redis", "-f", &unknown]).run();
    assert!(r.err().contains("unknown placeholder `replicas`") && r.stderr.contains(&unknown), "{}", r.stderr);
}

#[test]
fn deploy_needs_a_positional_name_and_a_different_one_elsewhere_is_a_conflict() {
    let r = JacOrc::offline(&["deploy", "redis", "--set", "name=cache"]).run();
    assert_eq!(r.code, Some(2), "a usage error: {}", r.stderr);
    assert!(r.stderr.contains("<NAME>"), "{}", r.stderr);

    // Refused before any server is asked (there is none).
    let r = JacOrc::offline(&["deploy", "redis", "cache", "--set", "name=other"]).run();
    assert!(r.err().contains("name is `other` from --set but `cache` from the NAME argument"), "{}", r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let ns = write_file(dir.path(), "ns.yaml", "namespace: prod\n");
    let r = JacOrc::offline(&["deploy", "redis", "cache", "-n", "dev", "-f", &ns]).run();
    assert!(
        r.err().contains(&format!("namespace is `prod` from values file {ns} but `dev` from -n/--namespace")),
        "{}",
        r.stderr
    );

    // Agreeing is fine: the same rendering.
    let plain = JacOrc::offline(&["template", "redis", "cache"]).run();
    let agreeing = JacOrc::offline(&["template", "redis", "cache", "--set", "name=cache"]).run();
    assert_eq!(yaml_docs(plain.out()), yaml_docs(agreeing.out()));
    // Without a server, deploy says where it looked.
    let r = JacOrc::offline(&["deploy", "redis", "cache"]).run();
    assert!(r.err().contains("cannot reach jac-orc at http://127.0.0.1:1"), "{}", r.stderr);
}

#[test]
fn completion_scripts_are_generated_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef jac-orc"), ("fish", "complete -c jac-orc")] {
        let script = JacOrc::offline(&["completion", shell]).run().out().to_string();
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["deploy", "template", "status", "completion", "values", "namespace", "dry-run"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        let path = write_file(dir.path(), &format!("jac-orc.{shell}"), &script);
        // Each shell's own syntax check, where that shell is installed (bash always is).
        let check: &[&str] = match shell {
            "bash" => &["bash", "-n"],
            "zsh" => &["zsh", "-n"],
            _ => &["fish", "--no-execute"],
        };
        match std::process::Command::new(check[0]).args(&check[1..]).arg(&path).output() {
            Ok(out) => assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) if shell == "bash" => panic!("bash: {e}"),
            Err(_) => eprintln!("{shell} is not installed: its script was checked by content only"),
        }
    }
    let r = JacOrc::offline(&["completion", "tcsh"]).run();
    assert_eq!(r.code, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_commands_exit_quietly_into_a_closed_pipe() {
    for args in [
        &["template", "redis", "x"][..],
        &["template", "mongodb", "x", "-o", "json"],
        &["template", "redis", "x", "-o", "table"],
        &["completion", "bash"],
    ] {
        super::assert_quiet_on_closed_pipe(JacOrc::offline(args), &args.join(" "));
    }
}
