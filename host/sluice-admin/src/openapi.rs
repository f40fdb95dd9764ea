//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the admin API, kept beside this
//! crate's sources (`openapi.json`) and embedded at build time.

use axum::http::header;
use axum::response::IntoResponse;

/// The document's text.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /api/v1/openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;

    /// Every route the router declares is documented, with each of its methods.
    #[test]
    fn every_route_is_documented() {
        let document: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("paths");
        let source = include_str!("lib.rs");
        let mut checked = 0;
        for line in source.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".route(\"") else {
                continue;
            };
            let Some((path, handler)) = rest.split_once("\", ") else {
                continue;
            };
            let documented = paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is routed but not in openapi.json"));
            for method in ["get", "post", "put", "delete"] {
                if handler.starts_with(&format!("{method}(")) {
                    assert!(
                        documented.get(method).is_some(),
                        "{method} {path} is routed but not documented"
                    );
                }
            }
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} routes found in lib.rs");
    }
}
