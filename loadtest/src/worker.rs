//! Sharding one load test over several processes (open files are capped per process).
//!
//! The parent starts `--workers N` copies of its own executable with the same arguments
//! plus `--worker-index i`; worker `i` opens the clients whose global index is `i` mod N.
//! A tiny line protocol keeps them in lockstep: each worker prints `READY` on stdout once
//! its clients have joined; when all are ready the parent writes `GO` to every worker's
//! stdin, so publishing starts together; at the end each worker prints `RESULT <json>`
//! (its [`Partial`]) and the parent merges them. Workers' progress lines go to stderr.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::cli::Args;
use crate::report::Partial;

/// A worker's side of the start signal.
pub(crate) struct Gate {
    stdin: Lines<BufReader<tokio::io::Stdin>>,
}

impl Gate {
    /// Tells the parent this worker's clients have joined, then waits for its go (or for
    /// the parent to go away, which also ends the wait).
    pub(crate) async fn open(mut self) {
        println!("READY");
        while let Ok(Some(line)) = self.stdin.next_line().await {
            if line.trim() == "GO" {
                return;
            }
        }
    }
}

/// Runs worker `index`'s share and prints its result; the process exit code.
pub(crate) async fn serve(args: Args, index: usize) -> i32 {
    let of = args.workers;
    let gate = Gate {
        stdin: BufReader::new(tokio::io::stdin()).lines(),
    };
    let partial = crate::run(args, Some((index, of)), Some(gate)).await;
    match serde_json::to_string(&partial) {
        Ok(json) => {
            println!("RESULT {json}");
            0
        }
        Err(e) => {
            eprintln!("loadtest worker {index}: cannot encode the result: {e}");
            1
        }
    }
}

struct Worker {
    index: usize,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The next protocol line (`READY` or `RESULT ...`) from this worker.
    async fn expect(&mut self, prefix: &str) -> Result<String, String> {
        loop {
            match self.stdout.next_line().await {
                Ok(Some(line)) if line.starts_with(prefix) => {
                    return Ok(line[prefix.len()..].trim().to_string())
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    let status = self.child.wait().await.map(|s| s.to_string());
                    return Err(format!(
                        "worker {} ended before {prefix} ({})",
                        self.index,
                        status.unwrap_or_else(|e| e.to_string())
                    ));
                }
            }
        }
    }
}

/// Starts the workers, releases them together, and merges their results.
pub(crate) async fn spawn_all(args: &Args) -> Result<Partial, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let own: Vec<String> = std::env::args().skip(1).collect();
    let mut workers = Vec::with_capacity(args.workers);
    for index in 0..args.workers {
        let mut child = Command::new(&exe)
            .args(&own)
            .args(["--worker-index", &index.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("worker {index} has no pipes"));
        };
        workers.push(Worker {
            index,
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        });
    }
    for w in &mut workers {
        w.expect("READY").await?;
    }
    for w in &mut workers {
        w.stdin
            .write_all(b"GO\n")
            .await
            .map_err(|e| format!("worker {}: {e}", w.index))?;
        let _ = w.stdin.flush().await;
    }
    let mut total = Partial::default();
    for w in &mut workers {
        let json = w.expect("RESULT").await?;
        let part: Partial =
            serde_json::from_str(&json).map_err(|e| format!("worker {}: {e}", w.index))?;
        total = total.merge(part);
        let _ = w.child.wait().await;
    }
    Ok(total)
}
