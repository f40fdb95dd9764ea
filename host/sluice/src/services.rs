//! Starts everything one Sluice process runs from its config: the scorer model (and its file
//! watcher), the policy slots (and the plugins folder watcher), the data plane with the policy
//! router and resumer, the scaler and analytics loops with their store, the admin API and, with
//! `[cluster]`, this instance's membership of the cluster sharing the endpoints' limits.

use std::sync::Arc;

use anyhow::Context as _;
use sluice_admin::{AdminHandle, AdminServer};
use sluice_analytics::{Analytics, AnalyticsHandle};
use sluice_cluster::ClusterHandle;
use sluice_config::Config;
use sluice_policy::{NeutralScorer, Policies, Scorer, Watcher};
use sluice_proxy::{Proxy, ProxyHandle};
use sluice_scorer::OnnxScorer;

/// The running parts of one process.
pub struct Services {
    /// The data plane.
    pub proxy: ProxyHandle,
    /// The admin API, when enabled.
    pub admin: Option<AdminHandle>,
    /// The policy slots.
    pub policies: Arc<Policies>,
    /// The scaler and analytics engine.
    pub analytics: Arc<Analytics>,
    loops: AnalyticsHandle,
    _watcher: Option<Watcher>,
    /// Reloads a changed model file.
    scorer_watch: Option<tokio::task::JoinHandle<()>>,
    /// This instance's membership of its cluster, with `[cluster]`.
    pub cluster: Option<Arc<ClusterHandle>>,
}

/// Loads the plugins, binds the listeners and starts serving.
pub async fn start(config: Arc<Config>) -> anyhow::Result<Services> {
    start_with_routes(config, None).await
}

/// [`start`], with extra admin routes (behind the admin token) from the embedding command.
pub async fn start_with_routes(
    config: Arc<Config>,
    admin_routes: Option<axum::Router>,
) -> anyhow::Result<Services> {
    let plugins = config.plugins.clone();
    let scorer_config = config.scorer.clone();
    // Compiling plugins can take seconds (Python and JavaScript embed an interpreter), and a
    // model file is read and checked before the first call.
    let (policies, scorer) = tokio::task::spawn_blocking(move || {
        let scorer = scorer_config
            .model
            .is_some()
            .then(|| OnnxScorer::open(&scorer_config));
        let for_plugins: Arc<dyn Scorer> = match &scorer {
            Some(scorer) => Arc::clone(scorer) as Arc<dyn Scorer>,
            None => Arc::new(NeutralScorer),
        };
        Policies::with_scorer(&plugins, for_plugins).map(|policies| (policies, scorer))
    })
    .await
    .context("plugin loading task failed")?
    .context("cannot load the configured policy plugins")?;
    let scorer_watch = scorer.as_ref().map(OnnxScorer::watch);
    let watcher = match (&config.plugins.dir, config.plugins.watch) {
        (Some(_), true) => Some(Watcher::start(&policies)?),
        _ => None,
    };
    let router: Arc<dyn sluice_contract::route::Router> = policies.router();
    let proxy = Proxy::bind_with_policies(Arc::clone(&config), router, policies.resumer())
        .await?
        .spawn();
    let analytics = Analytics::open(Arc::clone(&config), proxy.view(), Arc::clone(&policies))?;
    let loops = analytics.spawn();
    let admin_url = config
        .admin
        .enabled
        .then(|| format!("http://{}", config.admin.listen));
    let cluster = config.cluster.as_ref().map(|cluster| {
        let instance = cluster
            .instance
            .clone()
            .unwrap_or_else(|| crate::cluster::default_instance(proxy.addr().port()));
        Arc::new(sluice_cluster::start(
            cluster.clone(),
            instance,
            admin_url,
            proxy.view(),
        ))
    });
    let admin_routes = match (&cluster, admin_routes) {
        (Some(cluster), Some(routes)) => Some(routes.merge(crate::cluster::routes(cluster))),
        (Some(cluster), None) => Some(crate::cluster::routes(cluster)),
        (None, routes) => routes,
    };
    let admin = if config.admin.enabled {
        let server = AdminServer::bind_with_analytics(
            &config.admin,
            Arc::clone(&policies),
            proxy.view(),
            Some(Arc::clone(&analytics)),
        )
        .await
        .with_context(|| format!("cannot bind the admin listener {}", config.admin.listen))?;
        let server = match admin_routes {
            Some(routes) => server.with_routes(routes),
            None => server,
        };
        Some(server.spawn())
    } else {
        None
    };
    Ok(Services {
        proxy,
        admin,
        policies,
        analytics,
        loops,
        _watcher: watcher,
        scorer_watch,
        cluster,
    })
}

impl Services {
    /// Stops the admin API and the loops, then drains the data plane.
    pub async fn shutdown(self) {
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        self.loops.shutdown().await;
        if let Some(watch) = self.scorer_watch {
            watch.abort();
        }
        self.proxy.shutdown().await;
        // Only once its connections are closed may the others grow into its share.
        if let Some(cluster) = self.cluster.and_then(|c| Arc::try_unwrap(c).ok()) {
            cluster.leave().await;
        }
    }
}
