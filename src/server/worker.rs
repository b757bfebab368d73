//! Worker threads: one single-threaded runtime per core, each accepting on the shared public
//! listener and serving its connections to the end, as nginx's worker processes do.
//!
//! A connection, its request tasks and the upstream sockets they open stay on one thread: no
//! work stealing, no cross-thread wake-ups, and an upstream connection goes back to the idle
//! list of the thread whose runtime it is registered with ([`index`]).

use std::cell::Cell;
use std::net::TcpListener as StdListener;

use tokio::sync::oneshot;

/// Most worker threads; also the number of per-thread idle lists an upstream client keeps.
pub const MAX: usize = 64;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker number: 0 on the thread that started the server (and on any thread
/// that is not a worker), 1.. on the others.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many threads serve clients: `configured`, or one per core when 0; at most [`MAX`].
pub fn count(configured: usize) -> usize {
    let n = if configured == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        configured
    };
    n.clamp(1, MAX)
}

/// Start worker `i` (1..) on its own thread and single-threaded runtime, running
/// `serve(listener)` with a clone of the public listener. The receiver resolves when it is done.
pub fn spawn<F, Fut>(
    i: usize,
    listener: &StdListener,
    serve: F,
) -> std::io::Result<oneshot::Receiver<()>>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = listener.try_clone()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("shenhe-worker-{i}"))
        .spawn(move || {
            INDEX.with(|x| x.set(i % MAX));
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l).await,
                    Err(e) => tracing::error!(worker = i, error = %e, "Worker cannot listen"),
                }
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}
