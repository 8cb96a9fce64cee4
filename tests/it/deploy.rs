//! The deployment files against the code: docker-compose.yml and deploy/kubernetes use
//! only variables the binaries know (the doctor Job only doctor's), the Kubernetes
//! workflow is valid, and the PrometheusRule carries exactly the alert rules of
//! deploy/prometheus/alerts.yml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A binary of the workspace next to `baton` (the services' are built by
/// `cargo test --workspace` / `cargo build --workspace`).
fn binary(name: &str) -> PathBuf {
    baton_testkit::workspace_binary(env!("CARGO_BIN_EXE_baton"), name)
}

/// `--help` of `binary args…`.
fn help(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?} --help",
        binary.display()
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every `[env: NAME]` the help texts document.
fn documented_env(helps: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for text in helps {
        for part in text.split("[env: ").skip(1) {
            if let Some(end) = part.find(']') {
                names.insert(part[..end].to_owned());
            }
        }
    }
    names
}

/// Every variable name of the form `BATON_…` or `AMQP_…` in `text`, as a YAML key
/// (`BATON_X:`, compose) or a Kubernetes env entry (`- name: BATON_X`).
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let candidate = line
            .strip_prefix("- name: ")
            .or_else(|| line.split_once(':').map(|(key, _)| key))
            .unwrap_or("")
            .trim();
        let is_name = candidate
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if is_name && (candidate.starts_with("BATON_") || candidate.starts_with("AMQP_")) {
            names.insert(candidate.to_owned());
        }
    }
    names
}

/// What `baton run`, `pay`, `doctor` and the four service binaries document.
fn known_variables() -> BTreeSet<String> {
    let baton = Path::new(env!("CARGO_BIN_EXE_baton"));
    let mut helps = vec![
        help(baton, &["run"]),
        help(baton, &["pay"]),
        help(baton, &["doctor"]),
    ];
    for service in [
        "baton-authorization",
        "baton-risk",
        "baton-pci",
        "baton-transaction",
    ] {
        helps.push(help(&binary(service), &[]));
    }
    let mut known = documented_env(&helps);
    // Read by every binary from the environment only (README "Configuration").
    known.insert("BATON_DELIVERY_LIMIT".into());
    known
}

#[test]
fn every_variable_of_docker_compose_is_one_the_binaries_read() {
    let compose = repo_file("docker-compose.yml");
    let used = variables_in(&compose);
    assert!(
        used.contains("BATON_JOURNAL_URL") && used.contains("AMQP_URL"),
        "the scan found the compose file's variables: {used:?}"
    );
    let known = known_variables();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "docker-compose.yml sets {unknown:?}, which no binary's --help documents \
         (known: {known:?})"
    );
}

/// Every manifest of deploy/kubernetes, applied or created on its own, by file name.
fn kubernetes_manifests() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

#[test]
fn every_variable_of_the_kubernetes_manifests_is_one_the_binaries_read() {
    let mut used = BTreeSet::new();
    let manifests = kubernetes_manifests();
    assert!(
        manifests.contains(&"doctor-job.yaml".to_owned()),
        "{manifests:?}"
    );
    for file in manifests {
        used.extend(variables_in(&repo_file(&format!(
            "deploy/kubernetes/{file}"
        ))));
    }
    assert!(
        used.contains("BATON_SHUTDOWN_TIMEOUT") && used.contains("BATON_QUEUE"),
        "the scan found the manifests' variables: {used:?}"
    );
    let known = known_variables();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "deploy/kubernetes sets {unknown:?}, which no binary's --help documents"
    );
}

#[test]
fn the_variable_scan_reads_both_file_styles() {
    let found = variables_in(
        "x:\n  BATON_PREFIX: baton\n  # BATON_COMMENTED: 1\n  - name: AMQP_URL\n  RUST_LOG: info\n",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["AMQP_URL", "BATON_PREFIX"]
    );
}

/// The lines under `key` (a line of `text`, indentation included) that are indented
/// deeper: that key's YAML block.
fn yaml_block<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let indent = key.len() - key.trim_start().len();
    text.lines()
        .skip_while(|line| *line != key)
        .skip(1)
        .take_while(|line| line.len() - line.trim_start().len() > indent)
        .collect()
}

