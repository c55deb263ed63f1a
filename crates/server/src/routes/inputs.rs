//! Inputs: images uploaded as base64 bytes, multipart files or URLs (also in bulk from CSV/TSV).
//!
//! Every input is validated (format by content, pixel limit before decoding, full decode) before
//! anything is written; its image and thumbnail go to blob storage by content hash, then its row
//! and labels are committed in one transaction. A batch reports each input's outcome; a bad
//! input never stops the good ones, and a failed one leaves nothing behind.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use deeptune_core::api::{
    BaseResponse, Concept, Data, DeleteInputsRequest, Image, ImportResponse, ImportRowOutcome, Input, InputFilter,
    MultiInputResponse, Pagination, PostInputsRequest, SingleInputResponse,
};
use deeptune_core::ids::{generate_id, id_for_url, validate_id};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_media::{Delimiter, detect_delimiter, parse_import, process_image};
use deeptune_store::{AppRecord, LabelValue, NewInput};
use futures::StreamExt;
use serde::Deserialize;

use super::{AppPath, app_for, batch_status, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpError, HttpResult, Json, PathParams, QueryParams, Reply, json_rejection};
use crate::state::{AppState, THUMBNAIL_SIDE};

/// Clarifai's limit on inputs per request.
pub const MAX_INPUTS_PER_REQUEST: usize = 128;
/// Downloads and decodes in flight at once for one request.
const CONCURRENCY: usize = 4;

enum Source {
    Bytes(Bytes),
    Url(String),
}

/// An input that passed the checks that need no I/O.
struct Pending {
    id: String,
    source: Source,
    labels: Vec<LabelValue>,
    metadata: Option<serde_json::Value>,
}

fn failed_input(id: &str, url: Option<String>, error: &ApiError) -> Input {
    Input {
        id: id.to_string(),
        data: Data { image: url.map(|u| Image { url: Some(u), ..Default::default() }), ..Default::default() },
        status: Some(error.status()),
        ..Default::default()
    }
}

fn labels_of(concepts: &[Concept]) -> Result<Vec<LabelValue>, ApiError> {
    deeptune_store::labels_from_concepts(concepts)
}

/// An input refused before any I/O: its id, its URL if it had one, and why.
type Refused = (String, Option<String>, ApiError);

/// Checks a request input and turns it into a pending one.
fn prepare(input: Input) -> Result<Pending, Refused> {
    let id = if input.id.is_empty() { generate_id() } else { input.id.clone() };
    let url = input.data.image.as_ref().and_then(|i| i.url.clone());
    let fail = |e: ApiError| (id.clone(), url.clone(), e);
    validate_id(&id).map_err(|e| fail(ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, format!("input id: {e}"))))?;
    let labels = labels_of(&input.data.concepts).map_err(fail)?;
    if let Some(m) = &input.data.metadata
        && !m.is_object()
        && !m.is_null()
    {
        return Err(fail(ApiError::new(StatusCode::METADATA_PARSING_ISSUE, "data.metadata must be a JSON object")));
    }
    let image = input
        .data
        .image
        .ok_or_else(|| fail(ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, "data.image is missing")))?;
    let source = match (image.base64, image.url) {
        (Some(b64), None) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| {
                fail(ApiError::new(
                    StatusCode::INPUT_INVALID_ARGUMENT,
                    format!("data.image.base64 is not valid base64: {e}"),
                ))
            })?;
            Source::Bytes(Bytes::from(bytes))
        }
        (None, Some(url)) => Source::Url(url),
        (Some(_), Some(_)) => {
            return Err(fail(ApiError::new(
                StatusCode::INPUT_INVALID_ARGUMENT,
                "give data.image.url or data.image.base64, not both",
            )));
        }
        (None, None) => {
            return Err(fail(ApiError::new(
                StatusCode::INPUT_INVALID_ARGUMENT,
                "data.image needs a url or base64 bytes",
            )));
        }
    };
    Ok(Pending { id, source, labels, metadata: input.data.metadata })
}

