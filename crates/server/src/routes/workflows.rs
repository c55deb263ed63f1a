//! Workflows: ordered graphs of model nodes (a classifier run on the input image) and operator
//! nodes (a concept filter on an earlier node's output); a node with inputs runs only where they
//! all passed. Running one returns every node's output for every input.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use deeptune_core::api::{
    BaseResponse, Concept, Data, ModelVersion, MultiWorkflowResponse, Output, OutputModel, OutputModelVersion,
    Pagination, PostWorkflowResultsRequest, PostWorkflowResultsResponse, PostWorkflowsRequest, SingleWorkflowResponse,
    Workflow, WorkflowNode, WorkflowResult,
};
use deeptune_core::ids::{generate_id, validate_id};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::AppRecord;
use serde::Deserialize;

use super::outputs::{busy, echo_input, load_version, newest_trained, now, read_inputs, run_model};
use super::{AppPath, app_for, batch_status, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpError, HttpResult, Json, PathParams, QueryParams, Reply};
use crate::predict::PredictError;
use crate::state::AppState;

const WORKFLOWS: &str = "/v2/users/{user_id}/apps/{app_id}/workflows";
const WORKFLOW: &str = "/v2/users/{user_id}/apps/{app_id}/workflows/{workflow_id}";
const RESULTS: &str = "/v2/users/{user_id}/apps/{app_id}/workflows/{workflow_id}/results";

/// Clarifai's limits.
const MAX_NODES: usize = 20;
const MAX_INPUTS: usize = 32;
const CONCEPT_FILTER: &str = "concept_filter";
const DEFAULT_THRESHOLD: f32 = 0.5;

#[derive(Deserialize)]
pub struct WorkflowPath {
    user_id: String,
    app_id: String,
    workflow_id: String,
}

impl WorkflowPath {
    fn app(&self) -> AppPath {
        AppPath { user_id: self.user_id.clone(), app_id: self.app_id.clone() }
    }
}

fn invalid(code: StatusCode, details: String) -> ApiError {
    ApiError::new(code, details)
}

/// Checks a workflow's graph and that its models (and pinned versions) exist.
async fn validate(state: &AppState, app: &AppRecord, workflow: &Workflow) -> Result<(), ApiError> {
    let bad = |details: String| invalid(StatusCode::WORKFLOW_INVALID_ARGUMENT, details);
    let graph = |details: String| invalid(StatusCode::WORKFLOW_INVALID_GRAPH, details);
    validate_id(&workflow.id).map_err(|e| bad(format!("workflow id: {e}")))?;
    if workflow.nodes.is_empty() || workflow.nodes.len() > MAX_NODES {
        return Err(bad(format!("give 1 to {MAX_NODES} nodes, not {}", workflow.nodes.len())));
    }
    let mut earlier: Vec<&WorkflowNode> = Vec::new();
    for (i, node) in workflow.nodes.iter().enumerate() {
        let field = format!("nodes[{i}]");
        validate_id(&node.id).map_err(|e| bad(format!("{field}.id: {e}")))?;
        if earlier.iter().any(|n| n.id == node.id) {
            return Err(bad(format!("{field}.id: {:?} is used twice", node.id)));
        }
        for input in &node.node_inputs {
            if !earlier.iter().any(|n| n.id == input.node_id) {
                return Err(graph(format!(
                    "{field} ({}): input {:?} is not an earlier node (nodes run in order, so there are no cycles)",
                    node.id, input.node_id
                )));
            }
        }
        match (&node.model, &node.operator) {
            (Some(model), None) => {
                state.store.get_model(app, &model.id).await.map_err(|_| {
                    bad(format!("{field}.model.id: model {:?} does not exist in app {}", model.id, app.app.id))
                })?;
                if let Some(version) = &model.model_version {
                    state.store.get_model_version(app, &model.id, &version.id).await.map_err(|_| {
                        bad(format!(
                            "{field}.model.model_version.id: model {:?} has no version {:?}",
                            model.id, version.id
                        ))
                    })?;
                }
            }
            (None, Some(operator)) => {
                if operator.kind != CONCEPT_FILTER {
                    return Err(bad(format!(
                        "{field}.operator.type {:?}: the operator is {CONCEPT_FILTER:?}",
                        operator.kind
                    )));
                }
                if node.node_inputs.len() != 1 {
                    return Err(graph(format!("{field} ({}): a concept_filter takes exactly one input node", node.id)));
                }
                if operator.concepts.is_empty() {
                    return Err(bad(format!("{field}.operator.concepts: name the concepts to filter on")));
                }
                for (j, c) in operator.concepts.iter().enumerate() {
                    if c.value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                        return Err(bad(format!("{field}.operator.concepts[{j}].value: a threshold is 0–1")));
                    }
                }
            }
            _ => return Err(bad(format!("{field} ({}): give either a model or an operator", node.id))),
        }
        earlier.push(node);
    }
    Ok(())
}

