//! ONNX export of a trained version, checked against the engine under tract on evaluation
//! images, and its download.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use deeptune_core::api::{BaseResponse, ModelVersion, SingleModelExportResponse};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::AppRecord;
use deeptune_worker::export::{EXPORT_DIR, ExportFailure, ExportReport, ONNX_FILE, export_onnx, export_report};
use serde_json::Value;

use super::models::VersionPath;
use super::{AppPath, app_for};
use crate::auth::Caller;
use crate::error::{HttpError, HttpResult, PathParams, Reply};
use crate::state::AppState;

const EXPORTS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/exports";
const ONNX: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/exports/model.onnx";

/// Images the parity check runs on.
const PARITY_IMAGES: u32 = 32;

fn app_path(path: &VersionPath) -> AppPath {
    AppPath { user_id: path.user_id.clone(), app_id: path.app_id.clone() }
}

fn artifact_dir(state: &AppState, version_id: &str) -> std::path::PathBuf {
    state.config.data_dir.join("models").join(version_id)
}

fn export_json(report: &ExportReport, path: &VersionPath) -> Value {
    let mut export = serde_json::to_value(report).expect("report serialises");
    let status = if report.parity.agrees {
        Status::ok()
    } else {
        Status::new(
            StatusCode::FAILURE,
            format!(
                "the exported model disagrees with deeptune: top-1 agreement {:.1}% on {} images, largest logit difference {:.2e} (tolerance {:.0e})",
                report.parity.top1_agreement * 100.0,
                report.parity.inputs,
                report.parity.max_abs_logit_difference,
                report.parity.tolerance
            ),
        )
    };
    export["status"] = serde_json::to_value(status).expect("status serialises");
    export["download_url"] = Value::String(format!(
        "/v2/users/{}/apps/{}/models/{}/versions/{}/exports/{ONNX_FILE}",
        path.user_id, path.app_id, path.model_id, path.version_id
    ));
    export
}

/// Up to `PARITY_IMAGES` images of the version's held-out split (its training split if that
/// is empty).
async fn parity_images(state: &AppState, app: &AppRecord, version: &ModelVersion) -> Result<Vec<Vec<u8>>, ApiError> {
    let param = |name: &str| version.train_info.params.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    let (dataset, dataset_version) = (param("dataset_id"), param("dataset_version_id"));
    let mut inputs = state
        .store
        .list_dataset_version_inputs(app, &dataset, &dataset_version, Some("validation"), PARITY_IMAGES, 0)
        .await?;
    if inputs.is_empty() {
        inputs = state
            .store
            .list_dataset_version_inputs(app, &dataset, &dataset_version, Some("train"), PARITY_IMAGES, 0)
            .await?;
    }
    let mut images = Vec::new();
    for input in inputs {
        if let Ok(bytes) = state.blobs.get(&input.content_sha256).await {
            images.push(bytes.to_vec());
        }
    }
    Ok(images)
}

#[utoipa::path(post, path = EXPORTS, tag = "export",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses(
        (status = 200, description = "Exported to ONNX and checked under tract on the held-out images; the export's own status says whether it agrees", body = SingleModelExportResponse),
        (status = 400, description = "The version is not trained, or its architecture cannot be exported yet", body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn post_export(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<SingleModelExportResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path)).await?;
    let version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    if version.status.as_ref().map(|s| s.code) != Some(StatusCode::MODEL_TRAINED) {
        return Err(ApiError::new(
            StatusCode::MODEL_INVALID_ARGUMENT,
            format!("model version {} is not trained; export a trained version", version.id),
        )
        .into());
    }
    let images = parity_images(&state, &app, &version).await?;
    let dir = artifact_dir(&state, &version.id);
    let report = tokio::task::spawn_blocking(move || export_onnx(&dir, &images))
        .await
        .map_err(|e| ApiError::internal(format!("the export panicked: {e}")))?
        .map_err(|e| match e {
            ExportFailure::Unsupported(e) => ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, e.to_string()),
            ExportFailure::Failed(e) => ApiError::internal(format!("the export failed: {e}")),
        })?;
    Ok(Reply(SingleModelExportResponse { status: Status::ok(), export: export_json(&report, &path) }))
}

#[utoipa::path(get, path = EXPORTS, tag = "export",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, description = "The last export's report", body = SingleModelExportResponse), (status = 404, body = BaseResponse)))]
pub async fn get_export(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<SingleModelExportResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path)).await?;
    state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    let report = export_report(&artifact_dir(&state, &path.version_id))
        .ok_or_else(|| ApiError::not_found("export of model version", &path.version_id))?;
    Ok(Reply(SingleModelExportResponse { status: Status::ok(), export: export_json(&report, &path) }))
}

#[utoipa::path(get, path = ONNX, tag = "export",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, description = "The ONNX file", content_type = "application/octet-stream"), (status = 404, body = BaseResponse)))]
pub async fn download_onnx(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> Result<Response, HttpError> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path)).await?;
    state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    let file = artifact_dir(&state, &path.version_id).join(EXPORT_DIR).join(ONNX_FILE);
    let bytes =
        tokio::fs::read(&file).await.map_err(|_| ApiError::not_found("export of model version", &path.version_id))?;
    let disposition = format!("attachment; filename=\"{}-{}.onnx\"", path.model_id, path.version_id);
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deeptune_worker::export::{ExportManifest, Parity};

    fn report(agrees: bool) -> ExportReport {
        ExportReport {
            format: "onnx".into(),
            file: ONNX_FILE.into(),
            size_bytes: 1,
            sha256: "00".into(),
            manifest: ExportManifest {
                format: "onnx (opset 13)".into(),
                input: "input".into(),
                input_shape: ["N".into(), "3".into(), "8".into(), "8".into()],
                image_size: 8,
                mean: [0.5; 3],
                std: [0.5; 3],
                outputs: ["logits".into(), "probabilities".into()],
                concepts: vec!["a".into()],
                mutually_exclusive: true,
                architecture: "resnet18".into(),
                template: "ResNet18".into(),
            },
            parity: Parity {
                inputs: 4,
                top1_agreement: if agrees { 1.0 } else { 0.75 },
                max_abs_logit_difference: if agrees { 1e-6 } else { 0.3 },
                agrees,
                tolerance: 1e-3,
            },
            created_at: "now".into(),
        }
    }

    #[test]
    fn an_export_that_disagrees_is_marked_so() {
        let path =
            VersionPath { user_id: "me".into(), app_id: "a".into(), model_id: "m".into(), version_id: "v".into() };
        let good = export_json(&report(true), &path);
        assert_eq!(good["status"]["code"], 10000);
        assert_eq!(good["download_url"], "/v2/users/me/apps/a/models/m/versions/v/exports/model.onnx");
        let bad = export_json(&report(false), &path);
        assert_eq!(bad["status"]["code"], 10020);
        let details = bad["status"]["details"].as_str().unwrap();
        assert!(details.contains("disagrees") && details.contains("75.0%"), "{details}");
    }
}
