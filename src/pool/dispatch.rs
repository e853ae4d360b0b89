//! The pool's own runtime: one thread, `current_thread`, that runs every driver.
//!
//! Why not the embedding program's runtime: under HTTP load its threads are saturated with
//! connection tasks, and a driver that waits its turn behind them leaves its worker idle
//! between jobs (measured at full dispatch load: workers busy about 5% of the time). On a
//! thread of its own a driver runs as soon as its pipe is readable. It is also the thread that
//! spawns every worker, which matters for `PR_SET_PDEATHSIG`: the signal fires when the
//! *thread* that forked the child exits, and this thread lives exactly as long as the pool.
//!
//! When the thread stops, its runtime is dropped, and with it every task still on it: each
//! driver's worker is then killed and reaped by its drop (see `process::GroupChild`).

use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub(super) struct Dispatcher {
    /// Where drivers are spawned.
    pub(super) runtime: tokio::runtime::Handle,
    /// Sending or dropping it ends the thread, and with it its runtime.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// The thread, joined by `stop_and_join`.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    pub(super) fn start() -> Dispatcher {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("forkpool-pool".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let _ = handle_tx.send(runtime.handle().clone());
                // Both a stop and a dropped sender end the pool.
                let _ = runtime.block_on(stopped);
            })
            .expect("spawn the pool thread");
        Dispatcher {
            runtime: handle_rx.recv().expect("the pool thread sends its handle"),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Asks the thread to end; returns at once.
    pub(super) fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
    }

    /// Ends the thread and waits until it has dropped its runtime, and so every driver and
    /// worker. Blocks the caller for as long as that takes (workers are SIGKILLed: milliseconds).
    pub(super) fn stop_and_join(&self) {
        self.stop();
        let thread = self.thread.lock().unwrap().take();
        // Never join ourselves: the last handle could in principle be dropped by a task on
        // the pool's own runtime, and the thread then ends as soon as that task returns.
        if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            let _ = thread.join();
        }
    }
}
