-- Models and their versions (training runs).

CREATE TABLE models (
    app_pk        INTEGER NOT NULL REFERENCES apps (pk) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    name          TEXT NOT NULL,
    model_type_id TEXT NOT NULL,
    description   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (app_pk, id)
);

CREATE TABLE model_versions (
    seq                INTEGER PRIMARY KEY,
    app_pk             INTEGER NOT NULL,
    model_id           TEXT NOT NULL,
    id                 TEXT NOT NULL,
    status_code        INTEGER NOT NULL,
    status_details     TEXT NOT NULL DEFAULT '',
    template           TEXT NOT NULL,
    params             TEXT NOT NULL,      -- resolved hyperparameters, JSON
    dataset_id         TEXT NOT NULL,
    dataset_version_id TEXT NOT NULL,
    concepts           TEXT NOT NULL,      -- JSON list of concept ids, in output order
    mutually_exclusive INTEGER NOT NULL,
    job_id             TEXT NOT NULL,
    description        TEXT NOT NULL DEFAULT '',
    progress           TEXT,               -- JSON: percent_completed, time_remaining, epoch, step, loss
    metrics            TEXT,               -- JSON: evaluation on the validation split
    created_at         TEXT NOT NULL,
    UNIQUE (app_pk, model_id, id),
    FOREIGN KEY (app_pk, model_id) REFERENCES models (app_pk, id) ON DELETE CASCADE
);
