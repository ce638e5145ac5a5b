//! The hyve server: the SysAdm API over WebSocket and REST, in front of the
//! engine.
//!
//! ```text
//! frame / HTTP body ──► hyve_proto (parse) ──► api::dispatch ──► engine
//!        ◄── ws::render / rest::reply ◄──────── Outcome ◄─────────┘
//! ```

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use hyve_engine::events::EventBus;
use hyve_engine::fetch::Fetcher;
use hyve_engine::store::dir::DirStore;
use hyve_engine::tasks::Dispatcher;
use hyve_engine::vmm::qemu::QemuDriver;
use hyve_engine::{Engine, Vmm};

pub mod api;
pub mod config;
pub mod console;
pub mod datadir;
pub mod rest;
pub mod session;
pub mod ws;

pub use config::{Config, Overrides};

/// What every request handler can reach.
pub struct App {
    pub config: Config,
    pub engine: Arc<Engine>,
    /// The running guests.
    pub vmm: Arc<Vmm>,
    /// Where background work and anything else announce events.
    pub events: Arc<EventBus>,
    /// Background tasks (`fetchiso`, `rpc/dispatcher`).
    pub tasks: Arc<Dispatcher>,
    /// Flips to `true` when the server is stopping.
    pub shutdown: watch::Sender<bool>,
}

/// A bound, ready server; `serve` runs it until `stop` resolves.
pub struct Server {
    app: Arc<App>,
    ws: TcpListener,
    rest: TcpListener,
    _lock: datadir::DataDirLock,
}

impl Server {
    /// Opens the data dir and the engine and binds both listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let lock = datadir::prepare(&config.data_dir)?;
        let limits = config.limits()?;
        let task_limits = config.task_limits()?;
        let fetcher = Fetcher::new(config.fetch_config()?).context("[fetch]")?;
        let store = Arc::new(DirStore::new(&config.data_dir, config.pools.clone()));
        let tasks_dir = store.state_dir().join("tasks");
        let engine = tokio::task::spawn_blocking(move || Engine::open(store, limits))
            .await?
            .context("cannot open the data dir")?;
        let engine = Arc::new(engine);
        let events = EventBus::new();
        let (e2, b2) = (engine.clone(), events.clone());
        let tasks = tokio::task::spawn_blocking(move || {
            Dispatcher::open(tasks_dir, e2, b2, fetcher, task_limits)
        })
        .await?
        .context("cannot read the task records")?;
        let ws = TcpListener::bind(config.ws_listen)
            .await
            .with_context(|| format!("cannot listen on {} (ws_listen)", config.ws_listen))?;
        let rest = TcpListener::bind(config.rest_listen)
            .await
            .with_context(|| format!("cannot listen on {} (rest_listen)", config.rest_listen))?;
        let driver = QemuDriver::new(
            config.qemu.binary.clone(),
            config.accel()?,
            config.qemu.ovmf_code.clone(),
            config.qemu.ovmf_vars.clone(),
        );
        let vmm = Vmm::new(engine.clone(), Arc::new(driver), config.vmm()?);
        // Guests that outlived the previous server are re-adopted before
        // any request can ask about them.
        vmm.recover().await;
        let (shutdown, _) = watch::channel(false);
        let app = Arc::new(App {
            config,
            engine,
            vmm,
            events,
            tasks,
            shutdown,
        });
        Ok(Server {
            app,
            ws,
            rest,
            _lock: lock,
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.local_addr().expect("bound")
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.rest.local_addr().expect("bound")
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `stop` resolves, then closes every connection and
    /// returns once in-flight requests are answered (at most 10 s).
    pub async fn serve(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let scheme = if self.app.config.tls.enabled { "s" } else { "" };
        info!(
            "listening ws=ws{scheme}://{} rest=http{scheme}://{}",
            self.ws_addr(),
            self.rest_addr()
        );
        // Downloads a stop cut short go on before anyone can ask about them.
        self.app.tasks.start().await;
        let ws_router = Router::new()
            .fallback(any(ws::upgrade))
            .with_state(self.app.clone());
        let rest_router = Router::new()
            .fallback(any(rest::handle))
            .with_state(self.app.clone());
        // Guests with boot = 1 start in the background: a slow start (or
        // the accelerator probe) must not keep the API closed.
        let vmm = self.app.vmm.clone();
        tokio::spawn(async move { vmm.autostart().await });
        let app = self.app.clone();
        tokio::spawn(async move {
            stop.await;
            info!("stopping");
            let _ = app.shutdown.send(true);
        });
        let wait = |app: Arc<App>| async move {
            let mut rx = app.shutdown.subscribe();
            let _ = rx.wait_for(|s| *s).await;
        };
        let ws = axum::serve(
            self.ws,
            ws_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(wait(self.app.clone()));
        let rest = axum::serve(
            self.rest,
            rest_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(wait(self.app.clone()));
        let both = async { tokio::try_join!(ws.into_future(), rest.into_future()) };
        let mut rx = self.app.shutdown.subscribe();
        tokio::select! {
            r = both => { r?; }
            _ = async {
                let _ = rx.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => { info!("gave up waiting for connections to close"); }
        }
        info!("stopped");
        Ok(())
    }
}
