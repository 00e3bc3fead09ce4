use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kairos::cli::{Cli, Command, MigrateArgs, PluginCmd, ServeArgs, TokenCmd};
use kairos::config::Config;
use kairos::node::{Node, shutdown_signal};
use kairos_runtime::{LoadError, MemoryServices, RunOutcome, RunRequest, Runtime, TaskInfo};

/// mimalloc instead of glibc's malloc: the node allocates and frees many small objects per
/// task (ids, records, Wasm stores), and glibc's malloc and free were about a quarter of the
/// scheduler threads' samples (BENCHMARKS.md, issue 10).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags over the config file over the defaults.
pub fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data {
        cfg.data_dir = d.clone();
    }
    if let Some(p) = &args.plugins {
        cfg.plugins_dir = Some(p.clone());
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(n) = &args.node_id {
        cfg.node_id = n.clone();
    }
    if let Some(a) = &args.advertise_addr {
        cfg.advertise_addr = Some(a.clone());
        cfg.validate()?;
    }
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = serve_config(&args)?;
    let node = Node::start(cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: intake stopped, draining running tasks");
    node.shutdown().await;
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    for line in kairos::cluster::migrate(&cfg).await? {
        println!("{line}");
    }
    Ok(())
}

/// A runtime for `kairos plugin list/run` with the built-in plugins (unless the config says
/// `builtin_plugins = false`; `only`: just that one) and then the plugins of `--plugins DIR`, else
/// of the config's `plugins_dir`, which override built-in ones of the same name. Also returns
/// what was rejected.
fn cli_runtime(
    plugins: Option<PathBuf>,
    config: Option<&Path>,
    services: Arc<MemoryServices>,
    only: Option<&str>,
) -> anyhow::Result<(Arc<Runtime>, Vec<LoadError>)> {
    let cfg = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let dir = plugins.or(cfg.plugins_dir.clone());
    if let Some(dir) = &dir {
        anyhow::ensure!(
            dir.is_dir(),
            "plugin directory {} does not exist",
            dir.display()
        );
    }
    let rt = Runtime::new(cfg.runtime_config(), services)?;
    let mut errors = Vec::new();
    if cfg.builtin_plugins {
        match only {
            Some(name) => {
                // Not compiled for nothing when the directory overrides it.
                let overridden = dir
                    .as_ref()
                    .is_some_and(|d| d.join(format!("{name}.wasm")).is_file());
                if let Some(p) = kairos_runtime::builtin_plugin(name).filter(|_| !overridden) {
                    errors.extend(rt.load_builtin(p.name, p.wasm).err());
                }
            }
            None => errors.extend(rt.load_builtins().errors),
        }
    }
    if let Some(dir) = &dir {
        errors.extend(rt.load_dir(dir).errors);
    }
    Ok((rt, errors))
}

async fn plugin(cmd: PluginCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCmd::New { name, lang, dir } => {
            let root = kairos::scaffold::new_project(&name, lang, dir.as_deref())?;
            println!(
                "created {}: build it with `kairos plugin build {}`",
                root.display(),
                root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCmd::Build { dir, out, config } => {
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let written = kairos::scaffold::build(&dir, out.as_deref(), &cfg).await?;
            let size = std::fs::metadata(&written).map(|m| m.len()).unwrap_or(0);
            println!(
                "built {} ({size} bytes): copy it into the plugins directory to load it",
                written.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCmd::List { plugins, config } => {
            let (rt, errors) = cli_runtime(
                plugins,
                config.as_deref(),
                Arc::new(MemoryServices::new()),
                None,
            )?;
            println!(
                "{:<16} {:<66} {:>10}  SOURCE",
                "NAME", "DIGEST (sha256)", "BYTES"
            );
            for p in rt.plugins() {
                println!(
                    "{:<16} {:<66} {:>10}  {}",
                    p.name, p.digest, p.size_bytes, p.source
                );
                for w in &p.warnings {
                    println!("  warning: {w}");
                }
            }
            for err in &errors {
                println!("rejected {err}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCmd::Run {
            name,
            payload,
            key,
            plugins,
            config,
            attempt,
        } => {
            serde_json::from_str::<serde::de::IgnoredAny>(&payload)
                .context("--payload is not valid JSON")?;
            let services = Arc::new(MemoryServices::new());
            let (rt, errors) =
                cli_runtime(plugins, config.as_deref(), services.clone(), Some(&name))?;
            for err in &errors {
                eprintln!("rejected {err}");
            }
            let now = kairos_core::clock::system_now();
            let report = rt
                .run(RunRequest {
                    task: TaskInfo {
                        id: kairos::enqueue::new_task_id(),
                        key,
                        plugin: name.clone(),
                        attempt,
                        due_at_ms: now,
                        payload,
                        generation: 0,
                    },
                    pin_version: None,
                })
                .await;
            let source = rt
                .plugins()
                .into_iter()
                .find(|p| p.name == name)
                .map(|p| format!(" ({})", p.source))
                .unwrap_or_default();
            println!(
                "plugin:   {name} {}{source}",
                report.digest.as_deref().unwrap_or("(not loaded)")
            );
            println!("outcome:  {}", serde_json::to_string(&report.outcome)?);
            println!("elapsed:  {:.3} ms", report.elapsed.as_secs_f64() * 1000.0);
            if !report.logs.is_empty() {
                println!("logs:");
                for l in &report.logs {
                    println!("  {l}");
                }
            }
            let follow_ups = services.follow_ups();
            if !follow_ups.is_empty() {
                println!("follow-up tasks (not enqueued: `plugin run` does not schedule):");
                for f in follow_ups {
                    println!("  {f:?}");
                }
            }
            Ok(if matches!(report.outcome, RunOutcome::Success { .. }) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    let TokenCmd::New {
        name,
        name_flag,
        scopes,
    } = cmd;
    let name = name
        .or(name_flag)
        .ok_or_else(|| anyhow::anyhow!("the token needs a name"))?;
    anyhow::ensure!(!name.is_empty(), "the token needs a non-empty name");
    for s in &scopes {
        anyhow::ensure!(
            matches!(s.as_str(), "enqueue" | "read" | "operate" | "admin"),
            "unknown scope {s:?}: use enqueue, read, operate or admin"
        );
    }
    let (token, hash) = kairos::auth::new_token();
    println!(
        "token (shown once; clients send `Authorization: Bearer TOKEN`, the CLI --token or KAIROS_TOKEN):"
    );
    println!("  {token}");
    println!();
    println!("add to the config of every node:");
    println!("[[api.tokens]]");
    println!("name = {name:?}");
    println!("hash = {hash:?}");
    println!("scopes = {scopes:?}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kairos::cli::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|_| ExitCode::SUCCESS),
            Command::Migrate(args) => migrate(args).await.map(|_| ExitCode::SUCCESS),
            Command::Plugin(cmd) => plugin(cmd).await,
            Command::Task(cmd) => {
                tokio::task::spawn_blocking(move || kairos::client::task(cmd)).await?
            }
            Command::Token(cmd) => token(cmd).map(|_| ExitCode::SUCCESS),
            Command::Schedule(cmd) => {
                tokio::task::spawn_blocking(move || kairos::client::schedule(cmd))
                    .await?
                    .map(|_| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
