//! Active health checks: every backend with a check interval is asked for
//! its models in turn. An answer marks it up (and, for a backend whose
//! models define routes, updates them); a failure marks it down until it
//! answers again, so requests go to its replicas meanwhile.

use std::sync::Arc;

use crate::backend::router::Router;

/// Starts one checking task per backend that has a check interval, on the
/// current actix/tokio runtime. The first check runs at once, so models
/// of `--upstream` servers are known as soon as the servers answer.
pub fn spawn_checks(router: &Arc<Router>) {
    for slot in router.slots() {
        let Some(interval) = slot.health_interval else { continue };
        let router = router.clone();
        actix_web::rt::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let checked = tokio::time::timeout(interval.max(std::time::Duration::from_secs(1)), slot.backend.models()).await;
                match checked {
                    Ok(Ok(models)) => {
                        slot.set_checked(true);
                        if router.discovers(&slot) {
                            router.set_models(&slot, models);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(backend = slot.name(), error = %e, "health check failed");
                        slot.set_checked(false);
                    }
                    Err(_) => {
                        tracing::warn!(backend = slot.name(), "health check timed out");
                        slot.set_checked(false);
                    }
                }
            }
        });
    }
}
