//! `burrow up`'s port mapping: the gateway maps the node's UDP port, and the engine hears
//! of each mapping (a candidate any peer can reach).

use anyhow::Result;

/// Starts keeping the node's port mapped on the default gateway, with a task that tells the
/// engine of each mapping. Without a default route the node simply goes without.
pub(super) async fn start(
    port: u16,
    seed: u64,
    commands: tokio::sync::mpsc::UnboundedSender<crate::node::NodeCommand>,
    summary: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Option<crate::portmap::PortMapHandle> {
    let Some(config) = crate::portmap::config_for(port, seed) else {
        tracing::info!("port mapping: no IPv4 default route");
        if let Ok(mut s) = summary.lock() {
            *s = Some("no IPv4 default route".into());
        }
        return None;
    };
    let handle = match crate::portmap::spawn(config).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "port mapping: no socket");
            return None;
        }
    };
    let mut report = handle.report.clone();
    tasks.spawn(async move {
        // Each report, in words, for `burrow doctor`.
        while report.changed().await.is_ok() {
            let line = report
                .borrow_and_update()
                .as_ref()
                .map(crate::portmap::summary);
            if let (Some(line), Ok(mut s)) = (line, summary.lock()) {
                *s = Some(line);
            }
        }
        std::future::pending().await
    });
    let mut mapping = handle.mapping.clone();
    tasks.spawn(async move {
        loop {
            let external = mapping.borrow_and_update().map(|m| m.external);
            let sent = commands.send(crate::node::NodeCommand::SetPortMapping(external));
            if sent.is_err() || mapping.changed().await.is_err() {
                // The engine or the mapper stopped: the node goes on without.
                return std::future::pending().await;
            }
        }
    });
    Some(handle)
}
