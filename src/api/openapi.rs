//! The OpenAPI 3.1 description of the REST gateway (`GET /openapi.json`).

use serde_json::{json, Value};

pub fn document() -> Value {
    let err = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let path_params = json!([
        {"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "module", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
    ]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "jac-orc REST gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "JSON view of the jac.splice.v1.Orchestrator gRPC service (same port)."
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "\"OK\"", "content": {"application/json": {"schema": {"type": "string"}}}}}}},
            "/templates": {"get": {"summary": "List template modules and versions", "responses": {"200": {"description": "Templates"}}}},
            "/deployment/dry_run": {"post": {
                "summary": "Render a template version without touching anything",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeploymentRequest"}}}},
                "responses": {"200": {"description": "Placeholders (default/current) and rendered files", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DryRun"}}}},
                              "400": err, "404": err, "413": err}
            }},
            "/deployment": {
                "get": {"summary": "Deployments as namespace -> module -> name -> deployment",
                        "parameters": [{"name": "namespace", "in": "query", "schema": {"type": "string"}}, {"name": "module", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "Deployments"}}},
                "post": {
                    "summary": "Deploy a template version (Accept: application/x-ndjson streams one event per object)",
                    "parameters": [
                        {"name": "wait", "in": "query", "schema": {"type": "boolean"}, "description": "Wait until every workload is ready"},
                        {"name": "timeout", "in": "query", "schema": {"type": "integer"}, "description": "Readiness timeout in seconds (default 300)"},
                        {"name": "force", "in": "query", "schema": {"type": "boolean"}, "description": "Take over fields owned by other field managers"}
                    ],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeploymentRequest"}}}},
                    "responses": {"200": {"description": "Applied", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeployResult"}}, "application/x-ndjson": {}}},
                                  "400": err, "404": err, "409": err, "412": err, "413": err, "422": err, "503": err, "504": err}
                }
            },
            "/deployment/{namespace}/{module}/{name}": {
                "get": {"summary": "One deployment", "parameters": path_params, "responses": {"200": {"description": "Deployment", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deployment"}}}}, "404": err}},
                "delete": {"summary": "Undeploy: remove everything the deployment created", "parameters": path_params, "responses": {"200": {"description": "Removed"}, "404": err}}
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}}
        },
        "components": {"schemas": {
            "DeploymentRequest": {"type": "object", "required": ["module"], "additionalProperties": false, "properties": {
                "module": {"type": "string", "pattern": "^[a-z0-9._-]+$"},
                "version": {"type": "string", "default": "latest"},
                "config": {"type": "object", "description": "Placeholder values by name"},
                "wait": {"type": "boolean"},
                "wait_timeout_seconds": {"type": "integer"},
                "force_conflicts": {"type": "boolean"}
            }},
            "Placeholder": {"type": "object", "properties": {"default": {}, "current": {}, "type": {"type": "string"}, "description": {"type": "string"}, "secret": {"type": "boolean"}}},
            "DryRun": {"type": "object", "properties": {
                "placeholders": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Placeholder"}},
                "dependencies": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                "modules": {"type": "object", "additionalProperties": {"type": "string"}}
            }},
            "Section": {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "string"}}, "errors": {"type": "array", "items": {"type": "string"}}}},
            "Deployment": {"type": "object", "properties": {
                "namespace": {"type": "string"}, "module": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "string"},
                "config": {"type": "object"}, "endpoints": {"type": "array", "items": {"type": "string"}}, "status": {"type": "string"},
                "backend": {"type": "string"}, "updated_at": {"type": "string"}
            }},
            "DeployResult": {"type": "object", "properties": {
                "deployment": {"$ref": "#/components/schemas/Deployment"},
                "results": {"type": "array", "items": {"type": "string"}},
                "errors": {"type": "array", "items": {"type": "string"}},
                "dependencies": {"$ref": "#/components/schemas/Section"},
                "modules": {"$ref": "#/components/schemas/Section"},
                "endpoints": {"type": "array", "items": {"type": "string"}}
            }},
            "Error": {"type": "object", "required": ["detail"], "properties": {
                "detail": {"type": "string"}, "field": {"type": ["string", "null"]}, "reason": {"type": "string"},
                "results": {"type": "array", "items": {"type": "string"}}, "errors": {"type": "array", "items": {"type": "string"}}
            }}
        }}
    })
}