#[utoipa::path(post, path = WORKFLOWS, tag = "workflows",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PostWorkflowsRequest,
    responses((status = 200, body = SingleWorkflowResponse), (status = 400, description = "Invalid nodes or graph, each named", body = BaseResponse), (status = 409, body = BaseResponse)))]
pub async fn post_workflows(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PostWorkflowsRequest>,
) -> HttpResult<Reply<SingleWorkflowResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    let [workflow] = request.workflows.as_slice() else {
        return Err(invalid(StatusCode::WORKFLOW_INVALID_ARGUMENT, "give exactly one workflow".into()).into());
    };
    validate(&state, &app, workflow).await?;
    let workflow = state.store.create_workflow(&app, workflow).await?;
    Ok(Reply(SingleWorkflowResponse { status: Status::ok(), workflow }))
}

#[utoipa::path(get, path = WORKFLOWS, tag = "workflows",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination),
    responses((status = 200, body = MultiWorkflowResponse)))]
pub async fn list_workflows(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiWorkflowResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let workflows = state.store.list_workflows(&app, limit, offset).await?;
    Ok(Reply(MultiWorkflowResponse { status: Status::ok(), workflows }))
}

#[utoipa::path(get, path = WORKFLOW, tag = "workflows",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("workflow_id" = String, Path)),
    responses((status = 200, body = SingleWorkflowResponse), (status = 404, body = BaseResponse)))]
pub async fn get_workflow(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<WorkflowPath>,
) -> HttpResult<Reply<SingleWorkflowResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let workflow = state.store.get_workflow(&app, &path.workflow_id).await?;
    Ok(Reply(SingleWorkflowResponse { status: Status::ok(), workflow }))
}