/// Downloads (if needed), validates and stores one input.
async fn store_input(state: &AppState, app: &AppRecord, pending: Pending) -> Result<Input, ApiError> {
    if state.store.input_exists(app, &pending.id).await? {
        return Err(ApiError::duplicate("input", &pending.id));
    }
    let (bytes, source_url) = match pending.source {
        Source::Bytes(b) => (b, None),
        Source::Url(url) => {
            let bytes = state.fetcher.fetch(&url).await.map_err(|e| ApiError::new(e.status_code(), e.to_string()))?;
            (bytes, Some(url))
        }
    };
    let limits = state.image_limits.clone();
    let for_check = bytes.clone();
    let processed = tokio::task::spawn_blocking(move || process_image(&for_check, &limits, THUMBNAIL_SIDE))
        .await
        .map_err(|e| ApiError::internal(format!("image check panicked: {e}")))?
        .map_err(|e| ApiError::new(e.status_code(), e.to_string()))?;

    let shared = state.blob_lock.read().await;
    let blob_key = state.blobs.put(bytes).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let thumb_key = match state.blobs.put(Bytes::from(processed.thumbnail_jpeg)).await {
        Ok(k) => k,
        Err(e) => {
            drop(shared);
            state.collect_blobs(&[blob_key]).await?;
            return Err(ApiError::internal(e.to_string()));
        }
    };
    let result = state
        .store
        .insert_input(
            app,
            NewInput {
                id: pending.id,
                blob_key: blob_key.clone(),
                thumb_key: thumb_key.clone(),
                format: processed.info.format.as_str().to_string(),
                width: processed.info.width,
                height: processed.info.height,
                size_bytes: processed.info.size_bytes,
                source_url,
                metadata: pending.metadata,
                labels: pending.labels,
            },
        )
        .await;
    drop(shared);
    if result.is_err() {
        state.collect_blobs(&[blob_key, thumb_key]).await?;
    }
    result
}

/// Runs a batch: each item's outcome in request order.
async fn store_batch(state: &AppState, app: &AppRecord, items: Vec<Result<Pending, Refused>>) -> Vec<Input> {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<_> = items
        .into_iter()
        .map(|item| match item {
            Ok(p) if !seen.insert(p.id.clone()) => {
                let url = match &p.source {
                    Source::Url(u) => Some(u.clone()),
                    Source::Bytes(_) => None,
                };
                Err((
                    p.id.clone(),
                    url,
                    ApiError::new(
                        StatusCode::INPUT_DUPLICATE,
                        format!("input id {:?} appears twice in this request", p.id),
                    ),
                ))
            }
            other => other,
        })
        .collect();
    futures::stream::iter(items)
        .map(|item| async move {
            match item {
                Err((id, url, e)) => failed_input(&id, url, &e),
                Ok(pending) => {
                    let id = pending.id.clone();
                    let url = match &pending.source {
                        Source::Url(u) => Some(u.clone()),
                        Source::Bytes(_) => None,
                    };
                    match store_input(state, app, pending).await {
                        Ok(mut input) => {
                            input.status = Some(Status::new(StatusCode::INPUT_SUCCESS, ""));
                            input
                        }
                        Err(e) => failed_input(&id, url, &e),
                    }
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

fn batch_reply(inputs: Vec<Input>) -> Reply<MultiInputResponse> {
    let statuses: Vec<&Status> = inputs.iter().filter_map(|i| i.status.as_ref()).collect();
    let status = batch_status(&statuses);
    Reply(MultiInputResponse { status, inputs })
}

/// Parses the `concepts` form field: `cat,dog:0` or a JSON list of `{id, value}`.
fn parse_form_concepts(text: &str) -> Result<Vec<Concept>, ApiError> {
    let text = text.trim();
    if text.starts_with('[') {
        return serde_json::from_str(text).map_err(|e| {
            ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, format!("concepts field is not a JSON list: {e}"))
        });
    }
    let mut concepts = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, value) = match part.split_once(':') {
            Some((id, v)) => {
                let value: f32 = v.trim().parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::ANNOTATION_INVALID_ARGUMENT,
                        format!("concept {part:?}: value must be 1 or 0"),
                    )
                })?;
                (id.trim(), Some(value))
            }
            None => (part, None),
        };
        concepts.push(Concept { id: id.to_string(), value, ..Default::default() });
    }
    Ok(concepts)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> HttpError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return HttpError(ApiError::new(
            StatusCode::RPC_MAX_MESSAGE_SIZE_EXCEEDED,
            "request body is larger than the limit",
        ));
    }
    HttpError(ApiError::new(
        StatusCode::CONN_BAD_REQUEST_FORMAT,
        format!("malformed multipart body: {}", e.body_text()),
    ))
}

