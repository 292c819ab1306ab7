//! The OpenAPI 3.1 document of the REST gateway (`GET /openapi.json`): the parts no route
//! carries (title, tags). The paths and schemas are generated from the REST handlers and the
//! view types by `utoipa` from the same registration as the routes (see [`super::rest`]).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::Tag;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

pub const TAG_DEPLOYMENTS: &str = "deployments";
pub const TAG_TEMPLATES: &str = "templates";
pub const TAG_MODULES: &str = "modules";
pub const TAG_SERVER: &str = "server";

/// The name of the bearer-token scheme every operation but health and this document needs.
pub const BEARER: &str = "bearer";

/// The document before the routes add their paths.
pub(crate) fn base() -> OpenApi {
    let tag = |name: &str, description: &str| {
        let mut t = Tag::new(name);
        t.description = Some(description.into());
        t
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("jac-orc REST gateway")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "JSON view of the jac.splice.v1.Orchestrator gRPC service (same port). Every operation \
                     except /healthz, /readyz and /openapi.json needs `authorization: Bearer <token>` \
                     (/metrics only from peers that are not loopback). Swagger UI is at /docs, ReDoc at /redoc.",
                ))
                .build(),
        )
        .tags(Some([
            tag(TAG_DEPLOYMENTS, "Render, deploy, inspect and undeploy deployments"),
            tag(TAG_TEMPLATES, "The template catalog"),
            tag(TAG_MODULES, "Python modules deployed on first import"),
            tag(TAG_SERVER, "The server itself"),
        ]))
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    BEARER,
                    SecurityScheme::Http(
                        HttpBuilder::new()
                            .scheme(HttpAuthScheme::Bearer)
                            .description(Some(
                                "A token of jac-orc's token file, the generated admin token, or (kube backend) any \
                                 token the Kubernetes API server accepts",
                            ))
                            .build(),
                    ),
                )
                .build(),
        ))
        .security(Some([SecurityRequirement::new(BEARER, Vec::<String>::new())]))
        .build()
}