#[utoipa::path(delete, path = WORKFLOW, tag = "workflows",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("workflow_id" = String, Path)),
    responses((status = 200, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_workflow(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<WorkflowPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    state.store.delete_workflow(&app, &path.workflow_id).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

/// What a node did for one input.
#[derive(Clone)]
enum NodeOutcome {
    /// A model ran, or a filter passed: these concepts (best first).
    Passed(Vec<(String, f32)>),
    /// A filter whose concepts all stayed under their thresholds.
    Blocked,
    /// Not run: an input node did not pass.
    Skipped(String),
    Failed(ApiError),
}

impl NodeOutcome {
    fn passed(&self) -> bool {
        matches!(self, NodeOutcome::Passed(_))
    }
}

/// The version a model node runs: its pinned one, else the newest trained.
async fn node_version(state: &AppState, app: &AppRecord, node: &WorkflowNode) -> Result<ModelVersion, ApiError> {
    let model = node.model.as_ref().expect("a model node");
    let version = match &model.model_version {
        Some(v) => state.store.get_model_version(app, &model.id, &v.id).await?,
        None => newest_trained(state, app, &model.id).await?,
    };
    if version.status.as_ref().map(|s| s.code) != Some(StatusCode::MODEL_TRAINED) {
        return Err(ApiError::new(
            StatusCode::MODEL_INVALID_ARGUMENT,
            format!("node {}: model version {} is not trained", node.id, version.id),
        ));
    }
    Ok(version)
}

#[utoipa::path(post, path = RESULTS, tag = "workflows",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("workflow_id" = String, Path)),
    request_body = PostWorkflowResultsRequest,
    responses(
        (status = 200, description = "Every node's output for every input, in node order; a node that did not run says why (43001)", body = PostWorkflowResultsResponse),
        (status = 207, description = "Some inputs failed; each result has its own status", body = PostWorkflowResultsResponse),
        (status = 400, body = BaseResponse), (status = 404, body = BaseResponse),
        (status = 503, description = "A model's queue is full: retry after Retry-After seconds", body = BaseResponse),
    ))]
pub async fn post_workflow_results(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<WorkflowPath>,
    Json(request): Json<PostWorkflowResultsRequest>,
) -> Result<Response, HttpError> {
    let app = app_for(&state, &caller, Scope::Predict, &path.app()).await?;
    check_user_app_id(&request.user_app_id, &path.app())?;
    let workflow = state.store.get_workflow(&app, &path.workflow_id).await?;
    if request.inputs.is_empty() || request.inputs.len() > MAX_INPUTS {
        return Err(ApiError::new(
            StatusCode::INPUT_INVALID_ARGUMENT,
            format!("give 1 to {MAX_INPUTS} inputs, not {}", request.inputs.len()),
        )
        .into());
    }
    let read = read_inputs(&state, &app, &request.inputs).await;
    // outcomes[node][input]
    let mut outcomes: Vec<Vec<NodeOutcome>> = Vec::new();
    let mut made_by: Vec<Option<OutputModel>> = Vec::new();
    for node in &workflow.nodes {
        let inputs_of = |i: usize| -> Option<String> {
            node.node_inputs.iter().find_map(|input| {
                let at = workflow.nodes.iter().position(|n| n.id == input.node_id).expect("validated");
                (!outcomes[at][i].passed()).then(|| input.node_id.clone())
            })
        };
        let mut row: Vec<NodeOutcome> = Vec::with_capacity(read.len());
        if node.model.is_some() {
            let version = node_version(&state, &app, node).await?;
            let model = load_version(&state, &version).await?;
            let gated: Vec<Result<bytes::Bytes, ApiError>> = (0..read.len())
                .map(|i| match (&read[i], inputs_of(i)) {
                    (Ok(bytes), None) => Ok(bytes.clone()),
                    (Err(e), _) => Err(e.clone()),
                    (_, Some(blocked_by)) => Err(ApiError::new(StatusCode::WORKFLOW_NO_MATCHING_INPUT, blocked_by)),
                })
                .collect();
            let mut predictions = match run_model(&model, &gated).await {
                Ok(p) => p.into_iter(),
                Err(PredictError::Busy) => return Ok(busy()),
                Err(e) => return Err(ApiError::internal(e.to_string()).into()),
            };
            for g in gated {
                row.push(match g {
                    Ok(_) => match predictions.next() {
                        Some(Ok(p)) => NodeOutcome::Passed(p),
                        Some(Err(e)) => NodeOutcome::Failed(e),
                        None => NodeOutcome::Failed(ApiError::internal("no prediction came back")),
                    },
                    Err(e) if e.code == StatusCode::WORKFLOW_NO_MATCHING_INPUT => NodeOutcome::Skipped(e.details),
                    Err(e) => NodeOutcome::Failed(e),
                });
            }
            made_by.push(Some(OutputModel {
                id: node.model.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                app_id: app.app.id.clone(),
                model_version: OutputModelVersion { id: version.id.clone() },
            }));
        } else {
            let operator = node.operator.as_ref().expect("an operator node");
            let source = workflow.nodes.iter().position(|n| n.id == node.node_inputs[0].node_id).expect("validated");
            // Thresholds: the node's own, else the source model version's stored ones, else 0.5.
            let stored = match &workflow.nodes[source].model {
                Some(_) => node_version(&state, &app, &workflow.nodes[source])
                    .await
                    .ok()
                    .map(|v| super::evaluations::effective_thresholds(&v, &BTreeMap::new()))
                    .unwrap_or_default(),
                None => BTreeMap::new(),
            };
            for upstream in &outcomes[source] {
                row.push(match upstream {
                    NodeOutcome::Passed(concepts) => {
                        let kept: Vec<(String, f32)> = concepts
                            .iter()
                            .filter(|(id, value)| {
                                operator.concepts.iter().any(|c: &Concept| {
                                    let threshold =
                                        c.value.or_else(|| stored.get(&c.id).copied()).unwrap_or(DEFAULT_THRESHOLD);
                                    &c.id == id && *value >= threshold
                                })
                            })
                            .cloned()
                            .collect();
                        if kept.is_empty() { NodeOutcome::Blocked } else { NodeOutcome::Passed(kept) }
                    }
                    NodeOutcome::Failed(e) => NodeOutcome::Failed(e.clone()),
                    _ => NodeOutcome::Skipped(workflow.nodes[source].id.clone()),
                });
            }
            made_by.push(None);
        }
        outcomes.push(row);
    }

    let created_at = now();
    let results: Vec<WorkflowResult> = request
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let outputs = workflow
                .nodes
                .iter()
                .enumerate()
                .map(|(n, node)| {
                    let (status, concepts) = match &outcomes[n][i] {
                        NodeOutcome::Passed(concepts) => (Status::ok(), concepts.clone()),
                        NodeOutcome::Blocked => (
                            Status::new(StatusCode::WORKFLOW_NO_MATCHING_INPUT, "no concept reached its threshold"),
                            Vec::new(),
                        ),
                        NodeOutcome::Skipped(by) => (
                            Status::new(
                                StatusCode::WORKFLOW_NO_MATCHING_INPUT,
                                format!("not run: node {by} did not pass"),
                            ),
                            Vec::new(),
                        ),
                        NodeOutcome::Failed(e) => (e.status(), Vec::new()),
                    };
                    Output {
                        id: generate_id(),
                        status,
                        created_at: Some(created_at.clone()),
                        model: made_by[n].clone(),
                        node_id: node.id.clone(),
                        input: echo_input(input),
                        data: Data {
                            concepts: concepts
                                .into_iter()
                                .map(|(id, value)| Concept {
                                    name: id.clone(),
                                    id,
                                    value: Some(value),
                                    app_id: app.app.id.clone(),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            let status = match &read[i] {
                Ok(_) => Status::ok(),
                Err(e) => e.status(),
            };
            WorkflowResult { id: generate_id(), status, input: echo_input(input), outputs }
        })
        .collect();
    let statuses: Vec<&Status> = results.iter().map(|r| &r.status).collect();
    let status = batch_status(&statuses);
    Ok(Reply(PostWorkflowResultsResponse { status, workflow, results }).into_response())
}
