//! `make contract-test` (`cargo xtask contract`): schemathesis (PyPI) generates requests
//! from the served OpenAPI document and checks every answer against it (no 5xx, status
//! codes and bodies as documented), against a private Redis and gateway the test kit
//! starts (until 2026-12-07 `scripts/contract-test.sh`). The schemathesis version is
//! pinned, in a virtualenv of its own under `.run/`.

use std::process::Command;

use testkit::{Gateway, Server};

use crate::kit::{unique, Profile, Result, Workspace, GATEWAY_READY};

const SCHEMATHESIS: &str = "4.32.5";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Examples per operation.
    #[arg(long, env = "CONTRACT_EXAMPLES", default_value_t = 25)]
    examples: u32,
    /// More schemathesis options, passed on.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

/// The virtualenv's schemathesis, installed when missing or another version.
fn schemathesis(ws: &Workspace) -> Result<std::path::PathBuf> {
    let venv = ws.root.join(".run/contract-venv");
    let bin = venv.join("bin/schemathesis");
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS));
    if !current {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        let pip = venv.join("bin/pip");
        let installed = Command::new(&pip)
            .args(["install", "-q", &format!("schemathesis=={SCHEMATHESIS}")])
            .status();
        if !(made.is_ok_and(|s| s.success()) && installed.is_ok_and(|s| s.success())) {
            return Err(format!(
                "cannot install schemathesis {SCHEMATHESIS} into {}",
                venv.display()
            ));
        }
    }
    Ok(bin)
}

pub(crate) async fn run(args: Args) -> Result<bool> {
    let ws = Workspace::new(Profile::Debug);
    let schemathesis = schemathesis(&ws)?;
    ws.build()?;
    let work = ws.root.join(".run/contract");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Redis first, then the gateway: a gateway started first would only be not ready
    // for a while.
    let redis = Server::start(&[], false);
    // schemathesis.toml reads both credentials from the environment: the admin routes
    // get the admin token, every other route the server key.
    let api_key = unique("contract-api-key-");
    let admin = unique("contract-admin-");
    let env: Vec<(String, String)> = [
        (
            "ROOMCAST_REDIS_URL",
            format!("redis://127.0.0.1:{}", redis.port),
        ),
        (
            "ROOMCAST_JWT_SECRET",
            "contract-test-secret-0123456789".into(),
        ),
        ("ROOMCAST_API_KEY", api_key.clone()),
        ("ROOMCAST_ADMIN_TOKEN", admin.clone()),
        ("ROOMCAST_LOG", "warn".into()),
        ("ROOMCAST_RATE_API", "0".into()),
        ("ROOMCAST_RATE_API_STRICT", "0".into()),
        ("ROOMCAST_RATE_BURST", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let gateway = Gateway::launch(&ws.gateway(), &env, &work, "contract", GATEWAY_READY).await;
    let base = format!("http://{}/api/v1", gateway.addr);
    // With the server key (the admin token on admin routes) every route is reachable,
    // and the document's links let the stateful phase act on a member it joined.
    // Generated ids mostly hit 400/404 paths, which must be documented problems too. Two
    // stateful checks assume CRUD semantics this API does not have, so they are
    // excluded: `use_after_free` (an ended session and a cleared history stay readable
    // by design) and `ensure_resource_availability` (a 404 from
    // /sessions/{id}/presence/leave is about the member, not the session just created).
    let status = tokio::process::Command::new(&schemathesis)
        .current_dir(&ws.root)
        .env("CONTRACT_API_KEY", &api_key)
        .env("CONTRACT_ADMIN_TOKEN", &admin)
        .args(["--config-file", "scripts/schemathesis.toml", "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base, "--checks", "all"])
        .args([
            "--exclude-checks",
            "use_after_free,ensure_resource_availability",
        ])
        .args(["--max-examples", &args.examples.to_string(), "--seed", "1"])
        .args(["--request-timeout", "10", "--no-color"])
        .args(&args.extra)
        .status()
        .await
        .map_err(|e| format!("cannot run schemathesis: {e}"))?;
    drop(gateway);
    drop(redis);
    Ok(status.success())
}