/// Reads a multipart upload: file parts, plus optional `concepts`, `metadata` and `input_ids`
/// (comma-separated, one per file in order) fields.
async fn multipart_inputs(multipart: &mut Multipart) -> Result<Vec<Input>, HttpError> {
    let mut files: Vec<Bytes> = Vec::new();
    let mut concepts = Vec::new();
    let mut metadata = None;
    let mut ids: Vec<String> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        let is_file = field.file_name().is_some();
        let data = field.bytes().await.map_err(multipart_error)?;
        if is_file || name == "file" || name == "files" {
            files.push(data);
            continue;
        }
        let text = String::from_utf8(data.to_vec()).map_err(|_| {
            ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, format!("form field {name:?} is not UTF-8 text"))
        })?;
        match name.as_str() {
            "concepts" => concepts = parse_form_concepts(&text)?,
            "metadata" => {
                metadata = Some(serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                    ApiError::new(StatusCode::METADATA_PARSING_ISSUE, format!("metadata field is not JSON: {e}"))
                })?)
            }
            "input_ids" => ids = text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown form field {other:?}; expected files and optional concepts, metadata, input_ids"
                ))
                .into());
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, "the upload holds no files").into());
    }
    if !ids.is_empty() && ids.len() != files.len() {
        return Err(ApiError::invalid(format!("input_ids names {} ids for {} files", ids.len(), files.len())).into());
    }
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Input {
            id: ids.get(i).cloned().unwrap_or_default(),
            data: Data {
                image: Some(Image {
                    base64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    ..Default::default()
                }),
                concepts: concepts.clone(),
                metadata: metadata.clone(),
            },
            ..Default::default()
        })
        .collect())
}

#[utoipa::path(post, path = "/v2/users/{user_id}/apps/{app_id}/inputs", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body(description = "JSON as in Clarifai's PostInputs, or multipart/form-data: file parts (any field name with a filename), plus optional fields `concepts` (`cat,dog:0` or a JSON list), `metadata` (a JSON object) and `input_ids` (comma-separated, one per file)", content(
        (PostInputsRequest = "application/json"),
        (String = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "All inputs stored; each carries status 30000", body = MultiInputResponse),
        (status = 207, description = "Some inputs failed (status 10010); each input carries its own status", body = MultiInputResponse),
        (status = 400, description = "Every input failed, or the request was malformed", body = MultiInputResponse),
        (status = 409, description = "Every input id already exists", body = MultiInputResponse),
        (status = 413, description = "Body over the size limit", body = BaseResponse),
    ))]
pub async fn post_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    request: Request,
) -> HttpResult<Reply<MultiInputResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let inputs = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| HttpError(ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, e.body_text())))?;
        multipart_inputs(&mut multipart).await?
    } else {
        let axum::Json(body) =
            axum::Json::<PostInputsRequest>::from_request(request, &state).await.map_err(json_rejection)?;
        check_user_app_id(&body.user_app_id, &path)?;
        body.inputs
    };
    if inputs.is_empty() {
        return Err(ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, "inputs is empty").into());
    }
    if inputs.len() > MAX_INPUTS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::INPUT_OVER_LIMIT,
            format!("{} inputs in one request; the limit is {MAX_INPUTS_PER_REQUEST}", inputs.len()),
        )
        .into());
    }
    let pending = inputs.into_iter().map(prepare).collect();
    Ok(batch_reply(store_batch(&state, &app, pending).await))
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/inputs", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination, InputFilter),
    responses((status = 200, description = "Newest first", body = MultiInputResponse)))]
pub async fn list_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
    QueryParams(filter): QueryParams<InputFilter>,
) -> HttpResult<Reply<MultiInputResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let inputs = state.store.list_inputs(&app, &filter, limit, offset).await?;
    Ok(Reply(MultiInputResponse { status: Status::ok(), inputs }))
}

#[utoipa::path(delete, path = "/v2/users/{user_id}/apps/{app_id}/inputs", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = DeleteInputsRequest,
    responses((status = 200, body = BaseResponse), (status = 404, description = "An id does not exist; nothing was deleted", body = BaseResponse)))]
pub async fn delete_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<DeleteInputsRequest>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    let keys = state.store.delete_inputs(&app, &request.ids).await?;
    state.collect_blobs(&keys).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

#[derive(Deserialize)]
pub struct InputPath {
    user_id: String,
    app_id: String,
    input_id: String,
}

impl InputPath {
    fn app(&self) -> AppPath {
        AppPath { user_id: self.user_id.clone(), app_id: self.app_id.clone() }
    }
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/inputs/{input_id}", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path)),
    responses((status = 200, body = SingleInputResponse), (status = 404, body = BaseResponse)))]
pub async fn get_input(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<InputPath>,
) -> HttpResult<Reply<SingleInputResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let input = state.store.get_input(&app, &path.input_id).await?;
    Ok(Reply(SingleInputResponse { status: Status::ok(), input }))
}