#[test]
fn the_doctor_job_sets_only_doctors_variables_and_runs_as_the_orchestrators_do() {
    let job = repo_file("deploy/kubernetes/doctor-job.yaml");
    let doctor = documented_env(&[help(Path::new(env!("CARGO_BIN_EXE_baton")), &["doctor"])]);
    let used = variables_in(&job);
    for needed in [
        "AMQP_URL",
        "BATON_ADMIN_URL",
        "BATON_PREFIX",
        "BATON_WORKFLOW",
        "BATON_JOURNAL_URL",
        "BATON_SCALED_TO_ZERO",
    ] {
        assert!(used.contains(needed), "doctor-job.yaml sets {used:?}");
    }
    let unknown: Vec<_> = used.difference(&doctor).collect();
    assert!(
        unknown.is_empty(),
        "doctor-job.yaml sets {unknown:?}, which `baton doctor --help` does not document"
    );
    // The scale-to-zero service of keda.yaml and the workflow.
    assert!(
        job.contains("- name: BATON_SCALED_TO_ZERO\n              value: pci-sanctions\n"),
        "{job}"
    );

    // Created outside the kustomization: its image and namespace are written by hand.
    let kustomization = repo_file("deploy/kubernetes/kustomization.yaml");
    let value = |key: &str| -> String {
        kustomization
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("kustomization.yaml has no {key}"))
            .trim()
            .to_owned()
    };
    let image = format!("image: {}:{}\n", value("newName:"), value("newTag:"));
    assert!(job.contains(&image), "doctor-job.yaml must run the {image}");
    assert!(job.contains(&format!("  namespace: {}\n", value("namespace:"))));

    let orchestrator = repo_file("deploy/kubernetes/orchestrator.yaml");
    for key in [
        "      securityContext:",
        "          securityContext:",
        "      automountServiceAccountToken: false",
    ] {
        assert!(
            job.contains(&format!("\n{key}\n")),
            "doctor-job.yaml lacks {key:?}"
        );
        assert_eq!(
            yaml_block(&job, key),
            yaml_block(&orchestrator, key),
            "doctor-job.yaml's {key:?} differs from orchestrator.yaml's"
        );
    }
}

#[test]
fn the_termination_grace_period_outlasts_the_shutdown_timeout() {
    let manifest = repo_file("deploy/kubernetes/orchestrator.yaml");
    let value_after = |key: &str| -> u64 {
        let at = manifest
            .find(key)
            .unwrap_or_else(|| panic!("{key} missing"));
        manifest[at + key.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let grace = value_after("terminationGracePeriodSeconds:");
    let shutdown = value_after("name: BATON_SHUTDOWN_TIMEOUT\n              value: \"");
    // The HTTP port drains for up to 5 s after the payments are done.
    let drain = baton_ops::DRAIN_TIMEOUT.as_secs();
    assert!(
        grace > shutdown + drain,
        "terminationGracePeriodSeconds {grace} must exceed the shutdown timeout {shutdown} + drain {drain}"
    );
}

#[test]
fn the_kubernetes_workflow_is_valid_and_has_the_scale_to_zero_step() {
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["workflow", "check", "deploy/kubernetes/workflow.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("queue baton.cmd.pci-sanctions"), "{stdout}");
    let keda = repo_file("deploy/kubernetes/keda.yaml");
    assert!(keda.contains("queueName: baton.cmd.pci-sanctions"));
    assert!(keda.contains("minReplicaCount: 0"));
}

/// alerts.yml from `groups:` on, each non-empty line indented two spaces: what
/// prometheusrule.yaml's `spec:` must hold (its header says how to regenerate it).
#[test]
fn the_prometheusrule_carries_the_alert_rules_of_alerts_yml() {
    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let rule = repo_file("deploy/kubernetes/prometheusrule.yaml");
    let groups = &alerts[alerts.find("\ngroups:").expect("alerts.yml has groups") + 1..];
    let expected: String = groups
        .lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {line}\n")
            }
        })
        .collect();
    let spec = &rule[rule
        .find("\nspec:\n")
        .expect("prometheusrule.yaml has spec")
        + 7..];
    assert!(
        spec == expected,
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: \
         regenerate it with the command in its header"
    );
    assert!(rule.contains("kind: PrometheusRule"));
}
