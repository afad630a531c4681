//! `herald webhook add|list|remove`: a thin client of `/v1/webhooks`, as a webhook
//! admin: it sends `webhook-admin-token` (`--token`, or the server's own environment
//! variable `HERALD_WEBHOOK_ADMIN_TOKEN`) as a bearer token.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Value, json};

/// The `webhook` subcommand's arguments.
pub fn add_args(cmd: Command) -> Command {
    let server = Arg::new("server")
        .long("server")
        .env("HERALD_SERVER")
        .default_value("http://127.0.0.1:8080")
        .help("herald server URL");
    let token = Arg::new("token")
        .long("token")
        .env("HERALD_WEBHOOK_ADMIN_TOKEN")
        .hide_env_values(true)
        .help("The server's `webhook-admin-token` (or an admin user's access token)");
    cmd.about("Manage outgoing webhooks (docs/WEBHOOKS.md)")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("add")
                .about("Register an endpoint; prints its ID and signing secret")
                .arg(server.clone())
                .arg(token.clone())
                .arg(
                    Arg::new("topic")
                        .required(true)
                        .help("Topic or pattern (`alerts-*`)"),
                )
                .arg(
                    Arg::new("url")
                        .required(true)
                        .help("Endpoint URL (http or https)"),
                )
                .arg(
                    Arg::new("secret")
                        .long("secret")
                        .help("Signing secret `whsec_...`; generated if absent"),
                )
                .arg(
                    Arg::new("priority")
                        .long("priority")
                        .value_delimiter(',')
                        .help("Only these priorities, e.g. `4,5`"),
                )
                .arg(
                    Arg::new("tags")
                        .long("tags")
                        .value_delimiter(',')
                        .help("Only messages with all these tags"),
                )
                .arg(
                    Arg::new("description")
                        .long("description")
                        .help("Free text"),
                )
                .arg(
                    Arg::new("ordered")
                        .long("ordered")
                        .action(ArgAction::SetTrue)
                        .help("Deliver one message at a time, in order"),
                ),
        )
        .subcommand(
            Command::new("list")
                .about("List endpoints (JSON, one per line)")
                .arg(server.clone())
                .arg(token.clone()),
        )
        .subcommand(
            Command::new("remove")
                .about("Delete an endpoint")
                .arg(server)
                .arg(token)
                .arg(Arg::new("id").required(true).help("Webhook ID (`wh_...`)")),
        )
}

/// Runs `herald webhook ...`.
pub fn run(matches: &ArgMatches) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run_async(matches))
}

async fn run_async(matches: &ArgMatches) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(super::client::tls_config()?)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let (name, m) = matches.subcommand().context("missing subcommand")?;
    let server = m
        .get_one::<String>("server")
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_default();
    let base = format!("{server}/v1/webhooks");
    let token = m.get_one::<String>("token").cloned();
    let call = |request: reqwest::RequestBuilder, expect: u16| {
        let request = match &token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        call(request, expect)
    };
    match name {
        "add" => {
            let strings = |key: &str| -> Vec<String> {
                m.get_many::<String>(key)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default()
            };
            let priority = strings("priority")
                .iter()
                .map(|p| p.trim().parse::<u8>())
                .collect::<Result<Vec<_>, _>>()
                .context("--priority takes numbers 1 to 5")?;
            let mut body = json!({
                "topic": m.get_one::<String>("topic"),
                "url": m.get_one::<String>("url"),
                "filter": {"priority": priority, "tags": strings("tags")},
                "ordered": m.get_flag("ordered"),
            });
            if let Some(secret) = m.get_one::<String>("secret") {
                body["secret"] = json!(secret);
            }
            if let Some(d) = m.get_one::<String>("description") {
                body["description"] = json!(d);
            }
            let v = call(client.post(&base).body(body.to_string()), 201).await?;
            println!("{v}");
        }
        "list" => {
            let v = call(client.get(&base), 200).await?;
            for w in v.as_array().into_iter().flatten() {
                println!("{w}");
            }
        }
        "remove" => {
            let id = m.get_one::<String>("id").context("missing ID")?;
            call(client.delete(format!("{base}/{id}")), 200).await?;
            println!("removed {id}");
        }
        other => bail!("unknown subcommand {other}"),
    }
    Ok(())
}

async fn call(request: reqwest::RequestBuilder, expect: u16) -> anyhow::Result<Value> {
    let response = request
        .header("content-type", "application/json")
        .send()
        .await
        .context("cannot reach the server")?;
    let status = response.status().as_u16();
    let text = response.text().await.context("cannot read the answer")?;
    if status != expect {
        bail!("server answered {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))
}
