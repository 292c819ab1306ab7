//! `jac-orc history`, `jac-orc rollback` and `jac-orc diff` (the `History`, `Rollback` and `Diff`
//! RPCs). `diff` exits 0 when a deploy would change nothing, 1 ([`Changes`]) when it would
//! change something, and 2 ([`DiffFailed`]) when it could not tell.

use std::io::{self, Write};

use anyhow::Result;
use serde::Serialize;

use super::args::{DiffArgs, IdArgs, RollbackArgs};
use super::client::{connect, follow, id_of, server_error, values_of, Shown};
use super::output::{self, Table, Tabular};
use crate::api::convert::to_struct;
use crate::backend::{Action, Revision};
use crate::pb;
use crate::service::DiffView;

/// `jac-orc diff` found something a deploy would change: exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("a deploy would change {0} object(s)")]
pub(crate) struct Changes(pub(crate) usize);

/// `jac-orc diff` could not tell what a deploy would change: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("diff failed")]
pub(crate) struct DiffFailed;

/// The exit status of an error that is not the default failure (1), and whether it is quiet
/// (its output was printed already).
pub(crate) fn exit_code(e: &anyhow::Error) -> Option<(u8, bool)> {
    if e.downcast_ref::<Changes>().is_some() {
        return Some((1, true));
    }
    e.downcast_ref::<DiffFailed>().map(|_| (2, false))
}

/// A deployment's revisions, oldest first (`-o json`: the array REST returns).
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct RevisionList(Vec<Revision>);

impl Tabular for RevisionList {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(&["REVISION", "VERSION", "TIME", "BY", "DESCRIPTION", "CONFIG"]);
        for r in &self.0 {
            let config = output::cell(&serde_json::Value::Object(r.config.clone()));
            t.row([
                r.revision.to_string(),
                r.version.clone(),
                r.time.clone(),
                r.deployed_by.clone(),
                r.description.clone(),
                config,
            ]);
        }
        t.write(out)
    }
}

impl Tabular for DiffView {
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        for ev in &self.objects {
            let mark = match ev.action {
                Action::Unchanged => ' ',
                Action::Created | Action::Started => '+',
                Action::Deleted => '-',
                _ => '~',
            };
            writeln!(out, "{mark} {}", output::event(ev))?;
        }
        let changed = self.objects.iter().filter(|o| o.action != Action::Unchanged).count();
        match changed {
            0 => writeln!(out, "no changes"),
            n => writeln!(out, "{n} object(s) would change"),
        }
    }
}

pub(crate) async fn history(a: IdArgs) -> Result<()> {
    let id = id_of(&a)?;
    let req = pb::HistoryRequest { namespace: id.namespace, module: id.module, name: id.name };
    let r = connect(&a.client).await?.history(req).await.map_err(server_error(None))?.into_inner();
    let revisions = r.revisions.iter().map(Revision::try_from).collect::<Result<Vec<_>, _>>()?;
    output::print(a.output, &RevisionList(revisions))
}

pub(crate) async fn rollback(a: RollbackArgs) -> Result<()> {
    let id = id_of(&a.id)?;
    let what = format!("rolling back {}/{}", id.module, id.name);
    let req = pb::RollbackRequest {
        namespace: id.namespace,
        module: id.module,
        name: id.name,
        revision: a.revision,
        wait: a.wait,
        wait_timeout_seconds: a.timeout,
    };
    let stream = connect(&a.id.client).await?.rollback(req).await.map_err(server_error(None))?.into_inner();
    follow(stream, a.id.output, &what, Shown::Deploy, None).await
}

pub(crate) async fn diff(a: DiffArgs) -> Result<()> {
    let view = match diff_view(&a).await {
        Ok(view) => view,
        Err(e) => return Err(e.context(DiffFailed)),
    };
    output::print(a.output, &view)?;
    let changed = view.objects.iter().filter(|o| o.action != Action::Unchanged).count();
    if view.changed {
        return Err(Changes(changed).into());
    }
    Ok(())
}

async fn diff_view(a: &DiffArgs) -> Result<DiffView> {
    let values = values_of(&a.source, Some(&a.name), &a.namespace)?;
    let req = pb::DiffRequest {
        module: a.source.module.clone(),
        version: a.source.version.clone(),
        config: Some(to_struct(values.map())),
        reuse_values: !a.reset_values,
    };
    let r = connect(&a.client).await?.diff(req).await.map_err(server_error(Some(&values)))?.into_inner();
    Ok(DiffView::try_from(&r)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn rollback_takes_an_optional_revision_after_the_deployment() {
        let cli = Cli::try_parse_from(["jac-orc", "rollback", "redis", "cache", "3", "-n", "apps"]).unwrap();
        let Command::Rollback(r) = cli.command else { panic!("not rollback") };
        assert_eq!((r.id.module.as_str(), r.id.name.as_str(), r.revision), ("redis", "cache", Some(3)));
        assert_eq!(r.id.namespace, "apps");
        let cli = Cli::try_parse_from(["jac-orc", "rollback", "redis", "cache"]).unwrap();
        let Command::Rollback(r) = cli.command else { panic!("not rollback") };
        assert_eq!(r.revision, None);
    }

    #[test]
    fn diff_exit_codes_tell_changes_from_failures() {
        assert_eq!(exit_code(&anyhow::Error::from(Changes(2))), Some((1, true)));
        assert_eq!(exit_code(&anyhow::anyhow!("unreachable").context(DiffFailed)), Some((2, false)));
        assert_eq!(exit_code(&anyhow::anyhow!("other")), None);
    }
}
