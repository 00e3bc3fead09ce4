//! Command-line interface: `serve`, the plugin author's loop (`plugin list|run`), the client
//! commands (`task …`, `schedule …`) that talk to a running server. (Benchmarks are the
//! separate `kairos-bench` binary, `host/bench`.)

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Logs to stderr, filtered by `RUST_LOG` (default: info, with wasmtime and cranelift at
/// warn). For the `kairos` and `kairos-bench` binaries.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Parser, Debug)]
#[command(
    name = "kairos",
    version,
    about = "A distributed task scheduler whose tasks run in sandboxed WebAssembly plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: the embedded default on 127.0.0.1:7400 with the standard plugins.
    Serve(ServeArgs),
    /// Cluster mode: create the Cassandra keyspace and tables (and the Kafka topic) of a config.
    Migrate(MigrateArgs),
    /// Inspect and try plugins without a server.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Enqueue and manage tasks on a running server.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Manage recurring schedules on a running server.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a new random token; prints it once, and the `[[api.tokens]]` lines (with only its
    /// SHA-256) to add to the config. `kairos token create --name N --scopes enqueue,read`
    /// says the same.
    #[command(alias = "create")]
    New {
        /// The token's name (in logs and error messages).
        #[arg(required_unless_present = "name_flag")]
        name: Option<String>,
        /// The name, as a flag.
        #[arg(long = "name", conflicts_with = "name")]
        name_flag: Option<String>,
        /// What it may do: enqueue, read, operate, admin (comma-separated, or the flag
        /// repeated).
        #[arg(
            long = "scope",
            alias = "scopes",
            required = true,
            value_delimiter = ','
        )]
        scopes: Vec<String>,
    },
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (flags override it; it overrides the defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (embedded database, compiled-plugin cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Plugin directory to load and watch, added to the built-in plugins (a NAME.wasm there
    /// overrides the built-in NAME). Default: the config's `plugins_dir`, else none.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// API listen address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Cluster mode: `host:port` at which the other nodes reach this node's API (default: the
    /// bound listen address).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Node name.
    #[arg(long)]
    pub node_id: Option<String>,
}

#[derive(Args, Debug, Default)]
pub struct MigrateArgs {
    /// TOML config file whose `[store]` (and `[queue]`) to set up.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// List the plugins `kairos serve` would load (built-in, and of a directory) with their
    /// digests and sources, and what their manifests ask beyond the operator's config
    /// (clamped or dropped).
    List {
        /// Plugin directory, over the built-in plugins (default: the config's `plugins_dir`).
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Config file whose `[limits]` and `[plugin.NAME]` grants are the ceiling.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one task at once in the same sandbox as the server (no scheduling) and print the
    /// outcome, the plugin's logs and the timing.
    Run {
        name: String,
        /// The task's JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value = "cli")]
        key: String,
        /// Plugin directory, over the built-in plugins (default: the config's `plugins_dir`).
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Config file whose `[limits]` and `[plugin.NAME]` grants apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Attempt number handed to the plugin.
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
    /// Write a ready plugin project (source, README, a local test) into DIR/NAME.
    New {
        name: String,
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        /// Parent directory of the project (default: the current one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the project in DIR (default: the current one) with its language's toolchain,
    /// check it against the task-plugin world, and write DIR/NAME.wasm.
    Build {
        dir: Option<PathBuf>,
        /// Where to write the component (default: DIR/NAME.wasm).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Config whose `[limits]` the check applies (default: the built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServerArg {
    /// Base URL of the Kairos API.
    #[arg(
        long,
        env = "KAIROS_SERVER",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub server: String,
    /// API token (`Authorization: Bearer`), when the server has `[[api.tokens]]`.
    #[arg(long, env = "KAIROS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the certificate(s) to trust for an `https://` server (its own
    /// self-signed certificate, or a private CA); without it, the public web PKI roots.
    #[arg(long, env = "KAIROS_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Enqueue a task, or import many from a JSON Lines file (`--file`).
    Add {
        #[arg(long, required_unless_present = "file")]
        plugin: Option<String>,
        #[arg(long, required_unless_present = "file")]
        key: Option<String>,
        #[arg(long, default_value = "{}")]
        payload: String,
        /// RFC 3339 due time (default: now).
        #[arg(long, conflicts_with = "delay_ms")]
        run_at: Option<String>,
        #[arg(long)]
        delay_ms: Option<u64>,
        #[arg(long)]
        uniqueness_key: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Import tasks from a JSON Lines file (`-`: stdin): one task a line, each shaped like
        /// the body of `POST /v1/tasks`; blank lines are skipped. Ends with a summary; exit
        /// status 0 when every line was imported, 1 when some were rejected, 2 when it
        /// stopped early (it says from which line to resume).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with_all = [
                "plugin", "key", "payload", "run_at", "delay_ms", "uniqueness_key", "max_attempts",
            ]
        )]
        file: Option<String>,
        /// With `--file`: tasks per `POST /v1/tasks/batch` [default: 500].
        #[arg(
            long,
            requires = "file",
            conflicts_with_all = ["plugin", "key"],
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        batch_size: Option<u64>,
        /// With `--file`: skip the first N lines (to resume a stopped import).
        #[arg(long, value_name = "N", requires = "file", conflicts_with_all = ["plugin", "key"])]
        skip_lines: Option<u64>,
        /// With `--file`: the prefix of the uniqueness keys given to tasks without one
        /// (`import:ID:LINE`, so a resent batch is never imported twice; default: random).
        /// Pass the one a stopped import printed to resume it.
        #[arg(long, value_name = "ID", requires = "file", conflicts_with_all = ["plugin", "key"])]
        import_id: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a task with its attempt history.
    Get {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List tasks, a page at a time (the next page's `--cursor` is printed on stderr).
    List {
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where the page starts (from the previous page).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Cancel a task that has not started.
    Cancel {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run a dead task again now.
    Retry {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Create or replace a recurring schedule.
    Add {
        #[arg(long)]
        name: String,
        /// Cron expression (5 fields, or 6 with seconds).
        #[arg(long)]
        cron: String,
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "{}")]
        payload: String,
        /// IANA time zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a schedule (tasks it already enqueued stay).
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}
