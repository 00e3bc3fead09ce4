//! The supervisor: builds a node from its config, runs it, and shuts it down in order —
//! stop intake, let running attempts finish within the grace period, flush, close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kairos_cassandra::CassandraStore;
use kairos_core::clock::{Clock, SystemClock};
use kairos_core::ids::TaskIds;
use kairos_core::model::Schedule;
use kairos_core::ownership::{LocalSource, PartitionSource};
use kairos_core::store::TaskStore;
use kairos_embedded::{EmbeddedOptions, EmbeddedStore};
use kairos_runtime::{Runtime, RuntimeConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Forwarder};
use crate::cluster::{self, CassandraOwners, ClusterIntake, Listener};
use crate::config::{Config, QueueConfig, StoreConfig};
use crate::cron::CronService;
use crate::enqueue::{Enqueuer, LocalIntake, TaskIntake};
use crate::metrics::Metrics;
use crate::plugins::{RuntimeCatalog, StoreServices, WasmExecutor};
use crate::scheduler::{Scheduler, SchedulerConfig};

/// A running node.
pub struct Node {
    pub addr: SocketAddr,
    pub scheduler: Arc<Scheduler>,
    pub enqueuer: Arc<Enqueuer>,
    pub store: Arc<dyn TaskStore>,
    /// The embedded store itself, when the node runs on it (its commit statistics).
    pub embedded: Option<Arc<EmbeddedStore>>,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    /// Where this node's partitions come from (the local source, or Kafka's consumer group).
    source: Box<dyn PartitionSource>,
}

/// The store; also the store itself: Cassandra in cluster mode (owners and node addresses),
/// else the embedded one.
type Opened = (
    Arc<dyn TaskStore>,
    Option<Arc<CassandraStore>>,
    Option<Arc<EmbeddedStore>>,
);

async fn open_store(cfg: &Config) -> anyhow::Result<Opened> {
    if let StoreConfig::Cassandra(c) = &cfg.store {
        let store = cluster::connect_cassandra(c).await?;
        return Ok((store.clone(), Some(store), None));
    }
    let embedded = open_embedded(cfg)?;
    Ok((embedded.clone(), None, Some(embedded)))
}

