//! The router a server's configuration describes: `[[backends]]`,
//! `[[routes]]` and `[routing]` from the TOML, and the `--upstream`
//! shorthand (every model an upstream lists becomes a route; upstreams
//! listing the same name are its replicas).

use std::sync::Arc;
use std::time::Duration;

use crate::backend::local::LocalBackend;
use crate::backend::router::{Policy, Route, Router, Slot, Strategy, Target};
use crate::backend::upstream::{HttpClients, OpenAiUpstream, UpstreamConfig};
use crate::config::{BackendKind, BackendSection, RoutingSection, ServeConfig};
use crate::metrics::GatewayMetrics;

/// How often `--upstream` servers are checked (and asked for their models).
const UPSTREAM_HEALTH_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RoutingError(String);

/// Whether the configuration asks for a model in this process: one is named,
/// a `local` backend is declared, or there is nothing else to serve.
pub fn wants_local(config: &ServeConfig, upstreams: &[String]) -> bool {
    let remote = !upstreams.is_empty() || config.backends.iter().any(|b| b.kind == BackendKind::Openai);
    config.model.path.is_some() || config.backends.iter().any(|b| b.kind == BackendKind::Local) || !remote
}

/// `http://host:8000` means the OpenAI API root `http://host:8000/v1`, as
/// the servers Ember fronts all mount it; a URL with a path is kept.
pub fn api_root(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(parsed) if parsed.path() == "/" || parsed.path().is_empty() => format!("{trimmed}/v1"),
        _ => trimmed.to_owned(),
    }
}

pub fn build_router(
    config: &ServeConfig,
    upstreams: &[String],
    local: Option<Arc<LocalBackend>>,
    metrics: Option<Arc<GatewayMetrics>>,
) -> Result<Router, RoutingError> {
    let bad = |message: String| RoutingError(message);
    let clients = HttpClients::default();
    let mut slots: Vec<(String, Arc<Slot>, &BackendSection)> = Vec::new();
    for section in &config.backends {
        if slots.iter().any(|(name, ..)| *name == section.name) {
            return Err(bad(format!("[[backends]]: two backends are named `{}`", section.name)));
        }
        let slot = match section.kind {
            BackendKind::Local => {
                let local = local.clone().ok_or_else(|| bad(format!("backend `{}`: no model is loaded in this server", section.name)))?;
                if section.base_url.is_some() {
                    return Err(bad(format!("backend `{}`: a local backend has no `base_url`", section.name)));
                }
                Slot::new(local, section.weight, section.max_concurrency, None)
            }
            BackendKind::Openai => {
                let upstream = upstream_config(section)?;
                let backend = OpenAiUpstream::new(upstream, &clients).map_err(|e| bad(e.to_string()))?;
                Slot::new(Arc::new(backend), section.weight, section.max_concurrency, seconds(section.health_check_secs))
            }
        };
        slots.push((section.name.clone(), slot, section));
    }

    let mut routes = Vec::new();
    let mut used: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for route in &config.routes {
        for name in std::iter::once(&route.model).chain(&route.aliases) {
            if names.contains(&name.as_str()) {
                return Err(bad(format!("[[routes]]: the model name `{name}` is routed twice")));
            }
            names.push(name);
        }
        if route.backends.is_empty() {
            return Err(bad(format!("route `{}`: no backends", route.model)));
        }
        let mut targets = Vec::new();
        for backend in &route.backends {
            let (_, slot, section) = slots
                .iter()
                .find(|(name, ..)| name == backend)
                .ok_or_else(|| bad(format!("route `{}`: no backend is named `{backend}`", route.model)))?;
            let model = match slot.backend.as_local() {
                Some(local) => local.served_name().to_owned(),
                None => section.model.clone().unwrap_or_else(|| route.model.clone()),
            };
            targets.push(Target {
                slot: slot.clone(),
                model,
                max_model_len: None,
            });
            used.push(backend);
        }
        routes.push(Route::new(route.model.clone(), targets, route.strategy, route.aliases.clone()));
    }

    // The model in this process is served under its own name unless a
    // route already takes it.
    if let Some(local) = &local {
        let routed = routes.iter().any(|r| r.targets.iter().any(|t| t.slot.backend.as_local().is_some()));
        if !routed {
            let slot = match slots.iter().find(|(_, s, _)| s.backend.as_local().is_some()) {
                Some((_, slot, _)) => slot.clone(),
                None => Slot::new(local.clone(), 1, None, None),
            };
            let name = local.served_name().to_owned();
            let target = Target {
                slot,
                model: name.clone(),
                max_model_len: None,
            };
            routes.insert(0, Route::new(name, vec![target], Strategy::default(), Vec::new()));
        }
    }

    // Upstreams no route names, and `--upstream` servers, serve what they list.
    let mut discovering: Vec<Arc<Slot>> = slots
        .iter()
        .filter(|(name, slot, _)| slot.backend.as_local().is_none() && !used.contains(&name.as_str()))
        .map(|(_, slot, _)| slot.clone())
        .collect();
    for url in upstreams {
        let name = upstream_name(url);
        let upstream = OpenAiUpstream::new(UpstreamConfig::new(name, api_root(url)), &clients).map_err(|e| bad(e.to_string()))?;
        discovering.push(Slot::new(Arc::new(upstream), 1, None, Some(UPSTREAM_HEALTH_CHECK)));
    }
    Ok(Router::new(local, routes, discovering, policy(&config.routing), metrics))
}

