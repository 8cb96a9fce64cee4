//! `baton workflow check|test`.

use super::*;
use clap::Subcommand;
use std::path::PathBuf;

/// `baton workflow …`.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Validate a workflow file and print its steps
    Check {
        /// The file [default: the built-in workflow]
        file: Option<PathBuf>,
        #[command(flatten)]
        #[allow(missing_docs)]
        no_broker: NoBroker,
    },
    /// Run a workflow against scripted service answers, in memory on a paused clock (no
    /// broker), and check each case's result; exit 0 all pass, 1 one failed, 2 a bad file
    Test {
        /// The workflow file [default: the built-in workflow]
        file: Option<PathBuf>,
        /// The case file (TOML): `[[cases]]` with a payment, answers and `expect`
        #[arg(long)]
        cases: PathBuf,
    },
}

/// `baton workflow test`: 0 every case passed, 1 one failed, 2 a file could not be used.
pub(super) fn workflow_test(file: Option<&std::path::Path>, cases: &std::path::Path) -> i32 {
    use crate::harness;
    let loaded = load_workflow(file).and_then(|workflow| {
        let cases = harness::CaseFile::load(cases, &workflow)?;
        Ok((workflow, cases))
    });
    let (workflow, cases) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let verdicts = harness::run_file(&workflow, &cases);
    print!("{}", harness::report(&verdicts));
    i32::from(!verdicts.iter().all(harness::Verdict::passed))
}
