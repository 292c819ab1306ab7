//! The logs of a deployment's workloads (`Logs`, `GET /deployment/{ns}/{module}/{name}/logs`,
//! `jac-orc logs`): the backend's [`LogStream`] after the request is checked, the caller
//! authorized (`get` on `jacdeployments/log`) and the deployment found, in that order, so bad
//! input is answered as such and a refused caller learns nothing about what exists.

use futures::StreamExt;

use super::{Error, Result, Service};
use crate::auth::{Caller, Resource, Verb};
use crate::backend::logs::MAX_TAIL;
use crate::backend::{LogLine, LogOptions};
use crate::identity::DeploymentId;

/// Which lines a caller asks for, as the edges receive it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogsRequest {
    /// Keep sending new lines until the caller goes away.
    pub follow: bool,
    /// Lines from the end of each source to start with; `None`: all of them.
    pub tail: Option<i64>,
}

impl LogsRequest {
    /// The backend's options, or [`Error::Invalid`] naming `tail`.
    pub fn options(&self) -> Result<LogOptions> {
        let tail = match self.tail {
            None => None,
            Some(n) if !(0..=MAX_TAIL).contains(&n) => {
                return Err(Error::Invalid {
                    field: "tail".into(),
                    reason: format!("{n} is not a line count from 0 to {MAX_TAIL}"),
                })
            }
            Some(n) => Some(n as u32),
        };
        Ok(LogOptions { follow: self.follow, tail })
    }
}

/// The lines of a logs call; an error (a file or the API failing mid-way) is the last item.
pub type LogsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<LogLine>> + Send>>;

impl Service {
    /// The log lines of the deployment's workloads (see the module doc).
    pub async fn logs(&self, caller: &Caller, id: &DeploymentId, request: &LogsRequest) -> Result<LogsStream> {
        let opts = request.options()?;
        let (ns, name) = (Some(id.namespace.as_str()), Some(id.name.as_str()));
        self.permit(caller, Verb::Get, Resource::JacDeploymentLogs, ns, name).await?;
        self.require(id).await?;
        let stream = self.backend.logs(id, &opts).await.map_err(|e| match e {
            crate::backend::Error::NotFound(id) => Error::NotFound(id),
            e => e.into(),
        })?;
        // Counted while the stream lives: it goes with the response when the client leaves.
        let open = crate::metrics::global().log_stream(&id.to_string());
        Ok(Box::pin(stream.map(move |line| {
            let _counted = &open;
            line.map_err(Error::from)
        })))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::auth::authorize::{Error as AuthError, VIEWERS};
    use crate::auth::Identity;
    use crate::service::testing::Recording;
    use crate::service::DeploymentRequest;

    fn id(name: &str) -> DeploymentId {
        DeploymentId::new("default", "redis", name).unwrap()
    }

    #[test]
    fn a_tail_out_of_range_is_invalid_and_names_tail() {
        for bad in [-1, MAX_TAIL + 1] {
            let err = LogsRequest { follow: false, tail: Some(bad) }.options().unwrap_err();
            assert_eq!(err.field().as_deref(), Some("tail"), "{err}");
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
        let ok = LogsRequest { follow: true, tail: Some(0) }.options().unwrap();
        assert_eq!(ok, LogOptions { follow: true, tail: Some(0) });
    }

    #[tokio::test]
    async fn logs_are_checked_then_authorized_then_looked_up() {
        let (service, _) = Recording::service();
        let viewer = Caller::User(Identity::new("vera").with_groups([VIEWERS]));
        let bad = LogsRequest { follow: false, tail: Some(-3) };
        assert!(matches!(service.logs(&viewer, &id("nope"), &bad).await, Err(Error::Invalid { .. })));
        let all = LogsRequest::default();
        let denied = service.logs(&viewer, &id("nope"), &all).await.err().unwrap();
        assert!(matches!(denied, Error::Authorization(AuthError::Denied(_))), "{denied}");
        assert!(denied.to_string().contains("jacdeployments/log"), "{denied}");
        let missing = service.logs(&Caller::Operator, &id("nope"), &all).await.err().unwrap();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
        assert_eq!(missing.to_string(), "deployment default/redis/nope not found");
    }

    #[tokio::test]
    async fn the_backend_lines_come_through_with_the_tail_applied() {
        let (service, _) = Recording::service();
        let mut config = serde_json::Map::new();
        config.insert("name".into(), "cache".into());
        let req = DeploymentRequest { module: "redis".into(), version: None, config };
        let mut run = service.deploy(&Caller::Operator, &req, Default::default()).await.unwrap();
        while run.next().await.is_some() {}
        let all: Vec<_> =
            service.logs(&Caller::Operator, &id("cache"), &LogsRequest::default()).await.unwrap().collect().await;
        assert!(all.len() > 1, "{all:?}");
        let one = LogsRequest { follow: false, tail: Some(1) };
        let last: Vec<_> = service.logs(&Caller::Operator, &id("cache"), &one).await.unwrap().collect().await;
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].as_ref().unwrap().line, all.last().unwrap().as_ref().unwrap().line);
    }
}
