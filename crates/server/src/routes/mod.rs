//! The v2 routes. Each handler carries its OpenAPI description, and the router is built from the
//! same list, so `/openapi.json` always describes exactly the routes that are served.

pub mod annotations;
pub mod apps;
pub mod concepts;
pub mod datasets;
pub mod evaluations;
pub mod exports;
pub mod inputs;
pub mod keys;
pub mod models;
pub mod outputs;
pub mod workflows;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use deeptune_core::api::Pagination;
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::AppRecord;
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::HttpError;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "deeptune API", description = "Deep fine-tuning platform. Paths, field names and status codes follow Clarifai's v2 REST API."),
    components(schemas(deeptune_core::Status)),
    modifiers(&SecurityAddon),
    security(("api_key" = [])),
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "A personal access token: `Authorization: Key <token>`",
            ))),
        );
    }
}

/// The routes with their OpenAPI document.
pub fn api_router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(apps::post_apps, apps::list_apps))
        .routes(routes!(apps::get_app, apps::delete_app))
        .routes(routes!(keys::post_keys, keys::list_keys))
        .routes(routes!(keys::delete_key))
        .routes(routes!(concepts::post_concepts, concepts::list_concepts))
        .routes(routes!(concepts::get_concept))
        .routes(routes!(inputs::post_inputs, inputs::list_inputs, inputs::delete_inputs))
        .routes(routes!(inputs::import_inputs))
        .routes(routes!(inputs::get_input, inputs::delete_input))
        .routes(routes!(inputs::get_input_image))
        .routes(routes!(inputs::get_input_thumbnail))
        .routes(routes!(
            annotations::post_annotations,
            annotations::list_annotations,
            annotations::patch_annotations,
            annotations::delete_annotations
        ))
        .routes(routes!(annotations::get_annotation, annotations::delete_annotation))
        .routes(routes!(datasets::post_datasets, datasets::list_datasets))
        .routes(routes!(datasets::get_dataset, datasets::delete_dataset))
        .routes(routes!(datasets::post_dataset_inputs, datasets::list_dataset_inputs, datasets::delete_dataset_inputs))
        .routes(routes!(datasets::post_dataset_versions, datasets::list_dataset_versions))
        .routes(routes!(datasets::get_dataset_version))
        .routes(routes!(datasets::list_dataset_version_inputs))
        .routes(routes!(models::list_model_types))
        .routes(routes!(models::post_models, models::list_models))
        .routes(routes!(models::get_model))
        .routes(routes!(models::post_model_versions, models::list_model_versions))
        .routes(routes!(models::get_model_version, models::delete_model_version))
        .routes(routes!(models::cancel_model_version))
        .routes(routes!(models::estimate_training_time))
        .routes(routes!(models::get_model_version_log))
        .routes(routes!(models::stream_model_version_log))
        .routes(routes!(outputs::post_model_outputs))
        .routes(routes!(outputs::post_model_version_outputs))
        .routes(routes!(evaluations::post_evaluations, evaluations::list_evaluations))
        .routes(routes!(evaluations::get_evaluation))
        .routes(routes!(evaluations::post_thresholds))
        .routes(routes!(evaluations::model_leaderboard))
        .routes(routes!(evaluations::app_leaderboard))
        .routes(routes!(workflows::post_workflows, workflows::list_workflows))
        .routes(routes!(workflows::get_workflow, workflows::delete_workflow))
        .routes(routes!(workflows::post_workflow_results))
        .routes(routes!(exports::post_export, exports::get_export))
        .routes(routes!(exports::download_onnx))
        .split_for_parts()
}

/// The OpenAPI document alone (for `deeptune openapi` and tests).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().1
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = api_router();
    let doc = std::sync::Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    api.route("/openapi.json", get(move || async move { axum::Json((*doc).clone()) }))
        .merge(crate::portal::router())
        .route("/health", get(|| async { axum::Json(deeptune_core::api::BaseResponse { status: Status::ok() }) }))
        .fallback(|| async {
            HttpError(ApiError::new(StatusCode::CONN_DOES_NOT_EXIST, "no such endpoint")).into_response()
        })
        .method_not_allowed_fallback(|| async {
            HttpError(ApiError::new(StatusCode::CONN_METHOD_NOT_ALLOWED, "this endpoint does not take that method"))
                .into_response()
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct UserPath {
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
pub struct AppPath {
    pub user_id: String,
    pub app_id: String,
}

/// Authorises the caller for `scope` in the app and loads it.
pub async fn app_for(state: &AppState, caller: &Caller, scope: Scope, path: &AppPath) -> Result<AppRecord, ApiError> {
    let user = caller.authorize(scope, &path.user_id, Some(&path.app_id))?;
    state.store.get_app(&user, &path.app_id).await
}

/// `user_app_id` in a body must agree with the path when given.
pub fn check_user_app_id(body: &Option<deeptune_core::api::UserAppId>, path: &AppPath) -> Result<(), ApiError> {
    if let Some(ids) = body
        && !ids.app_id.is_empty()
        && ids.app_id != path.app_id
    {
        return Err(ApiError::invalid(format!(
            "user_app_id.app_id {:?} disagrees with the path's app {:?}",
            ids.app_id, path.app_id
        )));
    }
    Ok(())
}

pub fn page(p: &Pagination) -> (u32, u64) {
    p.limit_offset()
}

/// The top-level status of a batch from its items' statuses.
pub fn batch_status(items: &[&Status]) -> Status {
    let failed: Vec<&&Status> = items.iter().filter(|s| !s.is_success()).collect();
    if failed.is_empty() {
        Status::ok()
    } else if failed.len() < items.len() {
        Status::new(StatusCode::MIXED_STATUS, format!("{} of {} items failed", failed.len(), items.len()))
    } else {
        let first = failed[0].code;
        let code = if failed.iter().all(|s| s.code == first) { first } else { StatusCode::FAILURE };
        let details =
            if items.len() == 1 { failed[0].details.clone() } else { format!("all {} items failed", items.len()) };
        Status::new(code, details)
    }
}
