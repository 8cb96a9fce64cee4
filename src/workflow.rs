//! The workflow: which steps a payment runs through, in which order, and how each one is
//! reached. It is data (a TOML file), not code, so adding a step never means changing the
//! orchestrator. This module only parses and validates it; running it is the saga's job.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The workflow that ships with Baton (`workflows/default.toml`), used when no file is
/// given so the binary works from any directory.
pub const DEFAULT_WORKFLOW: &str = include_str!("../workflows/default.toml");

/// A workflow that could not be used, with a message naming the entry and the problem.
#[derive(Debug, thiserror::Error)]
#[error("workflow {source_name}: {problem}")]
pub struct WorkflowError {
    source_name: String,
    problem: String,
}

/// One step of the workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Name in command ids, results and logs.
    pub name: String,
    /// Service whose queue (`<prefix>.cmd.<service>`) receives the step's commands.
    pub service: String,
    /// How long to wait for the reply to one command.
    pub timeout: Duration,
    /// Whether the command carries the full card number.
    pub card_number: bool,
    /// Whether a later decline or failure sends this step a compensate command.
    pub compensate: bool,
}

/// The ordered steps every payment runs through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workflow {
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    steps: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    service: Option<String>,
    timeout_ms: u64,
    #[serde(default)]
    card_number: bool,
    #[serde(default)]
    compensate: bool,
}

/// Longest accepted timeout: a reply later than this is an outage, not latency.
const MAX_TIMEOUT_MS: u64 = 600_000;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Workflow {
    /// The workflow shipped with Baton.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_WORKFLOW, "(built-in default)")
            .expect("the built-in workflow is valid; a unit test checks it")
    }

    /// Reads and validates a workflow file.
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WorkflowError {
            source_name: name.clone(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &name)
    }

    /// Parses and validates workflow text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, WorkflowError> {
        let fail = |problem: String| WorkflowError {
            source_name: source_name.to_owned(),
            problem,
        };
        let file: File = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if file.steps.is_empty() {
            return Err(fail("it has no [[steps]] entry; add at least one".into()));
        }
        let mut steps: Vec<Step> = Vec::with_capacity(file.steps.len());
        for (i, entry) in file.steps.into_iter().enumerate() {
            let at = format!("steps[{i}] ({:?})", entry.name);
            if !valid_name(&entry.name) {
                return Err(fail(format!(
                    "{at}: name must be 1-64 characters of a-z, 0-9, '_' or '-'"
                )));
            }
            if steps.iter().any(|s| s.name == entry.name) {
                return Err(fail(format!(
                    "{at}: a step named {:?} is already defined; names must be unique",
                    entry.name
                )));
            }
            let service = entry.service.unwrap_or_else(|| entry.name.clone());
            if !valid_name(&service) {
                return Err(fail(format!(
                    "{at}: service must be 1-64 characters of a-z, 0-9, '_' or '-'"
                )));
            }
            if entry.timeout_ms == 0 || entry.timeout_ms > MAX_TIMEOUT_MS {
                return Err(fail(format!(
                    "{at}: timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                    entry.timeout_ms
                )));
            }
            steps.push(Step {
                name: entry.name,
                service,
                timeout: Duration::from_millis(entry.timeout_ms),
                card_number: entry.card_number,
                compensate: entry.compensate,
            });
        }
        Ok(Self { steps })
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Every service the workflow sends commands to, without repeats.
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = Vec::new();
        for step in &self.steps {
            if !services.contains(&step.service.as_str()) {
                services.push(&step.service);
            }
        }
        services
    }

    /// Builds a workflow from steps directly (tests and embedders).
    pub fn from_steps(steps: Vec<Step>) -> Self {
        Self { steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_workflow_is_valid_and_in_order() {
        let wf = Workflow::builtin();
        let names: Vec<_> = wf.steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["authorization", "risk", "pci", "transaction"]);
        assert!(wf.steps()[0].compensate && wf.steps()[0].card_number);
        assert!(!wf.steps()[2].card_number);
        assert_eq!(wf.steps()[3].service, "transaction");
    }

    #[test]
    fn a_new_step_is_one_entry() {
        let text = format!(
            "{DEFAULT_WORKFLOW}\n[[steps]]\nname = \"sanctions\"\nservice = \"sanctions-v2\"\ntimeout_ms = 500\n"
        );
        let wf = Workflow::parse(&text, "t").unwrap();
        let last = wf.steps().last().unwrap();
        assert_eq!(last.name, "sanctions");
        assert_eq!(last.service, "sanctions-v2");
        assert_eq!(last.timeout, Duration::from_millis(500));
        assert_eq!(wf.services().len(), 5);
    }

    fn error_of(text: &str) -> String {
        Workflow::parse(text, "wf.toml").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_named() {
        let typo = error_of("[[steps]]\nname = \"risk\"\ntimout_ms = 5\n");
        assert!(
            typo.contains("wf.toml") && typo.contains("timout_ms"),
            "{typo}"
        );

        let dup = error_of(
            "[[steps]]\nname = \"risk\"\ntimeout_ms = 5\n[[steps]]\nname = \"risk\"\ntimeout_ms = 5\n",
        );
        assert!(dup.contains("steps[1]") && dup.contains("unique"), "{dup}");

        let zero = error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 0\n");
        assert!(
            zero.contains("steps[0]") && zero.contains("timeout_ms"),
            "{zero}"
        );

        let bad = error_of("[[steps]]\nname = \"Risk Check\"\ntimeout_ms = 5\n");
        assert!(bad.contains("name must be"), "{bad}");

        let empty = error_of("steps = []\n");
        assert!(empty.contains("no [[steps]]"), "{empty}");
    }
}
