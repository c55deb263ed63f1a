-- Evaluations of trained model versions on a dataset version (the version's own held-out split,
-- or any dataset version, also of another app), computed by a worker job.

CREATE TABLE evaluations (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,      -- server-assigned
    app_pk             INTEGER NOT NULL,
    model_id           TEXT NOT NULL,
    version_id         TEXT NOT NULL,
    status_code        INTEGER NOT NULL,
    status_details     TEXT NOT NULL DEFAULT '',
    dataset_user_id    TEXT NOT NULL,
    dataset_app_id     TEXT NOT NULL,
    dataset_id         TEXT NOT NULL,
    dataset_version_id TEXT NOT NULL,
    split              TEXT NOT NULL CHECK (split IN ('validation', 'train', 'all')),
    job_id             TEXT NOT NULL,
    metrics            TEXT,                      -- JSON: the evaluation (summary, per concept, confusion matrix, per input)
    created_at         TEXT NOT NULL,
    completed_at       TEXT,
    FOREIGN KEY (app_pk, model_id, version_id) REFERENCES model_versions (app_pk, model_id, id) ON DELETE CASCADE
);
CREATE INDEX evaluations_by_version ON evaluations (app_pk, model_id, version_id, seq);

-- Per-concept decision thresholds chosen for a version (from an evaluation's PR curves).
ALTER TABLE model_versions ADD COLUMN thresholds TEXT;  -- JSON {strategy, evaluation_id, concepts: {id: threshold}}
