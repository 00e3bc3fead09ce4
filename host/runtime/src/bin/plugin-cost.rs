//! Cost per task of any plugin component, a fresh instance per task, one core: what
//! BENCHMARKS.md reports per plugin language.
//!
//! ```text
//! cargo run --release -p kairos-runtime --bin plugin-cost -- FILE.wasm [--payload JSON] [--tasks N] [--runs R] [--reuse K]
//! ```
//!
//! Loads `FILE.wasm` as plugin `NAME` (its file stem), runs 20 warm-up tasks, then R runs of N
//! tasks one after the other on a current-thread tokio runtime; prints the load time and the
//! median per-task time. Every task must succeed. `--reuse K` grants the plugin
//! `reuse_instances = K` (all tasks have the same key, so an instance serves K of them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use kairos_runtime::{
    HostServices, MemoryServices, PluginGrant, RunOutcome, RunRequest, Runtime, RuntimeConfig,
    TaskInfo,
};

/// A runtime with the plugin in `dir` loaded, and the load's time in ms.
fn rt_load(dir: &std::path::Path, name: &str, reuse: u32) -> anyhow::Result<(Arc<Runtime>, f64)> {
    let mut cfg = RuntimeConfig::default();
    cfg.grants.insert(
        name.to_string(),
        PluginGrant {
            reuse_instances: reuse,
            ..PluginGrant::default()
        },
    );
    let rt = Runtime::new(
        cfg,
        Arc::new(MemoryServices::new()) as Arc<dyn HostServices>,
    )?;
    let start = Instant::now();
    let summary = rt.load_dir(dir);
    if let Some(e) = summary.errors.first() {
        bail!("cannot load it: {e}");
    }
    Ok((rt, start.elapsed().as_secs_f64() * 1e3))
}

fn main() -> anyhow::Result<()> {
    let mut file = None;
    let (mut payload, mut tasks, mut runs, mut reuse) = ("{}".to_string(), 200usize, 3usize, 0u32);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--payload" => payload = value()?,
            "--tasks" => tasks = value()?.parse::<usize>()?.max(1),
            "--runs" => runs = value()?.parse::<usize>()?.max(1),
            "--reuse" => reuse = value()?.parse::<u32>()?,
            f if !f.starts_with("--") && file.is_none() => file = Some(PathBuf::from(f)),
            other => {
                bail!(
                    "unknown argument {other} (expected FILE.wasm, --payload, --tasks, --runs, --reuse)"
                )
            }
        }
    }
    let file = file.context(
        "usage: plugin-cost FILE.wasm [--payload JSON] [--tasks N] [--runs R] [--reuse K]",
    )?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the file has no name")?
        .to_string();
    let dir = std::env::temp_dir().join(format!("kairos-plugin-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copied = std::fs::copy(&file, dir.join(format!("{name}.wasm")));
    let summary = copied.map(|_| rt_load(&dir, &name, reuse));
    let _ = std::fs::remove_dir_all(&dir);
    let (rt, load_ms) = summary.with_context(|| format!("reading {}", file.display()))??;
    let request = |n: usize| RunRequest {
        task: TaskInfo {
            id: format!("cost-{n}"),
            key: "cost".into(),
            plugin: name.clone(),
            attempt: 1,
            due_at_ms: 0,
            payload: payload.clone(),
            generation: 0,
        },
        pin_version: None,
    };
    let one_core = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut per_task = one_core.block_on(async {
        for n in 0..20 {
            let r = rt.run(request(n)).await;
            if !matches!(r.outcome, RunOutcome::Success { .. }) {
                bail!("task failed: {}", r.outcome);
            }
        }
        let mut per_task = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for n in 0..tasks {
                let r = rt.run(request(n)).await;
                if !matches!(r.outcome, RunOutcome::Success { .. }) {
                    bail!("task failed: {}", r.outcome);
                }
            }
            per_task.push(t.elapsed().as_secs_f64() * 1e3 / tasks as f64);
        }
        Ok(per_task)
    })?;
    per_task.sort_by(f64::total_cmp);
    let median = per_task[per_task.len() / 2];
    let all: Vec<String> = per_task.iter().map(|m| format!("{m:.3}")).collect();
    println!(
        "{name}: {} KiB, load (compile) {load_ms:.0} ms, per task {median:.3} ms median of {runs} × {tasks}, reuse_instances = {reuse} (runs: {} ms)",
        std::fs::metadata(&file)?.len() / 1024,
        all.join(", ")
    );
    Ok(())
}
