//! The hyve server: the SysAdm API over WebSocket and REST, in front of the
//! engine.
//!
//! ```text
//! TCP ─► listen (limit, TLS) ─► ws / rest ─► session login ─► api::dispatch ─► engine
//!                     ◄── ws::render / rest::reply ◄──────── Outcome ◄──────────┘
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

use hyve_engine::events::EventBus;
use hyve_engine::fetch::Fetcher;
use hyve_engine::store::dir::DirStore;
use hyve_engine::tasks::Dispatcher;
use hyve_engine::vmm::qemu::QemuDriver;
use hyve_engine::{Engine, Vmm};

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod datadir;
pub mod listen;
pub mod rest;
pub mod session;
pub mod tls;
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
    /// Logins, tokens, the blacklist, registered keys.
    pub auth: auth::Auth,
    /// The transport limits of `[limits]`, checked.
    pub net: config::NetLimits,
    /// Flips to `true` when the server is stopping.
    pub shutdown: watch::Sender<bool>,
}

/// A bound, ready server; `serve` runs it until `stop` resolves.
pub struct Server {
    app: Arc<App>,
    ws: TcpListener,
    rest: TcpListener,
    tls: Option<tls::Tls>,
    _lock: datadir::DataDirLock,
}

impl Server {
    /// Opens the data dir, the engine, the accounts and TLS, and binds both
    /// listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let lock = datadir::prepare(&config.data_dir)?;
        let limits = config.limits()?;
        let task_limits = config.task_limits()?;
        let fetcher = Fetcher::new(config.fetch_config()?).context("[fetch]")?;
        let net = config.net_limits()?;
        let auth = auth::Auth::open(&config)?;
        let tls = if config.tls.enabled {
            Some(tls::load(&config.tls, &config.state_dir())?)
        } else {
            None
        };
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
            auth,
            net,
            shutdown,
        });
        Ok(Server {
            app,
            ws,
            rest,
            tls,
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

    /// The served certificate's fingerprint, when TLS is on.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.fingerprint.as_str())
    }

    /// Serves until `stop` resolves, then closes every connection and
    /// returns once in-flight requests are answered (at most 10 s).
    pub async fn serve(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "s" } else { "" };
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
            // send_replace: the value must change even if no one listens yet.
            app.shutdown.send_replace(true);
        });
        // Every connection holds a clone of `alive`; when the last one
        // closes, `gone` yields `None`.
        let (alive, mut gone) = mpsc::channel::<()>(1);
        let shared = listen::Shared::new(
            self.tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone())),
            &self.app.net,
            self.app.shutdown.subscribe(),
            alive,
        );
        let ws = tokio::spawn(listen::run(self.ws, ws_router, shared.clone()));
        let rest = tokio::spawn(listen::run(self.rest, rest_router, shared));
        let mut rx = self.app.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        let _ = tokio::join!(ws, rest);
        if tokio::time::timeout(Duration::from_secs(10), gone.recv())
            .await
            .is_err()
        {
            info!("gave up waiting for connections to close");
        }
        info!("stopped");
        Ok(())
    }
}
