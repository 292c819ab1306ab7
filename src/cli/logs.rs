//! `jac-orc logs MODULE NAME [-n NS] [-f] [--tail N]` (the `Logs` RPC): prints each line as it
//! arrives, so `-f` shows a workload's output live; `-o json` prints the objects REST streams,
//! one per line. A closed stdout (`jac-orc logs … | head`) ends it quietly, and the server
//! stops reading when the stream is dropped.

use anyhow::Result;
use tokio_stream::StreamExt;

use super::args::{LogsArgs, Output};
use super::client::{connect, server_error};
use super::output;
use crate::backend::LogLine;
use crate::identity::DeploymentId;
use crate::pb;

/// How a line is printed in table form.
fn text(l: &LogLine, prefix: bool, timestamps: bool) -> String {
    let mut out = String::new();
    if timestamps {
        if let Some(t) = &l.time {
            out.push_str(t);
            out.push(' ');
        }
    }
    if prefix {
        out.push_str(&format!("[{}] ", l.source));
    }
    out.push_str(&l.line);
    out
}

pub(crate) async fn logs(a: LogsArgs) -> Result<()> {
    let id = DeploymentId::new(a.namespace.clone(), a.module.clone(), a.name.clone())?;
    let req =
        pb::LogsRequest { namespace: id.namespace, module: id.module, name: id.name, follow: a.follow, tail: a.tail };
    let mut stream = connect(&a.client).await?.logs(req).await.map_err(server_error(None))?.into_inner();
    while let Some(item) = stream.next().await {
        let line = LogLine::from(item.map_err(server_error(None))?);
        match a.output {
            Output::Table => output::line(&text(&line, a.prefix, a.timestamps))?,
            Output::Json => output::line(&serde_json::to_string(&line)?)?,
            Output::Yaml => output::text(&format!("---\n{}", serde_norway::to_string(&line)?))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_printed_bare_unless_asked_for_source_and_time() {
        let l = LogLine::new("replica 1", "ready").at("2026-01-02T03:04:05Z");
        assert_eq!(text(&l, false, false), "ready");
        assert_eq!(text(&l, true, false), "[replica 1] ready");
        assert_eq!(text(&l, true, true), "2026-01-02T03:04:05Z [replica 1] ready");
        assert_eq!(text(&LogLine::new("p", "x"), false, true), "x", "no time known, none printed");
    }
}