fn open_embedded(cfg: &Config) -> anyhow::Result<Arc<EmbeddedStore>> {
    match &cfg.store {
        StoreConfig::Embedded {
            cache_mb,
            min_free_mb,
            ..
        } => {
            let path = cfg.store_path();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating data directory {}", dir.display()))?;
            }
            let opts = EmbeddedOptions {
                cache_mb: *cache_mb,
                min_free_bytes: min_free_mb.saturating_mul(1024 * 1024),
                ..EmbeddedOptions::default()
            };
            let store = match cfg.legacy_store_file() {
                Some(legacy) => EmbeddedStore::open_migrating(&path, &legacy, opts),
                None => EmbeddedStore::open(&path, opts),
            }
            .with_context(|| format!("opening store {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreConfig::Cassandra(_) => anyhow::bail!("not an embedded store"),
    }
}

/// Upserts the schedules declared in the config file, keeping the progress of unchanged ones.
async fn declare_schedules(
    cfg: &Config,
    store: &dyn TaskStore,
    enqueuer: &Enqueuer,
    now: i64,
) -> anyhow::Result<()> {
    for d in &cfg.schedule {
        let payload = serde_json::to_string(&d.payload)?;
        let existing = store.get_schedule(&d.name).await?;
        let mut s = Schedule {
            name: d.name.clone(),
            cron: d.cron.clone(),
            plugin: d.plugin.clone(),
            key: d.key.clone(),
            payload,
            timezone: d.timezone.clone(),
            last_fired: None,
            created_at: now,
        };
        if let Some(old) = existing {
            let same = old.cron == s.cron
                && old.plugin == s.plugin
                && old.key == s.key
                && old.payload == s.payload
                && old.timezone == s.timezone;
            if same {
                continue;
            }
            s.last_fired = old.last_fired;
        }
        crate::cron::validate(&s, enqueuer)
            .map_err(|e| anyhow::anyhow!("schedule {:?} in the config: {e}", d.name))?;
        store.put_schedule(s).await?;
    }
    Ok(())
}

impl Node {
    /// Starts every part of the node and begins serving on `cfg.listen`.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Arc::new(Metrics::new(cfg.partitions));
        let (store, cassandra, embedded) = open_store(&cfg).await?;

        let services = Arc::new(StoreServices::new(store.clone()));
        let runtime = Runtime::new(
            RuntimeConfig {
                cache_dir: Some(cfg.data_dir.join("wasm-cache")),
                max_instances: (cfg.scheduler.concurrency as u32).saturating_mul(2).max(16),
                ..cfg.runtime_config()
            },
            services.clone(),
        )
        .context("starting the Wasm runtime")?;
        if let Some(dir) = &cfg.plugins_dir {
            anyhow::ensure!(
                dir.is_dir(),
                "plugin directory {} does not exist (create it, or leave `plugins_dir` unset to \
                 serve only the built-in plugins)",
                dir.display()
            );
        }
        // The built-in plugins first: a directory's plugin of the same name overrides one.
        if cfg.builtin_plugins {
            // One that fails (a grant it cannot run under) is logged and listed as rejected,
            // like a directory's plugin.
            let summary = runtime.load_builtins();
            tracing::info!("built-in plugins: {summary:?}");
        }
        let cancel = CancellationToken::new();
        let mut background = Vec::new();
        match &cfg.plugins_dir {
            Some(dir) => {
                let summary = runtime.load_dir(dir);
                tracing::info!(dir = %dir.display(), "plugins: {summary:?}");
                background.push(runtime.spawn_watcher(dir.clone(), cancel.clone())?);
            }
            None if cfg.builtin_plugins => {
                tracing::info!("no plugins_dir: serving the built-in plugins only");
            }
            None => tracing::warn!(
                "builtin_plugins = false and no plugins_dir: no plugin is loaded, every task \
                 will be refused"
            ),
        }

        let executor = Arc::new(WasmExecutor {
            runtime: runtime.clone(),
        });
        let sched_cfg = SchedulerConfig {
            window_capacity: cfg.scheduler.window_capacity,
            horizon_ms: cfg.scheduler.horizon_ms,
            concurrency: cfg.scheduler.concurrency,
            claim_slots: Some(cfg.claim_slots()),
            shares: cfg.slot_shares(),
            takeover_wait_ms: i64::try_from(cfg.takeover_wait_ms()).unwrap_or(i64::MAX),
            rng_seed: None,
        };
        let scheduler = Scheduler::new(
            store.clone(),
            executor,
            clock.clone(),
            metrics.clone(),
            sched_cfg,
        )
        .await?;
        let kafka = match &cfg.queue {
            QueueConfig::Local => None,
            QueueConfig::Kafka(k) => Some(cluster::kafka_config(&cfg, k)),
        };
        let intake: Arc<dyn TaskIntake> = match &kafka {
            None => Arc::new(LocalIntake {
                store: store.clone(),
                scheduler: scheduler.clone(),
            }),
            Some(kc) => Arc::new(ClusterIntake {
                kafka: cluster::connect_intake(kc).await?,
                store: store.clone(),
            }),
        };
        let catalog = Arc::new(RuntimeCatalog(runtime.clone()));
        let enqueuer = Arc::new(Enqueuer {
            intake,
            catalog: catalog.clone(),
            clock: clock.clone(),
            defaults: cfg.tasks.clone(),
            partitions: cfg.partitions,
            // On Cassandra an id names its row's home, so no lookup table is needed to find
            // it (or to tell a replayed record from a new task).
            ids: match &cassandra {
                Some(c) => TaskIds::Homed {
                    bucket_ms: c.options().bucket_ms,
                },
                None => TaskIds::Plain,
            },
            metrics: metrics.clone(),
        });
        let _ = services.enqueuer.set(Arc::downgrade(&enqueuer));
        declare_schedules(&cfg, store.as_ref(), &enqueuer, clock.now()).await?;

        // The partition source: Kafka's consumer group (cluster) or the local one (every
        // partition, each under a new lease). Either hands leases to the scheduler.
        let listener = Arc::new(Listener {
            scheduler: scheduler.clone(),
            revoke_grace: Duration::from_millis(cfg.scheduler.shutdown_grace_ms),
            node_id: cfg.node_id.clone(),
        });
        let source: Box<dyn PartitionSource> = match (&kafka, &cassandra) {
            (Some(kc), Some(_)) => {
                Box::new(cluster::start_source(kc, store.clone(), listener).await?)
            }
            (Some(_), None) => anyhow::bail!("a Kafka queue needs the Cassandra store"),
            _ => Box::new(
                LocalSource::start(store.clone(), cfg.partitions, &cfg.node_id, listener)
                    .await
                    .context("taking the partitions' leases")?,
            ),
        };

        let schedules_changed = Arc::new(Notify::new());
        let cron = CronService {
            store: store.clone(),
            enqueuer: enqueuer.clone(),
            clock: clock.clone(),
            changed: schedules_changed.clone(),
        };
        background.push(tokio::spawn(cron.run(cancel.clone())));
        if let Some(keep) = cfg.tasks.retention()? {
            let retention = crate::retention::RetentionService {
                store: store.clone(),
                scheduler: scheduler.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                keep,
                every: Duration::from_millis(cfg.tasks.retention_sweep_ms),
            };
            background.push(tokio::spawn(retention.run(cancel.clone())));
        }

        cfg.api.check_exposure(cfg.listen)?;
        let forwarder = match (&cassandra, &cfg.api.cluster_secret) {
            (Some(c), Some(secret)) => Some(Forwarder::new(
                Arc::new(CassandraOwners(c.clone())),
                secret.clone(),
                cfg.api
                    .tls
                    .as_ref()
                    .map(api::tls::peer_client)
                    .transpose()?,
            )),
            (Some(_), None) => anyhow::bail!("cluster mode needs `api.cluster_secret`"),
            (None, _) => None,
        };
        let state = Arc::new(AppState {
            enqueuer: enqueuer.clone(),
            scheduler: scheduler.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            plugins: catalog,
            schedules_changed,
            node_id: cfg.node_id.clone(),
            forwarder,
            counts: api::CountsCache::default(),
        });
        let tls = cfg.api.tls.as_ref().map(api::tls::acceptor).transpose()?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding the API to {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        if let Some(c) = &cassandra {
            cluster::register_api(c, &cfg, addr).await?;
        }
        let protection = api::Protection {
            guard: Arc::new(api::Guard::new(
                &cfg.api,
                addr,
                cfg.advertise_addr.as_deref(),
            )?),
            request_timeout: Duration::from_millis(cfg.api.request_timeout_ms),
            rate_limit_per_s: cfg.api.rate_limit_per_s,
            tokens_configured: !cfg.api.tokens.is_empty(),
        };
        let serve_opts = api::ServeOptions {
            max_connections: cfg.api.max_connections,
            tls,
            header_timeout: Duration::from_millis(cfg.api.header_timeout_ms),
            drain: Duration::from_millis(cfg.scheduler.shutdown_grace_ms),
        };
        let stop_http = cancel.clone();
        let http = tokio::spawn(async move {
            let app = api::router(state, protection);
            api::serve(listener, app, serve_opts, stop_http).await;
        });
        tracing::info!(node = %cfg.node_id, %addr, partitions = cfg.partitions, "kairos is serving");
        Ok(Node {
            addr,
            scheduler,
            enqueuer,
            store,
            embedded,
            runtime,
            metrics,
            cancel,
            http,
            background,
            grace: Duration::from_millis(cfg.scheduler.shutdown_grace_ms),
            source,
        })
    }

    /// Orderly stop: no new requests, running attempts finish (within the grace period) and
    /// are recorded, background work stops, the store is flushed and closed.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.http.await;
        // Every partition drains (running attempts finish and are recorded); Kafka's source
        // also commits its offsets and leaves the group, so the others take its partitions.
        self.source.shutdown().await;
        let drained = self.scheduler.shutdown(self.grace).await;
        if !drained {
            tracing::warn!(
                "grace period over with attempts still running; they run again after restart"
            );
        }
        for h in self.background {
            let _ = h.await;
        }
        drop(self.enqueuer);
        drop(self.scheduler);
        drop(self.runtime);
        // The last handle to the store: dropping it flushes and closes the database.
        drop(self.store);
        tracing::info!("kairos stopped");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
