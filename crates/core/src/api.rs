//! The JSON shapes of the v2 API, after Clarifai's field names and nesting. Request bodies ignore
//! fields they don't know, so Clarifai's documented bodies (with `user_app_id`, `allow_duplicate_url`
//! and friends) are accepted unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::scope::Scope;
use crate::status::Status;

/// Clarifai clients may repeat the path's ids in the body; they are accepted and checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UserAppId {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub app_id: String,
}

/// `page` (from 1) and `per_page` (default 128, at most 1000), as in Clarifai's list endpoints.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
pub struct Pagination {
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

impl Pagination {
    pub const DEFAULT_PER_PAGE: u32 = 128;
    pub const MAX_PER_PAGE: u32 = 1000;

    /// (limit, offset) for the store, with defaults and bounds applied.
    pub fn limit_offset(&self) -> (u32, u64) {
        let per_page = self.per_page.unwrap_or(Self::DEFAULT_PER_PAGE).clamp(1, Self::MAX_PER_PAGE);
        let page = self.page.unwrap_or(1).max(1);
        (per_page, u64::from(page - 1) * u64::from(per_page))
    }
}

/// A response that carries nothing but its status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BaseResponse {
    pub status: Status,
}

// ---------------------------------------------------------------------------------------------
// Apps

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct App {
    /// Chosen by the client, or generated when empty.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostAppsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub apps: Vec<App>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiAppResponse {
    pub status: Status,
    pub apps: Vec<App>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleAppResponse {
    pub status: Status,
    pub app: App,
}

// ---------------------------------------------------------------------------------------------
// Concepts

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Concept {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// In labels: 1 is a positive label, 0 a negative one. Absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    /// In predictions, with thresholds: the concept's threshold, and whether `value` reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_threshold: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostConceptsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub concepts: Vec<Concept>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiConceptResponse {
    pub status: Status,
    pub concepts: Vec<Concept>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleConceptResponse {
    pub status: Status,
    pub concept: Concept,
}

// ---------------------------------------------------------------------------------------------
// Inputs

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Input {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub data: Data,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    /// Per-input outcome in batch responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Data {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concepts: Vec<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Where to download the image from (requests), or where it came from (responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image file's bytes, base64-encoded (requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Accepted for Clarifai compatibility; images are always stored once by content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_duplicate_url: Option<bool>,
    /// Where this server serves the stored image and its thumbnail (responses only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted: Option<HostedImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_info: Option<ImageInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HostedImage {
    pub url: String,
    pub thumbnail_url: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    /// jpeg, png, tiff, bmp, webp or gif — recognised from the content.
    pub format: String,
    pub file_size: u64,
    /// sha256 of the stored bytes; identical files are stored once.
    pub content_sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostInputsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub inputs: Vec<Input>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiInputResponse {
    pub status: Status,
    pub inputs: Vec<Input>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleInputResponse {
    pub status: Status,
    pub input: Input,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeleteInputsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub ids: Vec<String>,
}

/// Filters of the input list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct InputFilter {
    /// Only inputs with a label (positive or negative) for this concept.
    pub concept_id: Option<String>,
    /// With `concept_id`: only positive (1) or only negative (0) labels.
    pub concept_value: Option<f32>,
    /// Only inputs without any label.
    pub unlabeled: Option<bool>,
}

/// The outcome of one row of a CSV/TSV import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportRowOutcome {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input_id: String,
    pub status: Status,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportResponse {
    pub status: Status,
    pub rows: Vec<ImportRowOutcome>,
    pub imported: u64,
    pub already_present: u64,
    pub failed: u64,
}

// ---------------------------------------------------------------------------------------------
// Annotations

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Annotation {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub input_id: String,
    /// `data.concepts`: the labels, value 1 (positive) or 0 (negative).
    #[serde(default)]
    pub data: Data,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostAnnotationsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PatchAnnotationsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub annotations: Vec<Annotation>,
    /// `merge` (add or change the listed labels; the default), `overwrite` (replace all labels of
    /// the annotation) or `remove` (drop the listed labels).
    #[serde(default)]
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiAnnotationResponse {
    pub status: Status,
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleAnnotationResponse {
    pub status: Status,
    pub annotation: Annotation,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeleteAnnotationsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    #[serde(default)]
    pub ids: Vec<String>,
    /// Delete every annotation of these inputs (when `ids` is empty).
    #[serde(default)]
    pub input_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct AnnotationFilter {
    /// Only annotations of this input.
    pub input_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Datasets

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Dataset {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    /// Inputs currently in the dataset (responses only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_count: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostDatasetsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub datasets: Vec<Dataset>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiDatasetResponse {
    pub status: Status,
    pub datasets: Vec<Dataset>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleDatasetResponse {
    pub status: Status,
    pub dataset: Dataset,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DatasetInput {
    pub input: Input,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostDatasetInputsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub dataset_inputs: Vec<DatasetInput>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeleteDatasetInputsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub input_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiDatasetInputResponse {
    pub status: Status,
    pub dataset_inputs: Vec<DatasetInput>,
}

/// How a version divides its inputs between training and validation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SplitConfig {
    /// Share of each concept's inputs that go to training; the rest validate. Default 0.8.
    #[serde(default = "SplitConfig::default_train_fraction")]
    pub train_fraction: f64,
    /// Seed of the split; the same seed and inputs give the same split. Default 42.
    #[serde(default = "SplitConfig::default_seed")]
    pub seed: u64,
}

impl SplitConfig {
    fn default_train_fraction() -> f64 {
        0.8
    }
    fn default_seed() -> u64 {
        42
    }
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig { train_fraction: 0.8, seed: 42 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DatasetVersion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub dataset_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<DatasetVersionMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DatasetVersionMetrics {
    pub inputs_count: u64,
    pub unlabeled_inputs_count: u64,
    pub train_inputs_count: u64,
    pub validation_inputs_count: u64,
    pub concepts: Vec<ConceptCounts>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ConceptCounts {
    pub id: String,
    pub positive_count: u64,
    pub negative_count: u64,
    pub train_positive_count: u64,
    pub validation_positive_count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostDatasetVersionsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub dataset_versions: Vec<DatasetVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiDatasetVersionResponse {
    pub status: Status,
    pub dataset_versions: Vec<DatasetVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleDatasetVersionResponse {
    pub status: Status,
    pub dataset_version: DatasetVersion,
}

/// One input as a dataset version froze it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DatasetVersionInput {
    pub input_id: String,
    /// `train` or `validation`.
    pub split: String,
    pub concepts: Vec<Concept>,
    pub content_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiDatasetVersionInputResponse {
    pub status: Status,
    pub dataset_version_inputs: Vec<DatasetVersionInput>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct VersionInputFilter {
    /// `train` or `validation`.
    pub split: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Personal access tokens

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Key {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// Restricts the token to one app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    /// The secret, shown once in the response that creates the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostKeysRequest {
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiKeyResponse {
    pub status: Status,
    pub keys: Vec<Key>,
}

// ---------------------------------------------------------------------------------------------
// Models, model versions and training

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Model {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `visual-classifier` (more types later).
    #[serde(default)]
    pub model_type_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The newest version (responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<Box<ModelVersion>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostModelsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    /// Clarifai's PostModels takes one `model`; a list under `models` is accepted too.
    #[serde(default)]
    pub model: Option<Model>,
    #[serde(default)]
    pub models: Vec<Model>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleModelResponse {
    pub status: Status,
    pub model: Model,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiModelResponse {
    pub status: Status,
    pub models: Vec<Model>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TrainInfo {
    /// `template`, `dataset_id`, `dataset_version_id`, and the template's hyperparameters.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, Value>,
    /// Continue training from this trained version's weights (Clarifai's field) instead of the
    /// template's pretrained weights: on new data, or for more epochs with a learning-rate
    /// schedule planned anew over `num_epochs`. With the same concepts the classification head
    /// carries over too; with others it starts fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from_model: Option<ResumeFromModel>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResumeFromModel {
    /// The model (default: the one being trained).
    #[serde(default)]
    pub id: String,
    pub model_version: OutputModelVersion,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct OutputConfig {
    #[serde(default)]
    pub concepts_mutually_exclusive: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct OutputInfo {
    /// `data.concepts`: what the model learns to recognise.
    #[serde(default)]
    pub data: Data,
    #[serde(default)]
    pub output_config: OutputConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default)]
    pub train_info: TrainInfo,
    #[serde(default)]
    pub output_info: OutputInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// While training: percent_completed, time_remaining (seconds), epoch, step, loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    /// Once trained: the evaluation on the version's validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    /// Inputs of the dataset version that pre-flight could not read or decode; they were
    /// skipped (or, beyond invalid_data_tolerance_percent, stopped the run with 21119).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_inputs: Vec<InvalidInput>,
    /// The time estimate made when training started, and the time it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_time: Option<TrainingTime>,
    /// Why a failed run (status 21106) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<TrainingFailure>,
    /// Per-concept decision thresholds chosen for this version; predictions report which
    /// concepts pass them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
}

/// Per-concept thresholds and how they were chosen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Thresholds {
    /// `best_f1`, `precision` (the lowest threshold reaching `target` precision), `recall` (the
    /// highest threshold reaching `target` recall) or `manual`.
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f32>,
    /// The evaluation whose precision-recall curves they come from (empty: the training run's
    /// held-out split).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub evaluation_id: String,
    /// Concept id → threshold.
    pub concepts: std::collections::BTreeMap<String, f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrainingFailure {
    /// set-up, pre-flight, pretrained weights, training, evaluation or saving the model.
    pub stage: String,
    pub reason: String,
    /// What to try.
    pub hint: String,
    /// The end of the training log, as text.
    #[serde(default)]
    pub last_log_lines: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InvalidInput {
    pub input_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrainingTime {
    /// Seconds, from this machine's measured throughput, made when a worker started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
    /// Seconds from the first start to the final status (resumes included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// One line of a training log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// Increasing; pass the last one seen as `after` to read on.
    pub seq: i64,
    pub time: String,
    /// info, warn or error.
    pub level: String,
    /// status, preflight, invalid_input, start, step, epoch, evaluation, message, done.
    pub event: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiLogEntryResponse {
    pub status: Status,
    pub log_entries: Vec<LogEntry>,
    /// Whether the version has reached a final status: no more lines will come.
    pub done: bool,
    /// The `after` to pass to read on.
    pub next_after: i64,
}

/// The dataset version an evaluation ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvalDataset {
    /// The dataset's app (default: the model's).
    #[serde(default)]
    pub app_id: String,
    #[serde(default)]
    pub user_id: String,
    pub id: String,
    pub version: EvalDatasetVersion,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvalDatasetVersion {
    pub id: String,
}

/// An evaluation of a model version (Clarifai's EvalMetrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EvalMetrics {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_version_id: String,
    /// Default: the dataset version the model version trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth_dataset: Option<EvalDataset>,
    /// Which inputs of the dataset version: `validation`, `train` or `all`. Default: `validation`
    /// for the training dataset version (its held-out split), `all` for any other.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub split: String,
    /// Once evaluated: `summary` (top-1/top-5 accuracy, macro ROC AUC, F1, precision, recall),
    /// `per_concept` (binary metrics, ROC and PR curves), `confusion_matrix` (counts and mean
    /// probabilities), `per_input` (predictions for drill-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostEvaluationsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    /// One evaluation to run (an empty list or `{}` evaluates on the held-out split).
    #[serde(default)]
    pub eval_metrics: Vec<EvalMetrics>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleEvalMetricsResponse {
    pub status: Status,
    pub eval_metrics: EvalMetrics,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiEvalMetricsResponse {
    pub status: Status,
    pub eval_metrics: Vec<EvalMetrics>,
}

/// How to choose a version's per-concept thresholds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostThresholdsRequest {
    /// `best_f1` (default), `precision`, `recall` or `manual`.
    #[serde(default)]
    pub strategy: String,
    /// The precision or recall to reach (0–1), for those strategies.
    #[serde(default)]
    pub target: Option<f32>,
    /// Whose precision-recall curves to use (default: the training run's held-out split).
    #[serde(default)]
    pub evaluation_id: String,
    /// `manual`: concept id → threshold; other strategies: overrides for these concepts.
    #[serde(default)]
    pub concepts: std::collections::BTreeMap<String, f32>,
}

/// One ranked version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntry {
    pub rank: usize,
    pub model_id: String,
    pub model_version_id: String,
    /// Empty for the training run's own evaluation of its held-out split.
    pub evaluation_id: String,
    /// The ranking metric's value (absent when the evaluation lacks it: ranked last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// The evaluation's whole summary.
    #[schema(value_type = Object)]
    pub summary: Value,
    /// What made the version: template, params, training dataset version, seed, data hash,
    /// engine version.
    #[schema(value_type = Object)]
    pub lineage: Value,
}

/// Versions ranked on one evaluation dataset version and split.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Leaderboard {
    pub ground_truth_dataset: EvalDataset,
    pub split: String,
    pub metric: String,
    pub entries: Vec<LeaderboardEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiLeaderboardResponse {
    pub status: Status,
    /// One board per evaluation set (only comparable numbers share a board), the largest first.
    pub leaderboards: Vec<Leaderboard>,
}

/// A graph of models and operators run on each input (Clarifai's Workflow).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// In order: a node's inputs are earlier nodes.
    #[serde(default)]
    pub nodes: Vec<WorkflowNode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// A model (run on the workflow's input image) or an operator (run on an earlier node's output).
/// A node with `node_inputs` runs only for the inputs where all of them passed: a model node
/// passes when it ran, a `concept_filter` when one of its concepts reached its threshold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct WorkflowNode {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<WorkflowModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<WorkflowOperator>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_inputs: Vec<NodeInput>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct WorkflowModel {
    pub id: String,
    /// A pinned version (default: the newest trained one at run time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<OutputModelVersion>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct WorkflowOperator {
    /// `concept_filter`: passes the concepts of its input node whose value reaches their
    /// threshold (`value`, else the version's stored threshold, else 0.5).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub concepts: Vec<Concept>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NodeInput {
    pub node_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostWorkflowsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub workflows: Vec<Workflow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleWorkflowResponse {
    pub status: Status,
    pub workflow: Workflow,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiWorkflowResponse {
    pub status: Status,
    pub workflows: Vec<Workflow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostWorkflowResultsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    /// Up to 32, each by url, base64 or the id of a stored input.
    pub inputs: Vec<Input>,
}

/// Every node's output for one input.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowResult {
    pub id: String,
    pub status: Status,
    pub input: Input,
    pub outputs: Vec<Output>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PostWorkflowResultsResponse {
    pub status: Status,
    pub workflow: Workflow,
    pub results: Vec<WorkflowResult>,
}

/// A version's export: the file's size and sha256, the manifest to run it (input, preprocessing,
/// outputs, concepts), the parity check against the engine, its own `status` (10020 when the
/// exported model disagrees) and `download_url`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleModelExportResponse {
    pub status: Status,
    #[schema(value_type = Object)]
    pub export: Value,
}

/// Clarifai's PostModelOutputs: predict concepts for up to 128 images.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostModelOutputsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    /// Each by `data.image.url`, `data.image.base64`, or the `id` of an input of the app.
    pub inputs: Vec<Input>,
    /// Optional: `model.output_info.output_config` narrows what is returned.
    #[serde(default)]
    pub model: Option<PredictModel>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PredictModel {
    #[serde(default)]
    pub output_info: PredictOutputInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PredictOutputInfo {
    #[serde(default)]
    pub output_config: PredictConfig,
}

/// Clarifai's output_config fields for predictions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PredictConfig {
    /// Only concepts with at least this probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f32>,
    /// At most this many concepts per output, highest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concepts: Option<u32>,
    /// Only these concepts (by id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select_concepts: Vec<Concept>,
    /// Concept id → threshold, overriding the version's stored thresholds for this request.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub thresholds: std::collections::BTreeMap<String, f32>,
}

/// The model (and version) that made an output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputModel {
    pub id: String,
    pub app_id: String,
    pub model_version: OutputModelVersion,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputModelVersion {
    pub id: String,
}

/// One input's predictions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Output {
    pub id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<OutputModel>,
    /// In workflow results: the node that made it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    pub input: Input,
    /// `concepts`: every concept with its probability (`value`), highest first.
    pub data: Data,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiOutputResponse {
    pub status: Status,
    pub outputs: Vec<Output>,
}

/// Clarifai's shape: one estimate per requested version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrainingTimeEstimate {
    pub seconds: f64,
    /// How it is made up, and the throughput it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub breakdown: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrainingTimeEstimateResponse {
    pub status: Status,
    pub training_time_estimates: Vec<TrainingTimeEstimate>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PostModelVersionsRequest {
    #[serde(default)]
    pub user_app_id: Option<UserAppId>,
    pub model_versions: Vec<ModelVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleModelVersionResponse {
    pub status: Status,
    pub model_version: ModelVersion,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiModelVersionResponse {
    pub status: Status,
    pub model_versions: Vec<ModelVersion>,
}

/// One model type with its training templates (Clarifai's ListModelTypes, cleaner).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelType {
    pub id: String,
    pub title: String,
    pub description: String,
    pub trainable: bool,
    pub templates: Vec<crate::templates::Template>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MultiModelTypeResponse {
    pub status: Status,
    pub model_types: Vec<ModelType>,
}
