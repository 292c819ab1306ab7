//! Kubernetes backend: server-side apply through discovery + DynamicObject (issue 3).
