use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kairos::cli::{Cli, Command, MigrateArgs, PluginCmd, ServeArgs, TokenCmd};
use kairos::config::Config;
use kairos::node::{Node, shutdown_signal};
use kairos_runtime::{MemoryServices, RunOutcome, RunRequest, Runtime, TaskInfo};

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
        cfg.plugins_dir = p.clone();
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

fn plugins_dir(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| PathBuf::from(kairos_runtime::DEFAULT_PLUGINS_DIR))
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
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let dir = plugins.unwrap_or(if config.is_some() {
                cfg.plugins_dir.clone()
            } else {
                plugins_dir(None)
            });
            let rt = Runtime::new(cfg.runtime_config(), Arc::new(MemoryServices::new()))?;
            let summary = rt.load_dir(&dir);
            println!("{:<16} {:<66} {:>10}", "NAME", "DIGEST (sha256)", "BYTES");
            for p in rt.plugins() {
                println!("{:<16} {:<66} {:>10}", p.name, p.digest, p.size_bytes);
                for w in &p.warnings {
                    println!("  warning: {w}");
                }
            }
            for err in &summary.errors {
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
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let dir = plugins.unwrap_or(if config.is_some() {
                cfg.plugins_dir.clone()
            } else {
                plugins_dir(None)
            });
            let services = Arc::new(MemoryServices::new());
            let rt = Runtime::new(cfg.runtime_config(), services.clone())?;
            let summary = rt.load_dir(&dir);
            for err in &summary.errors {
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
            println!(
                "plugin:   {name} {}",
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
