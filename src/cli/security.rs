//! `serve`'s security wiring: who is authenticated how ([`crate::auth::Authenticator`]), who may do
//! what ([`Authorizer`]), and TLS, from [`SecurityConfig`] and the chosen backend.
//!
//! - local backend: `--token-file`, else an admin token generated once into `<data-dir>/token`;
//!   decisions by the token file's groups ([`Authorizer::groups`]);
//! - kube backend: `--token-file` (optional) then TokenReview; decisions by SubjectAccessReview.
//!
//! Tokens are never logged; the generated token's path is, and (on a loopback listener only)
//! named in 401 answers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::auth::authenticate::{Authenticator, TokenReviewConfig, TokenReviewer};
use crate::auth::authorize::{AccessReviewConfig, Authorizer};
use crate::auth::token_file::TokenFile;
use crate::auth::{admin_token, AuthConfig, AuthLayer};
use crate::config::{SecurityConfig, TlsChoice};
use crate::server;
use crate::tls::{self, ServerTls, ServerTlsSource};

/// What `serve` hands the service layer and the server.
#[derive(Debug)]
pub(super) struct Security {
    pub(super) authorizer: Arc<Authorizer>,
    pub(super) options: server::Options,
}

/// Builds authentication, authorization and TLS. `kube` is the kube backend's client, if that
/// is the backend.
pub(super) fn setup(
    cfg: &SecurityConfig,
    data_dir: &Path,
    listen: SocketAddr,
    kube: Option<&kube::Client>,
) -> Result<Security> {
    let mut authn = Authenticator::new();
    if let Some(path) = &cfg.token_file {
        let tokens = TokenFile::load(path).with_context(|| format!("--token-file {}", path.display()))?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "authentication: static tokens");
        authn = authn.with_tokens(tokens);
    }
    let authorizer = match kube {
        Some(client) => {
            let reviews = TokenReviewConfig::default().audiences(cfg.token_audiences.clone());
            authn = authn.with_token_review(TokenReviewer::new(client.clone(), reviews));
            tracing::info!("authentication: Kubernetes TokenReview; authorization: SubjectAccessReview (jac-orc.io)");
            Authorizer::kube(client.clone(), AccessReviewConfig::default())
        }
        None => Authorizer::groups(),
    };
    let mut auth = AuthConfig::default().metrics_auth(cfg.metrics_auth);
    if let Some(r) = cfg.reflection {
        auth = auth.reflection(r);
    }
    if !authn.is_configured() {
        let admin = admin_token::ensure(data_dir).context("cannot set up the admin token")?;
        tracing::info!(
            path = %admin.path.display(),
            created = admin.created,
            "authentication: the admin token is in this file (the jac-orc CLI and jac_splice on this host read it)"
        );
        if listen.ip().is_loopback() {
            // Remote callers learn nothing about this host's paths.
            auth = auth.hint(format!("the admin token is in {}", admin.path.display()));
        }
        authn = authn.with_tokens(admin.into_tokens());
    }
    let tls = server_tls(cfg.tls.as_ref(), data_dir)?;
    match &tls {
        Some(t) => tracing::info!(
            certificate = %t.certificate.display(),
            fingerprint = %t.fingerprint,
            generated = t.generated,
            "TLS"
        ),
        None if !listen.ip().is_loopback() => tracing::warn!(
            "serving plaintext on {listen}: tokens cross the network unencrypted (no TLS certificate is configured or mounted)"
        ),
        None => {}
    }
    let limits = server::Limits::default()
        .header_read_timeout(cfg.header_read_timeout)
        .idle_timeout(cfg.idle_timeout)
        .max_connections(cfg.max_connections)
        .max_streams(cfg.max_streams);
    let options = server::Options::new(AuthLayer::new(authn, auth)).tls(tls).limits(limits);
    Ok(Security { authorizer: Arc::new(authorizer), options })
}

fn server_tls(choice: Option<&TlsChoice>, data_dir: &Path) -> Result<Option<ServerTls>> {
    let source = match choice {
        None => return Ok(None),
        Some(TlsChoice::Files { cert, key }) => ServerTlsSource::Files { cert: cert.clone(), key: key.clone() },
        Some(TlsChoice::SelfSigned { names }) => {
            ServerTlsSource::SelfSigned { data_dir: data_dir.to_path_buf(), names: names.clone() }
        }
        Some(TlsChoice::Dir(dir)) => {
            let (cert, key) = TlsChoice::dir_files(dir);
            if !cert.is_file() {
                tracing::info!(dir = %dir.display(), "no certificate mounted in --tls-dir");
                return Ok(None);
            }
            ServerTlsSource::Files { cert, key }
        }
    };
    Ok(Some(tls::load(&source).context("cannot set up TLS")?))
}
