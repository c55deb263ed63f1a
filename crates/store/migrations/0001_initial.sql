-- deeptune metadata, version 1. Migrations are append-only: never edit a released one.

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,   -- sha256 of the secret; the secret itself is never stored
    scopes      TEXT NOT NULL,          -- comma-separated
    app_id      TEXT,                   -- NULL: every app of the user
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE apps (
    pk          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata    TEXT,
    created_at  TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    UNIQUE (user_id, id)
);

CREATE TABLE concepts (
    app_pk     INTEGER NOT NULL REFERENCES apps (pk) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (app_pk, id)
);

CREATE TABLE inputs (
    app_pk      INTEGER NOT NULL REFERENCES apps (pk) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    blob_key    TEXT NOT NULL,
    thumb_key   TEXT NOT NULL,
    format      TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    source_url  TEXT,
    metadata    TEXT,
    created_at  TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (app_pk, id)
);
CREATE INDEX inputs_by_blob ON inputs (blob_key);
CREATE INDEX inputs_by_thumb ON inputs (thumb_key);

CREATE TABLE annotations (
    app_pk      INTEGER NOT NULL,
    id          TEXT NOT NULL,
    input_id    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (app_pk, id),
    FOREIGN KEY (app_pk, input_id) REFERENCES inputs (app_pk, id) ON DELETE CASCADE
);
CREATE INDEX annotations_by_input ON annotations (app_pk, input_id);

-- One label per (input, concept) across all annotations, so an input is never both a positive
-- and a negative of the same concept.
CREATE TABLE labels (
    app_pk        INTEGER NOT NULL,
    annotation_id TEXT NOT NULL,
    input_id      TEXT NOT NULL,
    concept_id    TEXT NOT NULL,
    value         REAL NOT NULL,
    position      INTEGER NOT NULL,
    PRIMARY KEY (app_pk, input_id, concept_id),
    FOREIGN KEY (app_pk, annotation_id) REFERENCES annotations (app_pk, id) ON DELETE CASCADE,
    FOREIGN KEY (app_pk, concept_id) REFERENCES concepts (app_pk, id) ON DELETE CASCADE
);
CREATE INDEX labels_by_concept ON labels (app_pk, concept_id, value);
CREATE INDEX labels_by_annotation ON labels (app_pk, annotation_id);

CREATE TABLE datasets (
    app_pk      INTEGER NOT NULL REFERENCES apps (pk) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata    TEXT,
    created_at  TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (app_pk, id)
);

CREATE TABLE dataset_inputs (
    app_pk     INTEGER NOT NULL,
    dataset_id TEXT NOT NULL,
    input_id   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (app_pk, dataset_id, input_id),
    FOREIGN KEY (app_pk, dataset_id) REFERENCES datasets (app_pk, id) ON DELETE CASCADE,
    FOREIGN KEY (app_pk, input_id) REFERENCES inputs (app_pk, id) ON DELETE CASCADE
);

-- A version is a frozen copy: it keeps each input's blob key and labels, so later edits or
-- deletions of inputs never change it.
CREATE TABLE dataset_versions (
    pk             INTEGER PRIMARY KEY,
    app_pk         INTEGER NOT NULL,
    dataset_id     TEXT NOT NULL,
    id             TEXT NOT NULL,
    description    TEXT NOT NULL,
    train_fraction REAL NOT NULL,
    seed           INTEGER NOT NULL,
    metrics        TEXT NOT NULL,
    metadata       TEXT,
    created_at     TEXT NOT NULL,
    UNIQUE (app_pk, dataset_id, id),
    FOREIGN KEY (app_pk, dataset_id) REFERENCES datasets (app_pk, id) ON DELETE CASCADE
);

CREATE TABLE dataset_version_inputs (
    version_pk INTEGER NOT NULL REFERENCES dataset_versions (pk) ON DELETE CASCADE,
    input_id   TEXT NOT NULL,
    split      TEXT NOT NULL CHECK (split IN ('train', 'validation')),
    blob_key   TEXT NOT NULL,
    labels     TEXT NOT NULL,   -- JSON [{"id": concept, "value": 0|1}]
    PRIMARY KEY (version_pk, input_id)
);
CREATE INDEX dataset_version_inputs_by_blob ON dataset_version_inputs (blob_key);
