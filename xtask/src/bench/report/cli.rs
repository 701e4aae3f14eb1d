//! `cargo xtask report <summary> <dir>`: a scenario's summary or table rendered again
//! from the results on disk (for BENCHMARKS.md, or after editing a run's files), and a
//! step's verdict.

use std::path::PathBuf;

use super::{
    budget, budget_markdown, compare, compare_markdown, cost, fanout, markdown, pretty, quarter,
    small, small_markdown, step, table,
};
use crate::kit::Result;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReportCmd {
    /// A fan-out step's verdict: exits 0 to go on, 1 failed, 2 passed but saturated.
    Step { file: PathBuf, bound_ms: f64 },
    /// A quarter of the best passing step's per-session rate.
    Quarter { out: PathBuf, label: String },
    /// The fan-out search's summary (JSON).
    Fanout { out: PathBuf, label: String },
    /// The fan-out summary as a Markdown table.
    Markdown { out: PathBuf, label: String },
    /// The comparison's summary (JSON).
    Compare { out: PathBuf },
    /// `compare.json` as Markdown tables.
    CompareMarkdown { out: PathBuf },
    /// The cost split (JSON).
    Cost { out: PathBuf },
    /// The small-room summary (JSON).
    Small { out: PathBuf },
    /// The small-room table.
    SmallMarkdown { out: PathBuf },
    /// The per-message budget (JSON).
    Budget { out: PathBuf },
    /// The budget table.
    BudgetMarkdown { out: PathBuf },
    /// The lines `make bench` ends with.
    Table { out: PathBuf },
}

/// Runs one report command; answers the exit status.
pub(crate) fn run(cmd: ReportCmd) -> Result<u8> {
    let text = match cmd {
        ReportCmd::Step { file, bound_ms } => return step(&file, bound_ms),
        ReportCmd::Quarter { out, label } => quarter(&out, &label)?,
        ReportCmd::Fanout { out, label } => pretty(&fanout(&out, &label)?)?,
        ReportCmd::Markdown { out, label } => markdown(&out, &label)?,
        ReportCmd::Compare { out } => pretty(&compare(&out)?)?,
        ReportCmd::CompareMarkdown { out } => compare_markdown(&out)?,
        ReportCmd::Cost { out } => pretty(&cost(&out)?)?,
        ReportCmd::Small { out } => pretty(&small(&out)?)?,
        ReportCmd::SmallMarkdown { out } => small_markdown(&out)?,
        ReportCmd::Budget { out } => pretty(&budget(&out)?)?,
        ReportCmd::BudgetMarkdown { out } => budget_markdown(&out)?,
        ReportCmd::Table { out } => table(&out)?,
    };
    println!("{text}");
    Ok(0)
}
