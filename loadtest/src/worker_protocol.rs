//! What a worker process and its parent say to each other (see
//! [`crate::workers`]): the worker prints JSON [`Line`]s on stdout, a
//! progress sample each second and its result at the end; an `idle` worker
//! holds its polls until the parent closes its stdin.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::engine::Engine;
use crate::report::RunResult;
use crate::stats::Sample;

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Progress(Sample),
    Result(Box<RunResult>),
}

/// A worker's progress line (called by the sampler of a worker).
pub fn emit_progress(_engine: &Engine, sample: &Sample) {
    if let Ok(text) = serde_json::to_string(&Line::Progress(sample.clone())) {
        println!("{text}");
    }
}

/// A worker's final line.
pub fn emit_result(result: RunResult) {
    if let Ok(text) = serde_json::to_string(&Line::Result(Box::new(result))) {
        println!("{text}");
    }
}

/// In an idle worker: hold the polls until the parent closes stdin.
pub async fn wait_for_parent(limit: Duration) {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = stdin.next_line().await {}
    })
    .await;
}