fn upstream_config(section: &BackendSection) -> Result<UpstreamConfig, RoutingError> {
    let name = &section.name;
    let base_url = section
        .base_url
        .as_deref()
        .ok_or_else(|| RoutingError(format!("backend `{name}`: an `openai` backend needs `base_url`")))?;
    let api_key = match &section.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            RoutingError(format!("backend `{name}`: the environment variable `{var}` (api_key_env) is not set"))
        })?),
        None => None,
    };
    Ok(UpstreamConfig {
        api_key,
        connect_timeout: seconds(section.connect_timeout_secs).unwrap_or(Duration::from_secs(5)),
        first_byte_timeout: seconds(section.first_byte_timeout_secs),
        total_timeout: seconds(section.timeout_secs),
        headers: section.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        http2: section.http2,
        ..UpstreamConfig::new(name.clone(), api_root(base_url))
    })
}

/// `--upstream http://10.0.0.5:8000/v1` is the backend `10.0.0.5:8000`.
fn upstream_name(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// Positive seconds as a duration; zero or less is "none".
fn seconds(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

fn policy(section: &RoutingSection) -> Policy {
    Policy {
        retries: section.retries,
        backoff: Duration::from_millis(section.backoff_ms),
        allowed_fails: section.allowed_fails.max(1),
        cooldown: seconds(section.cooldown_secs).unwrap_or_default(),
    }
}

/// The routes and the backends behind each, for the start-up log.
pub fn describe(router: &Router) -> String {
    let routes: Vec<String> = router
        .routes()
        .iter()
        .map(|r| {
            let backends: Vec<&str> = r.targets.iter().map(|t| t.slot.name()).collect();
            format!("{} -> {}", r.name, backends.join(", "))
        })
        .collect();
    let discovering: Vec<&str> = router.discovering().iter().map(|s| s.name()).collect();
    match (routes.is_empty(), discovering.is_empty()) {
        (_, true) => routes.join("; "),
        (true, false) => format!("the models of {}", discovering.join(", ")),
        (false, false) => format!("{}; and the models of {}", routes.join("; "), discovering.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example in `configs/` builds a router: its routes name
    /// declared backends, and a local backend has a model to serve.
    #[test]
    fn every_example_config_builds_its_routes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut built = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let mut config = ServeConfig::from_file(&path)?;
            // Keys come from the environment; the routes do not depend on them.
            for backend in &mut config.backends {
                backend.api_key_env = None;
            }
            let local = wants_local(&config, &[]).then(|| {
                let served = config.model.served_model_name.clone().unwrap_or_else(|| "default".into());
                Arc::new(LocalBackend::new("local", served, 16))
            });
            let router = build_router(&config, &[], local, None).map_err(|e| format!("{}: {e}", path.display()))?;
            let names: Vec<String> = router.routes().iter().map(|r| r.name.clone()).collect();
            built.push((path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), names));
        }
        let routes_of = |file: &str| built.iter().find(|(f, _)| f == file).map(|(_, names)| names.clone());
        assert_eq!(routes_of("routes-local.toml"), Some(vec!["qwen3-4b".to_owned()]));
        assert_eq!(routes_of("routes-vllm-fleet.toml"), Some(vec!["qwen3-4b".to_owned(), "qwen3-30b".to_owned()]));
        // The replicas' routes come from the models they list once checked.
        assert_eq!(routes_of("routes-ember-replicas.toml"), Some(Vec::new()));
        Ok(())
    }

    #[test]
    fn a_route_to_an_unknown_backend_or_a_name_routed_twice_is_an_error() {
        let parse = |text: &str| ServeConfig::from_toml(text, std::path::Path::new("test.toml"));
        let unknown = parse("[[backends]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[routes]]\nmodel = \"m\"\nbackends = [\"b\"]\n");
        let error = unknown.map_err(|e| e.to_string()).and_then(|c| build_router(&c, &[], None, None).map(|_| ()).map_err(|e| e.to_string()));
        assert!(error.as_ref().is_err_and(|e| e.contains("no backend is named `b`")), "{error:?}");
        let twice = parse(
            "[[backends]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [[routes]]\nmodel = \"m\"\nbackends = [\"a\"]\n[[routes]]\nmodel = \"n\"\nbackends = [\"a\"]\naliases = [\"m\"]\n",
        );
        let error = twice.map_err(|e| e.to_string()).and_then(|c| build_router(&c, &[], None, None).map(|_| ()).map_err(|e| e.to_string()));
        assert!(error.as_ref().is_err_and(|e| e.contains("routed twice")), "{error:?}");
    }
}
