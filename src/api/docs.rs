//! API documentation pages, like the original FastAPI app's: Swagger UI at `/docs` and ReDoc at
//! `/redoc`, both reading `/openapi.json`. Every asset is embedded in the binary (Swagger UI's
//! dist from `utoipa-swagger-ui`'s `vendored` build, ReDoc's bundle from `assets/redoc/`), so the
//! pages work on a machine with no route to a CDN. The auth layer leaves these paths open.
//!
//! The HTML pages are our own, with absolute asset paths: `/docs` then works with and without a
//! trailing slash, and the page itself names `/openapi.json` (Swagger UI's own `index.html`
//! loads relative `./` assets and takes its document URL from a generated script).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::status::{ApiError, RequestError};

/// Where both pages read the document.
const DOCUMENT: &str = "/openapi.json";

const SWAGGER_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>jac-orc REST gateway - Swagger UI</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"##;

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>jac-orc REST gateway - ReDoc</title>
  <style>body { margin: 0; padding: 0; }</style>
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="/redoc/redoc.standalone.js"></script>
</body>
</html>
"#;

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");
const REDOC_LICENSE: &[u8] = include_bytes!("../../assets/redoc/LICENSE");
const REDOC_NOTICES: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js.LICENSE.txt");

/// The `/docs` and `/redoc` routes (outside the OpenAPI document: they are not API operations).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Swagger UI's own initializer (`/docs/swagger-initializer.js`, unused by our page) is
    // rendered from this too, so it points at the same document.
    let config = Arc::new(utoipa_swagger_ui::Config::new([DOCUMENT]));
    Router::new()
        .route("/docs", get(|| async { Html(SWAGGER_PAGE) }))
        .route("/docs/", get(|| async { Html(SWAGGER_PAGE) }))
        .route("/docs/{*file}", get(move |Path(file): Path<String>| swagger_file(file, config.clone())))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route("/redoc/", get(|| async { Html(REDOC_PAGE) }))
        .route("/redoc/redoc.standalone.js", get(|| async { asset(REDOC_JS, "text/javascript; charset=utf-8") }))
        .route("/redoc/LICENSE", get(|| async { asset(REDOC_LICENSE, "text/plain; charset=utf-8") }))
        .route("/redoc/LICENSE.txt", get(|| async { asset(REDOC_NOTICES, "text/plain; charset=utf-8") }))
}

async fn swagger_file(file: String, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Result<Response, ApiError> {
    if file == "index.html" {
        return Ok(Html(SWAGGER_PAGE).into_response());
    }
    let not_found = || RequestError::NoRoute { method: http::Method::GET, path: format!("/docs/{file}") };
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(found)) => {
            let mut response = found.bytes.into_owned().into_response();
            let content_type = HeaderValue::from_str(&found.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            // The assets change only with the binary.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            Ok(response)
        }
        // An error only renders the initializer's config; the dist itself is embedded, so treat
        // it like a missing file rather than a server fault.
        Ok(None) | Err(_) => Err(not_found().into()),
    }
}

fn asset(bytes: &'static [u8], content_type: &'static str) -> Response {
    let mut response = bytes.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(path: &str) -> (http::StatusCode, String, Vec<u8>) {
        let app: Router = router();
        let req = http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let ct = res.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap().to_vec();
        (status, ct, body)
    }

    /// Every asset the pages name is served from the binary with its content type.
    #[tokio::test]
    async fn every_asset_the_pages_reference_is_embedded() {
        for page in ["/docs", "/redoc"] {
            let (status, ct, body) = get(page).await;
            assert_eq!(status, 200, "{page}");
            assert!(ct.starts_with("text/html"), "{page}: {ct}");
            let html = String::from_utf8(body).unwrap();
            assert!(html.contains(DOCUMENT), "{page} reads the document");
            let assets: Vec<&str> =
                html.split(['"', '\'']).filter(|s| s.starts_with("/docs/") || s.starts_with("/redoc/")).collect();
            assert!(!assets.is_empty(), "{page}");
            for a in assets {
                let (status, ct, body) = get(a).await;
                assert_eq!(status, 200, "{a}");
                let want = if a.ends_with(".js") {
                    "javascript"
                } else if a.ends_with(".css") {
                    "text/css"
                } else {
                    "image/png"
                };
                assert!(ct.contains(want), "{a}: {ct}");
                assert!(body.len() > 100, "{a} has content");
            }
            assert!(!html.contains("http://") && !html.contains("https://"), "{page} loads nothing from elsewhere");
        }
    }

    #[tokio::test]
    async fn an_unknown_docs_file_is_a_404() {
        assert_eq!(get("/docs/nope.js").await.0, 404);
    }
}