#[utoipa::path(delete, path = "/v2/users/{user_id}/apps/{app_id}/inputs/{input_id}", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path)),
    responses((status = 200, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_input(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<InputPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    let keys = state.store.delete_inputs(&app, std::slice::from_ref(&path.input_id)).await?;
    state.collect_blobs(&keys).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

async fn serve_blob(state: &AppState, key: &str, content_type: &str) -> HttpResult<Response> {
    let bytes = state.blobs.get(key).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Content-addressed: the bytes behind a key never change.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    Ok(response)
}

fn mime_of(format: &str) -> &'static str {
    match format {
        "jpeg" => "image/jpeg",
        "png" => "image/png",
        "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/inputs/{input_id}/image", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path)),
    responses((status = 200, description = "The stored image file, as uploaded", content_type = "image/*"), (status = 404, body = BaseResponse)))]
pub async fn get_input_image(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<InputPath>,
) -> HttpResult<Response> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let (blob, _, format) = state.store.input_blobs(&app, &path.input_id).await?;
    serve_blob(&state, &blob, mime_of(&format)).await
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/inputs/{input_id}/thumbnail", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path)),
    responses((status = 200, description = "A JPEG thumbnail, longest side 256", content_type = "image/jpeg"), (status = 404, body = BaseResponse)))]
pub async fn get_input_thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<InputPath>,
) -> HttpResult<Response> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let (_, thumb, _) = state.store.input_blobs(&app, &path.input_id).await?;
    serve_blob(&state, &thumb, "image/jpeg").await
}

#[utoipa::path(post, path = "/v2/users/{user_id}/apps/{app_id}/inputs/import", tag = "inputs",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body(description = "Clarifai's CSV columns: input.id, input.data.image.url, input.data.concepts[i].id, input.data.concepts[i].value (blank means 1), input.data.metadata; comma- or tab-separated", content(
        (String = "text/csv"),
        (String = "text/tab-separated-values"),
    )),
    responses(
        (status = 200, description = "Every row imported or already present", body = ImportResponse),
        (status = 207, description = "Some rows failed; each row's outcome is listed", body = ImportResponse),
        (status = 400, description = "No row could be imported, or the file is unreadable", body = ImportResponse),
    ))]
pub async fn import_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    request: Request,
) -> HttpResult<Response> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = Bytes::from_request(request, &state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            HttpError(ApiError::new(StatusCode::RPC_MAX_MESSAGE_SIZE_EXCEEDED, "request body is larger than the limit"))
        } else {
            HttpError(ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, e.body_text()))
        }
    })?;
    let delimiter = if content_type.starts_with("text/tab-separated-values") {
        Delimiter::Tab
    } else if content_type.starts_with("text/csv") {
        Delimiter::Comma
    } else {
        detect_delimiter(None, &body)
    };
    let rows = parse_import(&body, delimiter)
        .map_err(|e| ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, e.to_string()))?;
    let mut lines = Vec::with_capacity(rows.len());
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Ok(row) => {
                lines.push(row.line);
                let url = row.url.clone().unwrap_or_default();
                let id = row.input_id.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| id_for_url(&url));
                let concepts: Vec<Concept> = row
                    .concepts
                    .iter()
                    .map(|c| Concept { id: c.id.clone(), value: Some(c.value), ..Default::default() })
                    .collect();
                items.push(prepare(Input {
                    id,
                    data: Data {
                        image: Some(Image { url: row.url, ..Default::default() }),
                        concepts,
                        metadata: row.metadata,
                    },
                    ..Default::default()
                }));
            }
            Err(e) => {
                lines.push(e.line);
                items.push(Err((
                    String::new(),
                    None,
                    ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, format!("line {}: {}", e.line, e.message)),
                )));
            }
        }
    }
    let inputs = store_batch(&state, &app, items).await;
    let mut response =
        ImportResponse { status: Status::ok(), rows: Vec::new(), imported: 0, already_present: 0, failed: 0 };
    for (input, line) in inputs.into_iter().zip(lines) {
        let status = input.status.unwrap_or_else(Status::ok);
        match status.code {
            c if status.is_success() || c == StatusCode::INPUT_SUCCESS => response.imported += 1,
            StatusCode::INPUT_DUPLICATE => response.already_present += 1,
            _ => response.failed += 1,
        }
        response.rows.push(ImportRowOutcome { line, input_id: input.id, status });
    }
    response.status = if response.failed == 0 {
        Status::ok()
    } else if response.imported + response.already_present > 0 {
        Status::new(StatusCode::MIXED_STATUS, format!("{} of {} rows failed", response.failed, response.rows.len()))
    } else {
        Status::new(StatusCode::FAILURE, "no row could be imported")
    };
    Ok(Reply(response).into_response())
}
