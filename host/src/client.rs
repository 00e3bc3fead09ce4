//! The client side of `kairos task …` and `kairos schedule …`: HTTP calls to a server,
//! printing its JSON answer, or its `{"error"}` message and a failing exit status.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::{ScheduleCmd, ServerArg, TaskCmd};

fn parse_payload(s: &str) -> anyhow::Result<Value> {
    serde_json::from_str(s).map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))
}

/// An agent trusting `--ca` when given (the web PKI roots otherwise).
fn agent(srv: &ServerArg) -> anyhow::Result<ureq::Agent> {
    Ok(agent_builder(srv)?.build())
}

/// The builder of [`agent`], for callers that set more (timeouts).
pub(crate) fn agent_builder(srv: &ServerArg) -> anyhow::Result<ureq::AgentBuilder> {
    let b = ureq::AgentBuilder::new();
    Ok(match &srv.ca {
        None => b,
        Some(ca) => b.tls_config(crate::api::tls::client_trusting("--ca", ca)?),
    })
}

fn call(srv: &ServerArg, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    call_paged(srv, method, path, body).map(|(v, _)| v)
}

/// The answer and its `kairos-next-cursor` header.
fn call_paged(
    srv: &ServerArg,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(Value, Option<String>)> {
    let url = format!("{}{path}", srv.server.trim_end_matches('/'));
    let mut req = agent(srv)?.request(method, &url);
    if let Some(t) = &srv.token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match res {
        Ok(r) => {
            let next = r.header("kairos-next-cursor").map(str::to_string);
            Ok((r.into_json()?, next))
        }
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            anyhow::bail!("server answered {code}: {msg}")
        }
        Err(e) => anyhow::bail!("cannot reach {url}: {e}"),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A task command; `task add --file` exits with its own status (see [`crate::import`]).
pub fn task(cmd: TaskCmd) -> anyhow::Result<ExitCode> {
    let v = match cmd {
        TaskCmd::Add {
            file: Some(file),
            batch_size,
            skip_lines,
            import_id,
            server,
            ..
        } => {
            return Ok(crate::import::run(crate::import::ImportArgs {
                file,
                batch_size: batch_size.unwrap_or(crate::import::DEFAULT_BATCH),
                skip_lines: skip_lines.unwrap_or(0),
                import_id,
                server,
            }));
        }
        TaskCmd::Add {
            plugin,
            key,
            payload,
            run_at,
            delay_ms,
            uniqueness_key,
            max_attempts,
            server,
            ..
        } => {
            let (Some(plugin), Some(key)) = (plugin, key) else {
                anyhow::bail!("--plugin and --key are required (or --file)");
            };
            let mut body =
                json!({ "plugin": plugin, "key": key, "payload": parse_payload(&payload)? });
            for (k, v) in [
                ("run_at", run_at.map(Value::from)),
                ("delay_ms", delay_ms.map(Value::from)),
                ("uniqueness_key", uniqueness_key.map(Value::from)),
                ("max_attempts", max_attempts.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            call(&server, "POST", "/v1/tasks", Some(body))?
        }
        TaskCmd::Get { id, server } => {
            call(&server, "GET", &format!("/v1/tasks/{}", enc(&id)), None)?
        }
        TaskCmd::List {
            key,
            state,
            limit,
            cursor,
            server,
        } => {
            let mut q = format!("limit={limit}");
            for (name, v) in [("key", key), ("state", state), ("cursor", cursor)] {
                if let Some(v) = v {
                    q += &format!("&{name}={}", enc(&v));
                }
            }
            let (page, next) = call_paged(&server, "GET", &format!("/v1/tasks?{q}"), None)?;
            if let Some(c) = next {
                eprintln!("next page: --cursor {c}");
            }
            page
        }
        TaskCmd::Cancel { id, server } => {
            call(&server, "DELETE", &format!("/v1/tasks/{}", enc(&id)), None)?
        }
        TaskCmd::Retry { id, server } => call(
            &server,
            "POST",
            &format!("/v1/tasks/{}/retry", enc(&id)),
            Some(json!({})),
        )?,
    };
    print(&v)?;
    Ok(ExitCode::SUCCESS)
}

pub fn schedule(cmd: ScheduleCmd) -> anyhow::Result<()> {
    let v = match cmd {
        ScheduleCmd::Add {
            name,
            cron,
            plugin,
            key,
            payload,
            timezone,
            server,
        } => {
            let body = json!({
                "name": name, "cron": cron, "plugin": plugin, "key": key,
                "payload": parse_payload(&payload)?, "timezone": timezone,
            });
            call(&server, "POST", "/v1/schedules", Some(body))?
        }
        ScheduleCmd::List { server } => call(&server, "GET", "/v1/schedules", None)?,
        ScheduleCmd::Rm { name, server } => call(
            &server,
            "DELETE",
            &format!("/v1/schedules/{}", enc(&name)),
            None,
        )?,
    };
    print(&v)
}
